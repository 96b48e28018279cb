"""The two deployed forms of NequIP-framework models (NequIP, Allegro) and how each is fed a batch.

- **Legacy TorchScript** (``nequip-deploy build``, nequip ≤ 0.6): a TorchScript module whose extra files hold
  ``nequip_version``, ``type_names`` and ``r_max``. Its inputs follow nequip 0.5/0.6's ``AtomicData``: positions
  rounded to the model's dtype, an ASE neighbour list of those rounded positions with self-edges in the home cell
  removed, ``atom_types`` of shape (N, 1); several structures are one graph with a ``batch`` index and a (B, 3, 3)
  cell. The neighbour list is ASE's, in ASE's edge order, because a float32 model's energy changes in its last bit
  with the order in which messages are summed: this reproduces nequip's own evaluation bit for bit.
- **AOTInductor package** (``nequip-compile --mode aotinductor``, current nequip): a ``.nequip.pt2`` loaded with
  ``torch._inductor.aoti_load_package``; its metadata names ``r_max``, ``type_names``, per-edge-type cutoffs and the
  input/output fields. ``--target batch`` packages take many structures at once; ``--target ase`` packages take one
  structure per call and are run structure by structure. Data tensors are float64 whatever the model's dtype, as in
  nequip. Neither format needs the ``nequip`` package at run time.

Each class turns a list of systems (with their atom type indices) into :class:`RawOutput` arrays.
"""

from __future__ import annotations

import importlib
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.geometry import complete_cell
from ase.neighborlist import primitive_neighbor_list

from ..graph import build_graph
from ..system import AtomicSystem

TORCHSCRIPT = "TorchScript (nequip-deploy, nequip <= 0.6)"
AOTINDUCTOR = "AOTInductor package (nequip-compile --mode aotinductor)"

#: Field names of nequip's data dictionaries.
POS, EDGE_INDEX, ATOM_TYPES, CELL, EDGE_CELL_SHIFT, BATCH, NUM_ATOMS, PBC = (
    "pos",
    "edge_index",
    "atom_types",
    "cell",
    "edge_cell_shift",
    "batch",
    "num_atoms",
    "pbc",
)
TOTAL_ENERGY, FORCES, STRESS = "total_energy", "forces", "stress"
#: Inputs of ``nequip-compile --target ase`` (one structure per call) and ``--target batch``.
SINGLE_FRAME_INPUTS = (POS, EDGE_INDEX, ATOM_TYPES, CELL, EDGE_CELL_SHIFT)
BATCH_INPUTS = (*SINGLE_FRAME_INPUTS, BATCH, NUM_ATOMS)
#: The zip entry in which nequip records libraries of custom operators that must be imported before loading.
_CUSTOM_OPS_ENTRY = "nequip_custom_ops_libs.txt"
RECOMPILE_HINT = "compile the model with: nequip-compile MODEL out.nequip.pt2 --mode aotinductor --target batch"


class UnsupportedModelFile(ValueError):
    """The file is not a deployed NequIP-framework model in a form this backend runs."""


@dataclass
class RawOutput:
    """A batch's results: energies (B,), forces (N, 3) and, when the model computes it, stress (B, 3, 3)."""

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray | None


def sniff_format(path: Path) -> str:
    """Tell a legacy TorchScript file from an AOTInductor package by its zip entries, without unpickling anything."""
    if not zipfile.is_zipfile(path):
        raise UnsupportedModelFile(f"{path.name} is not a zip archive, so not a TorchScript or AOTInductor file")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any("/aotinductor/" in name for name in names):
        return AOTINDUCTOR
    if any("/code/__torch__" in name for name in names):
        return TORCHSCRIPT
    if any(name.endswith(".data/version") for name in names):
        raise UnsupportedModelFile(f"{path.name} is a nequip-package archive (.nequip.zip); {RECOMPILE_HINT}")
    if any(name.endswith("/data.pkl") for name in names):
        raise UnsupportedModelFile(
            f"{path.name} is a pickled checkpoint (e.g. a training .ckpt), not a deployed model; {RECOMPILE_HINT}"
        )
    raise UnsupportedModelFile(
        f"{path.name} is a zip archive of unknown layout; expected a {TORCHSCRIPT} or an {AOTINDUCTOR}"
    )


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class LegacyTorchScriptModel:
    """A model written by ``nequip-deploy`` (nequip ≤ 0.6), evaluated with that version's input conventions."""

    format = TORCHSCRIPT

    def __init__(self, path: Path, device: torch.device):
        extra = {key: "" for key in ("nequip_version", "type_names", "r_max")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated, still supported
            self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        metadata = {key: value.decode() if isinstance(value, bytes) else value for key, value in extra.items()}
        version = metadata["nequip_version"]
        if not version:
            raise UnsupportedModelFile(f"{path.name} is a TorchScript file without nequip metadata (no nequip_version)")
        if _version(version) >= (0, 7):
            raise UnsupportedModelFile(
                f"{path.name} is a TorchScript file from nequip {version} (nequip-compile --mode torchscript), whose "
                f"inputs differ from nequip-deploy's; {RECOMPILE_HINT}"
            )
        if not metadata["type_names"] or not metadata["r_max"]:
            raise UnsupportedModelFile(f"{path.name} lacks the type_names or r_max metadata of a deployed nequip model")
        self.device = device
        self.nequip_version = version
        self.type_names: list[str] = metadata["type_names"].split()
        self.r_max = float(metadata["r_max"])
        self.per_edge_type_cutoff: np.ndarray | None = None
        floats = [t for t in (*self.module.parameters(), *self.module.buffers()) if t.is_floating_point()]
        self.dtype = floats[0].dtype if floats else torch.float32
        self.module.eval()
        self.has_stress = STRESS in self._run(self._graph([_probe_system(self.r_max)], [np.zeros(2, np.int64)]))

    def evaluate(self, systems: Sequence[AtomicSystem], types: Sequence[np.ndarray]) -> RawOutput:
        out = self._run(self._graph(systems, types))
        stress = out.get(STRESS)
        return RawOutput(
            energy=_numpy(out[TOTAL_ENERGY]).reshape(-1),
            forces=_numpy(out[FORCES]).reshape(-1, 3),
            stress=None if stress is None or stress.numel() == 0 else _numpy(stress).reshape(-1, 3, 3),
        )

    def _graph(self, systems: Sequence[AtomicSystem], types: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """nequip 0.5/0.6 ``AtomicData`` of each system, concatenated into one batch."""
        real = torch.empty((), dtype=self.dtype).numpy().dtype
        positions, edges, shifts, offset = [], [], [], 0
        for system in systems:
            rounded = system.positions.astype(real)  # AtomicData rounds positions before its neighbour list
            i, j, shift = primitive_neighbor_list(
                "ijS",
                system.pbc,
                complete_cell(system.cell),
                rounded,
                cutoff=self.r_max,
                self_interaction=True,
                use_scaled_positions=False,
            )
            keep = ~((i == j) & np.all(shift == 0, axis=1))
            positions.append(rounded)
            edges.append(np.stack([i[keep], j[keep]]).astype(np.int64) + offset)
            shifts.append(shift[keep])
            offset += system.n_atoms
        n_atoms = [system.n_atoms for system in systems]

        def tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=self.device)

        data = {
            POS: tensor(np.concatenate(positions), self.dtype),
            EDGE_INDEX: tensor(np.concatenate(edges, axis=1), torch.int64),
            EDGE_CELL_SHIFT: tensor(np.concatenate(shifts).reshape(-1, 3), self.dtype),
            CELL: tensor(np.stack([system.cell for system in systems]), self.dtype),
            PBC: tensor(np.stack([system.pbc for system in systems]), torch.bool),
            ATOM_TYPES: tensor(np.concatenate(types).reshape(-1, 1), torch.int64),
            BATCH: tensor(np.repeat(np.arange(len(systems)), n_atoms), torch.int64),
        }
        return data

    def _run(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # The module takes forces (and stress) as autograd derivatives inside its forward. TorchScript's profiling
        # optimiser re-specialises the graph for every new batch shape, which costs far more than it saves here.
        with torch.inference_mode(False), torch.enable_grad(), torch.jit.optimized_execution(False):
            return self.module(data)


class AOTInductorModel:
    """A ``.nequip.pt2`` package from ``nequip-compile --mode aotinductor`` (``--target batch`` or ``ase``)."""

    format = AOTINDUCTOR

    def __init__(self, path: Path, device: torch.device):
        _import_custom_ops(path)
        try:
            index = -1 if device.index is None else device.index  # -1: the current device of its kind
            self.runner = torch._inductor.aoti_load_package(str(path), device_index=index)
        except Exception as error:
            raise UnsupportedModelFile(f"torch could not load the AOTInductor package {path.name}: {error}") from error
        metadata = dict(self.runner.get_metadata())
        compiled_for = torch.device(metadata.get("AOTI_DEVICE_KEY", "cpu"))
        if compiled_for.type != device.type:
            raise UnsupportedModelFile(
                f"{path.name} was compiled for {compiled_for.type} and cannot run on {device.type}; compile it with "
                f"--device {device.type} or serve it with --device {compiled_for.type}"
            )
        if "nequip_aoti_inputs" not in metadata or "type_names" not in metadata:
            raise UnsupportedModelFile(
                f"{path.name} does not record its input fields or type names (compiled by nequip < 0.17?); "
                f"{RECOMPILE_HINT}"
            )
        self.inputs = tuple(metadata["nequip_aoti_inputs"].split())
        self.outputs = tuple(metadata["nequip_aoti_outputs"].split())
        if self.inputs not in (BATCH_INPUTS, SINGLE_FRAME_INPUTS):
            raise UnsupportedModelFile(
                f"{path.name} takes the inputs {list(self.inputs)} (a compile target other than 'batch' or 'ase', "
                f"e.g. a LAMMPS pair style); {RECOMPILE_HINT}"
            )
        missing = {TOTAL_ENERGY, FORCES} - set(self.outputs)
        if missing:
            raise UnsupportedModelFile(
                f"{path.name} does not output {sorted(missing)} (outputs: {list(self.outputs)}); {RECOMPILE_HINT}"
            )
        self.device = device
        self.batched = self.inputs == BATCH_INPUTS
        self.type_names = metadata["type_names"].split()
        self.r_max = float(metadata["r_max"])
        self.dtype = getattr(torch, metadata.get("model_dtype", "float64"))
        self.nequip_version = metadata.get("nequip_version", "")
        self.has_stress = STRESS in self.outputs
        self.per_edge_type_cutoff = _cutoff_matrix(metadata.get("per_edge_type_cutoff"), len(self.type_names))

    def evaluate(self, systems: Sequence[AtomicSystem], types: Sequence[np.ndarray]) -> RawOutput:
        if self.batched:
            return self._evaluate_batch(systems, types)
        parts = [self._evaluate_one(system, atom_types) for system, atom_types in zip(systems, types, strict=True)]
        stresses = [part.stress for part in parts]
        return RawOutput(
            energy=np.concatenate([part.energy for part in parts]),
            forces=np.concatenate([part.forces for part in parts]),
            stress=None if stresses[0] is None else np.concatenate(stresses),
        )

    def _evaluate_batch(self, systems: Sequence[AtomicSystem], types: Sequence[np.ndarray]) -> RawOutput:
        data = self._graph(systems, types)
        n_atoms = int(data[POS].shape[0])
        # Packages are compiled for at least 2 structures, 2 atoms and 2 edges (torch.export's 0/1 specialisation);
        # a smaller batch gets a two-atom stand-in structure whose results are dropped.
        padded = len(systems) < 2 or n_atoms < 2 or data[EDGE_INDEX].shape[1] < 2
        if padded:
            data = _concatenate(data, self._graph([self._stand_in()], [np.zeros(2, np.int64)]))
        out = self._run(data)
        stress = out.get(STRESS)
        return RawOutput(
            energy=_numpy(out[TOTAL_ENERGY]).reshape(-1)[: len(systems)],
            forces=_numpy(out[FORCES]).reshape(-1, 3)[:n_atoms],
            stress=None if stress is None else _numpy(stress).reshape(-1, 3, 3)[: len(systems)],
        )

    def _evaluate_one(self, system: AtomicSystem, atom_types: np.ndarray) -> RawOutput:
        data = self._graph([system], [atom_types])
        if system.n_atoms < 2 or data[EDGE_INDEX].shape[1] < 2:
            raise ValueError(
                "this AOTInductor package was compiled with --target ase, which takes only structures with at least "
                f"2 atoms and 2 neighbour pairs within {self.r_max} Å; compile with --target batch to serve others"
            )
        out = self._run(data)
        stress = out.get(STRESS)
        return RawOutput(
            energy=_numpy(out[TOTAL_ENERGY]).reshape(-1),
            forces=_numpy(out[FORCES]).reshape(-1, 3),
            stress=None if stress is None else _numpy(stress).reshape(-1, 3, 3),
        )

    def _graph(self, systems: Sequence[AtomicSystem], types: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """The batch as nequip's data fields; float64 geometry, edges pruned to the per-edge-type cutoffs."""
        graph = build_graph(systems, self.r_max)
        atom_types = np.concatenate(types).astype(np.int64)
        senders, receivers, shifts = graph.senders, graph.receivers, graph.shifts
        if self.per_edge_type_cutoff is not None:
            lengths = np.linalg.norm(graph.edge_vectors(), axis=1)
            keep = lengths <= self.per_edge_type_cutoff[atom_types[senders], atom_types[receivers]]
            senders, receivers, shifts = senders[keep], receivers[keep], shifts[keep]

        def tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=self.device)

        return {
            POS: tensor(graph.positions, torch.float64),
            EDGE_INDEX: tensor(np.stack([senders, receivers]), torch.int64),
            ATOM_TYPES: tensor(atom_types, torch.int64),
            CELL: tensor(graph.cells, torch.float64),
            EDGE_CELL_SHIFT: tensor(shifts.reshape(-1, 3), torch.float64),
            BATCH: tensor(graph.batch, torch.int64),
            NUM_ATOMS: tensor(graph.n_atoms, torch.int64),
        }

    def _stand_in(self) -> AtomicSystem:
        cutoff = self.r_max if self.per_edge_type_cutoff is None else float(self.per_edge_type_cutoff[0, 0])
        return _probe_system(cutoff, periodic=False)

    def _run(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outputs = self.runner([data[key] for key in self.inputs])
        return dict(zip(self.outputs, outputs, strict=True))


def _cutoff_matrix(text: str | None, n_types: int) -> np.ndarray | None:
    """nequip's per-edge-type cutoff metadata (row-major, source type by target type) as a matrix; None if absent."""
    if not text:
        return None
    values = np.array([float(value) for value in text.split()])
    if values.size != n_types * n_types:
        raise UnsupportedModelFile(f"per_edge_type_cutoff has {values.size} values for {n_types} atom types")
    return values.reshape(n_types, n_types)


def _import_custom_ops(path: Path) -> None:
    """Import the libraries whose custom operators the package uses (e.g. openequivariance), as nequip does."""
    with zipfile.ZipFile(path) as archive:
        entries = [name for name in archive.namelist() if name.endswith(_CUSTOM_OPS_ENTRY)]
        libraries = archive.read(entries[0]).decode().split() if entries else []
    for library in libraries:
        try:
            importlib.import_module(library)
        except ImportError as error:
            raise UnsupportedModelFile(
                f"{path.name} was compiled with custom operators from {library!r}, which is not installed: {error}"
            ) from error


def _probe_system(cutoff: float, periodic: bool = True) -> AtomicSystem:
    """Two atoms half a cutoff apart: a structure every model can evaluate (load-time probe, batch stand-in)."""
    positions = np.array([[0.0, 0.0, 0.0], [0.5 * cutoff, 0.0, 0.0]])
    cell = np.eye(3) * 3.0 * cutoff if periodic else None
    return AtomicSystem.from_arrays(np.zeros(2, np.int64), positions, cell, pbc=periodic)


def _concatenate(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Append the batch ``second`` after ``first`` (re-indexing its atoms and structures)."""
    n_atoms, n_systems = first[POS].shape[0], first[NUM_ATOMS].shape[0]
    joined = {key: torch.cat([first[key], second[key]]) for key in first if key != EDGE_INDEX}
    joined[EDGE_INDEX] = torch.cat([first[EDGE_INDEX], second[EDGE_INDEX] + n_atoms], dim=1)
    joined[BATCH] = torch.cat([first[BATCH], second[BATCH] + n_systems])
    return joined


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()
