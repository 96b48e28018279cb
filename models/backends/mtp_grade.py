"""MTP extrapolation grades: the MaxVol active set of the training configurations, and the grade of any structure.

The row of a structure (``configuration`` mode) or of an atom (``neighborhood`` mode) is the derivative of its
energy by every parameter of the potential, in motep's order: moment coefficients (the scalar moments themselves),
species coefficients (atom counts, or the atom's species one-hot), radial coefficients ``c[s_i, s_j, mu, k]``. The
active set is the MaxVol selection of the training rows (motep's start and tolerance, :mod:`..active_sets`); a
structure's grade is ``max |b A⁻¹|``, per atom in neighbourhood mode, as motep's ``Grader`` reports it (``MV_grade``,
``nbh_grades``).

The radial-coefficient derivatives of every atom come from one backward pass: each atom gets its own copy of its
species' radial coefficients, so the gradient of the summed site energies by the copies is each site energy's own.

Card options (MTP family): ``active_set`` (the training configurations, extxyz or MLIP ``.cfg`` whose ``type`` is
the species index, in the model directory) with ``active_set_sha256``, and ``active_set_mode`` (``configuration``,
the default, or ``neighborhood``). The selection is computed once at load, deterministically (MaxVol from a
pivoted QR: no random start), unless ``active_set_rows`` records it: the training rows (configurations, or atoms
counted through all configurations) that form the active set, e.g. ``motep grade``'s ``[data_active]`` indices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers
from ase.io import read

from ..active_sets import ActiveSet, Selection, maxvol, qr_start, select_rows
from ..cards import CardError, ModelCard
from ..graph import BatchedGraph, build_graph
from ..prediction import Uncertainty
from ..system import AtomicSystem
from .ace import verified_companion
from .mtp_format import MTPFormatError, read_cfg

MODES = ("configuration", "neighborhood")
#: motep's MaxVol: stop once no coefficient exceeds 1 + 1e-9.
TOLERANCE = 1.0 + 1e-9
MAX_SWAPS = 100_000
#: Atoms per batch when the training configurations are evaluated at load.
CHUNK_ATOMS = 4096

log = logging.getLogger(__name__)


@dataclass
class MTPGrader:
    """The active set of an MTP and how its rows are formed (``mode``)."""

    mode: str
    active_set: ActiveSet
    #: Rows of the training matrix that form the active set (configurations, or atoms of all configurations).
    training_rows: np.ndarray
    _inverses: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def from_training(
        cls, potential, systems: Sequence[AtomicSystem], mode: str, rows: Sequence[int] | None = None
    ) -> MTPGrader:
        """MaxVol over the rows of ``systems`` (the training configurations), or the recorded selection ``rows``.

        The rows are computed on the CPU whatever the potential's device: MaxVol's choice among rows that differ only
        in the null space of the parameterisation is decided by rounding, so the same card gives the same active set
        on every device.
        """
        on_cpu = potential if potential.device.type == "cpu" else _on_cpu(potential)
        matrix = np.vstack([rows_of(on_cpu, chunk, mode) for chunk in _chunks(systems)])
        if matrix.shape[0] < matrix.shape[1]:
            raise CardError(
                f"{potential.card.name}: the active set needs at least as many {mode} rows as the potential has "
                f"parameters ({matrix.shape[1]}); the training configurations give {matrix.shape[0]}"
            )
        if rows is None:
            rows = maxvol(matrix, qr_start(matrix), TOLERANCE, MAX_SWAPS)
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.shape != (matrix.shape[1],) or len(set(rows.tolist())) != rows.size or rows.min() < 0:
                raise CardError(f"{potential.card.name}: active_set_rows must be {matrix.shape[1]} distinct rows")
            if rows.max() >= matrix.shape[0]:
                raise CardError(f"{potential.card.name}: active_set_rows names row {rows.max()} of {matrix.shape[0]}")
        log.info("%s: active set of %d %s rows: %s", potential.card.name, len(rows), mode, np.sort(rows).tolist())
        return cls(mode=mode, active_set=ActiveSet.from_matrix(matrix[rows]), training_rows=np.sort(rows))

    def _inverse(self, device: torch.device) -> torch.Tensor:
        """The active set's inverse as a float64 tensor on ``device`` (kept, one per device)."""
        key = str(device)
        if key not in self._inverses:
            self._inverses[key] = torch.as_tensor(self.active_set.inverse, dtype=torch.float64, device=device)
        return self._inverses[key]

    def uncertainties(self, potential, graph: BatchedGraph) -> list[Uncertainty]:
        """The grade of every system of ``graph`` (and of each atom in neighbourhood mode), taken on the potential's
        device."""
        rows = site_jacobian(potential, graph)
        if self.mode == "configuration":
            rows = _per_system(rows, graph)
        grades = (rows @ self._inverse(rows.device)).abs().amax(dim=1).cpu().numpy() if rows.shape[0] else np.zeros(0)
        if self.mode == "configuration":
            return [Uncertainty(kind="grade", value=float(grade)) for grade in grades]
        offsets = graph.atom_offsets
        return [
            Uncertainty(kind="grade", value=_max(part), per_atom=part)
            for part in (grades[offsets[b] : offsets[b + 1]] for b in range(graph.n_systems))
        ]

    def select(self, potential, systems: Sequence[AtomicSystem], max_count: int, threshold: float) -> Selection:
        """Grades of ``systems``, those above ``threshold``, and the D-optimal subset MaxVol picks against the
        active set (motep's MaxVol over the candidates' rows and the active set's rows)."""
        graph = build_graph(systems, potential.cutoff)
        per_atom = site_jacobian(potential, graph)
        if self.mode == "configuration":
            per_atom = _per_system(per_atom, graph)
        per_atom = per_atom.cpu().numpy()
        if self.mode == "configuration":
            rows, owners = per_atom, np.arange(len(systems))
            grades, per_atom_grades = self.active_set.grades(rows), None
        else:
            rows, owners = per_atom, graph.batch
            atom_grades = self.active_set.grades(rows)
            offsets = graph.atom_offsets
            per_atom_grades = [atom_grades[offsets[b] : offsets[b + 1]] for b in range(len(systems))]
            grades = np.array([_max(part) for part in per_atom_grades])
        selected = select_rows(
            [(rows, owners, self.active_set)], max_count, start="qr", tolerance=TOLERANCE, max_swaps=MAX_SWAPS
        )
        return Selection(
            grades=grades,
            per_atom=per_atom_grades,
            above=[int(i) for i in np.flatnonzero(grades > threshold)],
            selected=selected,
        )


def load_grader(card: ModelCard, potential) -> MTPGrader | None:
    """The grader the card's ``active_set`` options ask for, or None."""
    if "active_set" not in card.options:
        return None
    mode = str(card.options.get("active_set_mode", "configuration"))
    if mode not in MODES:
        raise CardError(f"{card.name}: options.active_set_mode must be one of {MODES}, not {mode!r}")
    path = verified_companion(card, "active_set")
    try:
        systems = read_training(path, card.elements)
    except (MTPFormatError, ValueError, KeyError) as error:
        raise CardError(f"{card.name}: cannot read the active set's configurations {path.name}: {error}") from error
    if not systems:
        raise CardError(f"{card.name}: {path.name} holds no configurations")
    rows = card.options.get("active_set_rows")
    if rows is not None and not (isinstance(rows, list) and all(isinstance(row, int) for row in rows)):
        raise CardError(f"{card.name}: options.active_set_rows must be a list of row numbers")
    return MTPGrader.from_training(potential, systems, mode, rows)


def read_training(path: Path, elements: Sequence[str]) -> list[AtomicSystem]:
    """Configurations from an MLIP ``.cfg`` (types are species indices into ``elements``) or any ASE format."""
    if path.suffix == ".cfg":
        numbers = np.array([atomic_numbers[symbol] for symbol in elements])
        return [AtomicSystem.from_arrays(numbers[cfg.types], cfg.positions, cfg.cell) for cfg in read_cfg(path)]
    return [AtomicSystem.from_ase(atoms) for atoms in read(path, index=":")]


def rows_of(potential, systems: Sequence[AtomicSystem], mode: str) -> np.ndarray:
    """The rows of ``systems``: one per system (configuration mode) or one per atom (neighbourhood mode)."""
    graph = build_graph(systems, potential.cutoff)
    per_atom = site_jacobian(potential, graph)
    return (_per_system(per_atom, graph) if mode == "configuration" else per_atom).cpu().numpy()


def site_jacobian(potential, graph: BatchedGraph) -> torch.Tensor:
    """(N, P) float64 derivatives of each site energy by the potential's parameters, in motep's order (see module
    doc), on the potential's device."""
    from .mtp import EdgeIndex

    mtp = potential.mtp
    n_species, n_funcs, size = mtp.species_count, mtp.radial_funcs_count, mtp.radial_basis_size
    vectors_np = graph.edge_vectors()
    keep = np.einsum("ij,ij->i", vectors_np, vectors_np) < potential.cutoff**2  # MLIP's test: r < max_dist
    order = np.flatnonzero(keep)[np.argsort(graph.senders[keep], kind="stable")]
    n_atoms = graph.numbers.shape[0]
    device, dtype = potential.device, potential.dtype
    species_np = potential.species_of[graph.numbers]
    with torch.inference_mode(False), torch.enable_grad():
        edges = EdgeIndex.from_numpy(graph.senders[order], graph.receivers[order], n_atoms, device)
        species = torch.as_tensor(species_np, device=device)
        vectors = torch.as_tensor(vectors_np[order], dtype=dtype, device=device)
        shared = potential._radial.reshape(n_species, n_species, size, n_funcs)
        own = shared[species].detach().clone().requires_grad_(True)  # (N, S, R, F): each atom's own copy
        basis = potential.basis_values(vectors, edges, species, own)  # (moments, N)
        site = potential._moment_coeffs @ basis
        if site.requires_grad:
            (gradient,) = torch.autograd.grad(site.sum(), own, allow_unused=True)
        else:
            gradient = None
        gradient = torch.zeros_like(own) if gradient is None else gradient
    float64 = {"dtype": torch.float64, "device": device}
    radial = torch.zeros((n_atoms, n_species, n_species, n_funcs, size), **float64)
    radial[torch.arange(n_atoms, device=device), species] = gradient.detach().to(torch.float64).permute(0, 1, 3, 2)
    one_hot = torch.eye(n_species, **float64)[species]
    moments = basis.detach().to(torch.float64).T
    return torch.cat([moments, one_hot, radial.reshape(n_atoms, -1)], dim=1)


def _per_system(per_atom: torch.Tensor, graph: BatchedGraph) -> torch.Tensor:
    """(B, P) the sums of ``per_atom`` rows over each system's atoms."""
    batch = torch.as_tensor(graph.batch, device=per_atom.device)
    return per_atom.new_zeros((graph.n_systems, per_atom.shape[1])).index_add(0, batch, per_atom)


def _on_cpu(potential):
    """The same potential, evaluated on the CPU."""
    return type(potential)(potential.card, potential.mtp, "cpu", potential.dtype)


def _chunks(systems: Sequence[AtomicSystem]) -> list[list[AtomicSystem]]:
    chunks: list[list[AtomicSystem]] = [[]]
    atoms = 0
    for system in systems:
        if chunks[-1] and atoms + system.n_atoms > CHUNK_ATOMS:
            chunks.append([])
            atoms = 0
        chunks[-1].append(system)
        atoms += system.n_atoms
    return chunks


def _max(values: np.ndarray) -> float:
    return float(values.max()) if values.size else 0.0
