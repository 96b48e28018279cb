"""MACE backend: evaluates a batch of structures with a mace-torch model file in one forward pass.

The batch goes through mace's own data path: one ``mace.data.AtomicData`` per structure (with the neighbour list
from :func:`mlipserve.models.graph.neighbor_list`), collated by mace's ``Batch.from_data_list`` into one graph, and
one call of the model returns the energies, forces (``-dE/dr``) and stresses (ASE's sign) of every structure, as
``mace.calculators.MACECalculator`` reads them for a single structure. The tensors are built in the model's dtype
directly, so the process-wide torch default dtype is never switched (other models may share the process).

mace-torch's model files are pickled modules, so they are loaded with ``torch.load(weights_only=False)``: full
unpickling, which runs whatever the file says. ``weights_only=True`` cannot read them: the file holds no state dict
and config from which the model could be rebuilt, but the ``ScaleShiftMACE`` object itself, made of dozens of mace
and e3nn module classes (interaction blocks, tensor products, radial embeddings, e3nn's generated code).
Allowing all of those classes for the restricted unpickler would let a file build and configure any of them,
which is no longer the guarantee ``weights_only`` gives. What stands instead: only a file inside the model
directory (symbolic links followed) whose sha256 matches the card or the user's pin is unpickled, and only in the
MACE environment. ``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which turns off ``torch.load``'s
``weights_only`` default for the whole process; this module imports mace with that variable restored afterwards,
so that no other ``torch.load`` in the process unpickles unsafely.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..cards import CardError, ModelCard
from ..graph import neighbor_list
from ..potential import (
    ALL_PROPERTIES,
    MIN_VOLUME,
    STRESS,
    Potential,
    Prediction,
    has_volume,
    needs_gradients,
    split_batch,
)
from ..system import AtomicSystem

#: The variable through which ``import mace`` switches off torch's ``weights_only`` default for the whole process.
WEIGHTS_ONLY_OVERRIDE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def weights_only_kept() -> Iterator[None]:
    """Undo, on leaving, any change made to :data:`WEIGHTS_ONLY_OVERRIDE` inside the block."""
    before = os.environ.get(WEIGHTS_ONLY_OVERRIDE)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(WEIGHTS_ONLY_OVERRIDE, None)
        else:
            os.environ[WEIGHTS_ONLY_OVERRIDE] = before


with weights_only_kept():
    try:  # mace-torch is the optional dependency of this family; the registry reports a missing package clearly
        from mace.data import AtomicData
        from mace.tools import torch_geometric
    except ImportError as error:  # pragma: no cover - exercised only without mace-torch
        raise ImportError(f"the MACE backend needs the 'mace-torch' package: {error}") from error

#: Model classes whose output is an energy with forces and stress; others (dipole, polarisability, charge
#: models) are refused by name.
ENERGY_MODEL_CLASSES = ("MACE", "ScaleShiftMACE")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> MACEPotential:
    """Unpickle the MACE model in ``checkpoint`` (already hash-checked) and place it on ``device``."""
    return MACEPotential(card, checkpoint, device)


class MACEPotential(Potential):
    """A mace-torch model that evaluates whole batches, in float32 (default) or float64 (card ``options.dtype``).

    Card options: ``dtype`` (``float32`` | ``float64``), ``head`` (for multi-head models), ``cueq`` (``false``,
    the default, never uses cuEquivariance kernels; ``true`` requires them; ``auto`` uses them on a GPU when
    ``cuequivariance_torch`` is installed).
    """

    implemented_properties = ALL_PROPERTIES

    def __init__(self, card: ModelCard, checkpoint: Path, device: torch.device | str):
        self.card = card
        self.device = torch.device(device)
        self.dtype = _card_dtype(card)
        model = _unpickle(checkpoint, card)
        self.z_table = [int(z) for z in model.atomic_numbers]
        self._type_index = np.full(max(self.z_table) + 1, -1, dtype=np.int64)
        self._type_index[self.z_table] = np.arange(len(self.z_table))
        self.elements = frozenset(self.z_table)
        self.cutoff = float(model.r_max)
        self.heads = [str(head) for head in getattr(model, "heads", None) or ["Default"]]
        self.head = self.heads.index(_pick_head(card, self.heads))
        model = model.to(dtype=self.dtype)
        self.uses_cueq = _wants_cueq(card, self.device)
        if self.uses_cueq:
            model = _to_cueq(model, self.device)
        self.model = model.to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one forward pass; gradients are taken only for forces or stress."""
        need_forces = needs_gradients(properties)
        need_stress = STRESS in properties and any(has_volume(system) for system in systems)
        if need_forces:
            # Forces and stress are autograd derivatives; this must work under the caller's no_grad or
            # inference_mode, so the input tensors are made outside inference mode too.
            with torch.inference_mode(False), torch.enable_grad():
                output = self.model(self._batch(systems), compute_force=True, compute_stress=need_stress)
        else:
            with torch.no_grad():
                output = self.model(self._batch(systems), compute_force=False, compute_stress=False)

        energy = output["energy"].detach().cpu().double().numpy().reshape(-1)
        forces = output["forces"].detach().cpu().double().numpy() if need_forces else None
        stress = output["stress"].detach().cpu().double().numpy() if need_stress else None
        return split_batch(systems, properties, energy, forces, stress)

    def _batch(self, systems: Sequence[AtomicSystem]) -> dict[str, torch.Tensor]:
        """The systems collated by mace's ``Batch.from_data_list`` into one graph, as the model's input dict."""
        batch = torch_geometric.Batch.from_data_list([self._atomic_data(system) for system in systems])
        return batch.to(self.device).to_dict()

    def _atomic_data(self, system: AtomicSystem) -> AtomicData:
        """One structure as mace's ``AtomicData``, with the fields a MACE energy model reads, in the model's dtype."""
        dtype = self.dtype
        senders, receivers, unit_shifts = neighbor_list(system, self.cutoff)
        cell = _cell_with_volume(system)
        volume = float(np.linalg.det(cell))
        reciprocal = 2 * np.pi * np.linalg.inv(cell.T) if abs(volume) > MIN_VOLUME else np.zeros((3, 3))
        types = torch.as_tensor(self._type_index[system.numbers])
        return AtomicData(
            edge_index=torch.as_tensor(np.stack([senders, receivers]), dtype=torch.long),
            node_attrs=torch.nn.functional.one_hot(types, num_classes=len(self.z_table)).to(dtype),
            positions=torch.as_tensor(system.positions, dtype=dtype),
            shifts=torch.as_tensor(unit_shifts @ cell, dtype=dtype),
            unit_shifts=torch.as_tensor(unit_shifts, dtype=dtype),
            cell=torch.as_tensor(cell, dtype=dtype),
            pbc=torch.as_tensor(system.pbc, dtype=torch.bool).reshape(1, 3),
            volume=torch.tensor(volume, dtype=dtype),
            rcell=torch.as_tensor(reciprocal, dtype=dtype),
            head=torch.tensor(self.head, dtype=torch.long),
            total_charge=torch.tensor(0.0, dtype=dtype),
            total_spin=torch.tensor(1.0, dtype=dtype),
            weight=None,
            energy_weight=None,
            forces_weight=None,
            stress_weight=None,
            virials_weight=None,
            dipole_weight=None,
            charges_weight=None,
            polarizability_weight=None,
            forces=None,
            energy=None,
            stress=None,
            virials=None,
            dipole=None,
            charges=None,
            polarizability=None,
            elec_temp=None,
        )


def _card_dtype(card: ModelCard) -> torch.dtype:
    name = str(card.options.get("dtype", "float32"))
    if name not in DTYPES:
        raise CardError(f"{card.name}: options.dtype must be one of {sorted(DTYPES)}, not {name!r}")
    return DTYPES[name]


def _unpickle(checkpoint: Path, card: ModelCard) -> torch.nn.Module:
    """Unpickle the model file (hash-checked by the registry) without touching the process's torch.load default."""
    with weights_only_kept():
        try:
            model = torch.load(checkpoint, map_location="cpu", weights_only=False)
        except Exception as error:
            raise CardError(f"{card.name}: {checkpoint.name} is not a MACE model file readable here: {error}") from None
    if not isinstance(model, torch.nn.Module):
        raise CardError(
            f"{card.name}: {checkpoint.name} holds a {type(model).__name__}, not a pickled MACE model; "
            "a training checkpoint (.pt state dict) or a LAMMPS export cannot be served"
        )
    variant = type(model).__name__
    if variant not in ENERGY_MODEL_CLASSES:
        raise CardError(
            f"{card.name}: {checkpoint.name} is a {variant} model; mlipserve serves MACE energy models "
            f"({', '.join(ENERGY_MODEL_CLASSES)}) only"
        )
    return model


def _pick_head(card: ModelCard, heads: list[str]) -> str:
    """The head named by ``options.head``; for a multi-head model without it, the one called 'default'."""
    head = card.options.get("head")
    if head is not None:
        if str(head) not in heads:
            raise CardError(f"{card.name}: options.head={head!r} is not a head of the model; its heads are {heads}")
        return str(head)
    if len(heads) == 1:
        return heads[0]
    defaults = [name for name in heads if name.lower() == "default"]
    if not defaults:
        raise CardError(f"{card.name}: the model has several heads; set options.head in the card to one of {heads}")
    return defaults[0]


def _wants_cueq(card: ModelCard, device: torch.device) -> bool:
    """Whether to convert the model to cuEquivariance kernels (``options.cueq``: auto, true, false)."""
    # off by default: the kernels change the float32 numbers (issue 15); `serve --cueq` or the card turn them on
    choice = str(card.options.get("cueq", "false")).lower()
    if choice not in ("auto", "true", "false"):
        raise CardError(f"{card.name}: options.cueq must be auto, true or false, not {choice!r}")
    available = device.type == "cuda" and importlib.util.find_spec("cuequivariance_torch") is not None
    if choice == "true" and not available:
        raise CardError(f"{card.name}: options.cueq is true, but cuequivariance_torch is not installed or not on a GPU")
    return choice != "false" and available


def _to_cueq(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The same model with cuEquivariance kernels (mace's converter sets the default dtype: it is put back)."""
    default_dtype = torch.get_default_dtype()
    try:
        with weights_only_kept():
            from mace.cli.convert_e3nn_cueq import run as convert_to_cueq

            return convert_to_cueq(model.to(device), device=device.type)
    finally:
        torch.set_default_dtype(default_dtype)


def _cell_with_volume(system: AtomicSystem) -> np.ndarray:
    """The cell, with a unit vector for each non-periodic axis that has none (a molecule gets the unit cube).

    Shifts along a non-periodic axis are zero, so such a row changes no edge; it keeps the volume, by which mace
    divides the (then unreported) virial, away from zero.
    """
    cell = system.cell.copy()
    for axis in range(3):
        if not system.pbc[axis] and np.linalg.norm(cell[axis]) < 1e-12:
            cell[axis] = np.eye(3)[axis]
    return cell
