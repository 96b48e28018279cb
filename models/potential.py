"""The Potential contract: a batch of atomic systems in; energy, forces and stress out.

Every model family implements :class:`Potential`. A backend evaluates the whole batch in one forward pass; the
server never loops over structures with a per-structure calculator. A potential's elements, cutoff and implemented
properties are its own (read from its checkpoint); its card is checked against them at load (:func:`check_card`),
which ``models/loading.py`` runs.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from ase.data import chemical_symbols

from .active_sets import Selection
from .cards import CardError, ModelCard
from .checks import StructureRejected, check_elements
from .prediction import ALL_PROPERTIES, ENERGY, FORCES, STRESS, Prediction, Uncertainty, UncertaintyKind
from .system import AtomicSystem
from .tensor_batch import TensorBatch, TensorPrediction

if TYPE_CHECKING:
    from .graph import BatchedGraph

__all__ = [
    "ALL_PROPERTIES",
    "ENERGY",
    "FORCES",
    "MIN_VOLUME",
    "STRESS",
    "Backend",
    "Potential",
    "Prediction",
    "PropertyNotImplemented",
    "StructureRejected",
    "TensorBatch",
    "TensorPrediction",
    "check_card",
    "check_elements",
    "divide_by_volume",
    "has_volume",
    "needs_gradients",
    "pick_device",
    "split_batch",
]

#: Cells below this volume (Å³) count as no cell: no stress is reported.
MIN_VOLUME = 1e-6
#: How far (Å) a card's cutoff may lie from its potential's.
CUTOFF_TOLERANCE = 1e-6


class Potential(abc.ABC):
    """A machine-learned interatomic potential that evaluates batches of systems.

    Subclasses set the attributes below in ``__init__``, from the loaded model, and implement
    :meth:`predict_batch`; :meth:`check_structure` is for a family's own limits.
    """

    card: ModelCard
    #: Properties this potential can compute, a subset of :data:`ALL_PROPERTIES`.
    implemented_properties: tuple[str, ...] = ALL_PROPERTIES
    #: Atomic numbers the model covers.
    elements: frozenset[int]
    #: Interaction cutoff in Å.
    cutoff: float
    dtype: torch.dtype
    device: torch.device
    #: The uncertainty this potential reports with every prediction (``Prediction.uncertainty``), or None.
    uncertainty_kind: UncertaintyKind | None = None
    #: What grades structures against an active set (MTP grades, ACE γ), or None.
    grader: Grader | None = None

    @abc.abstractmethod
    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one batch and return one :class:`Prediction` each, in order.

        Forces and stress are computed only when ``properties`` asks for them, where the model allows it.
        """

    def predict(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES, *, checked: bool = False
    ) -> list[Prediction]:
        """Check the request and each system (:meth:`check`, unless ``checked`` says the caller did), then evaluate
        the batch."""
        unknown = set(properties) - set(self.implemented_properties)
        if unknown:
            raise PropertyNotImplemented(
                f"{self.card.name} does not implement {sorted(unknown)}; it implements "
                f"{list(self.implemented_properties)}"
            )
        if not systems:
            return []
        if not checked:
            for system in systems:
                self.check(system)
        return self.predict_batch(systems, properties)

    @property
    def tensor_native(self) -> bool:
        """Whether :meth:`predict_tensors` keeps the batch on the device (False: it is the host fallback)."""
        return False

    def predict_tensors(self, batch: TensorBatch, properties: Sequence[str] = ALL_PROPERTIES) -> TensorPrediction:
        """Evaluate a batch given as device tensors; results stay on ``batch``'s device (the tensor path).

        This default is the explicit fallback: it copies the batch to the host, runs :meth:`predict_batch` and
        copies the results back, a host round trip per call. Families whose model is written in torch override it
        to keep positions and forces on the device. Systems are not checked (:meth:`check`): the caller admitted
        them.
        """
        if batch.n_systems == 0:
            return TensorPrediction(energy=torch.zeros(0, dtype=torch.float64, device=batch.device))
        predictions = self.predict(batch.to_systems(), properties, checked=True)
        return TensorPrediction.from_predictions(predictions, batch, properties)

    def check(self, system: AtomicSystem) -> None:
        """Raise :class:`StructureRejected` if this model cannot evaluate ``system``: an element it does not cover
        (:func:`check_elements` with :attr:`elements`), or a limit of its family (:meth:`check_structure`)."""
        check_elements(self.card.name, system.numbers, self.elements)
        self.check_structure(system)

    def check_structure(self, system: AtomicSystem) -> None:
        """The family's own limits (e.g. an atom with no neighbour within the cutoff); the default accepts all."""

    def select(self, systems: Sequence[AtomicSystem], max_count: int, threshold: float = 1.0) -> Selection:
        """Grade ``systems`` against the active set: those above ``threshold``, and a D-optimal subset of at most
        ``max_count`` (all that MaxVol picks when negative) for DFT, by the potential's :attr:`grader`."""
        if self.grader is None:
            raise PropertyNotImplemented(
                f"{self.card.name} has no active set to select structures against (an MTP or ACE card with "
                f"options.active_set has one)"
            )
        for system in systems:
            self.check(system)  # StructureRejected names what this model cannot take
        return self.grader.select(self, systems, max_count, threshold)

    def graded(self, predictions: list[Prediction], graph: BatchedGraph) -> list[Prediction]:
        """``predictions`` of the systems of ``graph``, each with its uncertainty when the potential has a grader."""
        if self.grader is not None:
            for prediction, uncertainty in zip(predictions, self.grader.uncertainties(self, graph), strict=True):
                prediction.uncertainty = uncertainty
        return predictions

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.card.name!r}, device={self.device}, dtype={self.dtype})"


class Grader(Protocol):
    """An active set that grades structures (``models/backends/mtp_grade.py``, ``ace_gamma.py``)."""

    def uncertainties(self, potential: Potential, graph: BatchedGraph) -> list[Uncertainty]:
        """The uncertainty of each system of ``graph``, in order."""
        ...

    def select(
        self, potential: Potential, systems: Sequence[AtomicSystem], max_count: int, threshold: float
    ) -> Selection:
        """Grades of ``systems``, those above ``threshold`` and a D-optimal subset of at most ``max_count``."""
        ...


class Backend(Protocol):
    """A family's backend module, as the registry imports it."""

    def load_potential(self, card: ModelCard, checkpoint: Path, device: torch.device) -> Potential:
        """Build the Potential of ``card`` from ``checkpoint`` (already hash-checked) on ``device``."""
        ...


class PropertyNotImplemented(ValueError):
    """A property was asked for that the potential does not compute."""


def check_card(card: ModelCard, potential: Potential) -> None:
    """Check ``card`` against the loaded potential, and narrow the potential to the card's elements.

    A card may narrow what a model covers, never widen it: every element it lists must be one the potential was
    built for, and the cutoffs must agree. A card listing fewer elements (CHGNet's embedding reaches Pu, its card
    lists the elements of its training set) narrows the potential to them, so the card and the model give one
    answer. A family whose files name no elements (MTP) takes them from the card and checks its species count.
    """
    listed, covered = card.atomic_numbers, frozenset(potential.elements)
    if not listed <= covered:
        raise CardError(
            f"model card {card.name!r} lists elements {_symbols(listed)}, but the loaded potential covers "
            f"{_symbols(covered)} (only in the card: {_symbols(listed - covered)}); list only elements the model "
            f"covers in the card's `elements`"
        )
    if abs(card.cutoff - potential.cutoff) > CUTOFF_TOLERANCE:
        raise CardError(
            f"model card {card.name!r} says cutoff {card.cutoff} Å, but the loaded potential's cutoff is "
            f"{potential.cutoff} Å; set `cutoff: {potential.cutoff}` in the card"
        )
    potential.elements = listed


def _symbols(numbers: Collection[int]) -> str:
    return " ".join(chemical_symbols[z] for z in sorted(numbers))


def needs_gradients(properties: Collection[str]) -> bool:
    """Whether ``properties`` asks for a derivative of the energy (forces or stress)."""
    return FORCES in properties or STRESS in properties


def has_volume(system: AtomicSystem) -> bool:
    """Whether ``system`` is periodic with a cell of non-zero volume, i.e. has a stress."""
    return system.is_periodic and system.volume >= MIN_VOLUME


def divide_by_volume(systems: Sequence[AtomicSystem], virials: np.ndarray) -> np.ndarray:
    """``virials`` (k, 3, 3) over each system's cell volume: stresses; zero for a system without one."""
    volumes = np.array([system.volume if has_volume(system) else np.inf for system in systems])
    return virials / volumes[:, None, None]


def split_batch(
    systems: Sequence[AtomicSystem],
    properties: Sequence[str],
    energy: np.ndarray,
    forces: np.ndarray | None = None,
    stress: np.ndarray | None = None,
) -> list[Prediction]:
    """One Prediction per system from a batch's outputs: ``energy`` (k,), ``forces`` (atoms of all systems in
    order, 3) and ``stress`` (k, 3, 3, ASE's sign); stress only for systems with a cell volume."""
    offsets = np.concatenate([[0], np.cumsum([system.n_atoms for system in systems])])
    predictions = []
    for index, system in enumerate(systems):
        prediction = Prediction(energy=float(energy[index]))
        if FORCES in properties and forces is not None:
            prediction.forces = forces[offsets[index] : offsets[index + 1]].copy()
        if STRESS in properties and stress is not None and has_volume(system):
            prediction.stress = stress[index].copy()
        predictions.append(prediction)
    return predictions


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or CUDA when it is available and the CPU otherwise."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
