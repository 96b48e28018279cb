"""The Potential contract: a batch of atomic systems in; energy, forces and stress out.

Every model family implements :class:`Potential`. A backend evaluates the whole batch in one forward pass; the
server never loops over structures with a per-structure calculator.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase.data import chemical_symbols

from .cards import ModelCard
from .system import AtomicSystem

ENERGY, FORCES, STRESS = "energy", "forces", "stress"
ALL_PROPERTIES: tuple[str, ...] = (ENERGY, FORCES, STRESS)


@dataclass
class Prediction:
    """Results for one system in ASE units and sign conventions.

    ``stress`` is the Cauchy stress in eV/Å³ with ASE's sign (tensile positive, ``(1/V) dE/dstrain``);
    None for a non-periodic system or when it was not requested.
    """

    energy: float
    forces: np.ndarray | None = None  # (n, 3) eV/Å
    stress: np.ndarray | None = None  # (3, 3) eV/Å³


class Potential(abc.ABC):
    """A machine-learned interatomic potential that evaluates batches of systems.

    Subclasses set the attributes below in ``__init__`` and implement :meth:`predict_batch`.
    """

    card: ModelCard
    #: Properties this potential can compute, a subset of :data:`ALL_PROPERTIES`.
    implemented_properties: tuple[str, ...] = ALL_PROPERTIES
    #: Atomic numbers the model was trained on.
    elements: frozenset[int]
    #: Interaction cutoff in Å.
    cutoff: float
    dtype: torch.dtype
    device: torch.device

    @abc.abstractmethod
    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one batch and return one :class:`Prediction` each, in order."""

    def predict(self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES) -> list[Prediction]:
        """Check the request against the contract, then evaluate the batch."""
        unknown = set(properties) - set(self.implemented_properties)
        if unknown:
            raise PropertyNotImplemented(
                f"{self.card.name} does not implement {sorted(unknown)}; it implements "
                f"{list(self.implemented_properties)}"
            )
        if not systems:
            return []
        return self.predict_batch(systems, properties)

    def check(self, system: AtomicSystem) -> None:
        """Raise :class:`StructureRejected` if this model cannot evaluate ``system``; the default accepts all.

        The server calls this for each structure before queueing it, so one bad structure never reaches a batch.
        Generic checks (elements, NaN, overlaps, cell) are done by the server; this hook is for the family's own
        limits (e.g. an atom with no neighbour within the cutoff).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.card.name!r}, device={self.device}, dtype={self.dtype})"


class StructureRejected(ValueError):
    """A structure this model cannot evaluate; ``code`` is a short machine-readable reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


#: Cells below this volume (Å³) count as no cell: no stress is reported.
MIN_VOLUME = 1e-6


def has_volume(system: AtomicSystem) -> bool:
    """Whether ``system`` is periodic with a cell of non-zero volume, i.e. has a stress."""
    return system.is_periodic and system.volume >= MIN_VOLUME


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


def reject_unknown_elements(model: str, numbers: np.ndarray, known: Collection[int]) -> None:
    """Raise :class:`StructureRejected` naming the elements in ``numbers`` that are not in ``known``."""
    unknown = sorted(set(np.unique(numbers).tolist()) - set(known))
    if unknown:
        symbols = ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in unknown)
        raise StructureRejected("unknown_element", f"{model} does not know {symbols}")


class PropertyNotImplemented(ValueError):
    """A property was asked for that the potential does not compute."""


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or CUDA when it is available and the CPU otherwise."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
