"""Physical sanity checks on a decoded structure, against the server's limits and the model's coverage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vesin
from ase.data import chemical_symbols

from ..models.cards import ModelCard
from ..models.system import AtomicSystem
from .errors import StructureError


@dataclass(frozen=True)
class StructureLimits:
    """Per-structure limits enforced before a structure is queued."""

    max_atoms: int = 5000
    #: Two atoms closer than this (Å) are rejected as overlapping.
    min_distance: float = 0.5
    #: A periodic cell with a smaller volume (Å³) is rejected as singular.
    min_volume: float = 1e-3


def validate_structure(index: int, system: AtomicSystem, card: ModelCard, limits: StructureLimits) -> None:
    """Raise :class:`StructureError` naming the first problem found with structure ``index``.

    These checks need only the model's card, so the server runs them wherever the model itself runs; the
    family's own limits (:meth:`Potential.check`) are checked by the worker.
    """
    n_atoms = system.n_atoms
    if n_atoms == 0:
        raise StructureError(index, "no_atoms", "has no atoms")
    if n_atoms > limits.max_atoms:
        raise StructureError(
            index, "too_many_atoms", f"has {n_atoms} atoms, more than this server's limit of {limits.max_atoms}"
        )
    if not np.isfinite(system.positions).all():
        atom = int(np.argwhere(~np.isfinite(system.positions))[0, 0])
        raise StructureError(index, "non_finite", f"position of atom {atom} is NaN or infinite")
    if not np.isfinite(system.cell).all():
        raise StructureError(index, "non_finite", "cell has NaN or infinite entries")
    if system.is_periodic and system.volume < limits.min_volume:
        raise StructureError(
            index,
            "singular_cell",
            f"cell is singular (volume {system.volume:.3g} Å³) but pbc is {system.pbc.tolist()}",
        )
    uncovered = sorted(set(system.numbers.tolist()) - card.atomic_numbers)
    if uncovered:
        symbols = ", ".join(chemical_symbols[z] for z in uncovered)
        raise StructureError(index, "element_not_covered", f"element(s) {symbols} not covered by model {card.name!r}")
    _check_overlaps(index, system, limits.min_distance)


def _check_overlaps(index: int, system: AtomicSystem, min_distance: float) -> None:
    if system.n_atoms < 2 and not system.is_periodic:
        return
    box = system.cell if system.is_periodic else np.zeros((3, 3))
    i, j, distances = vesin.NeighborList(cutoff=min_distance, full_list=False).compute(
        points=system.positions, box=box, periodic=system.pbc.tolist(), quantities="ijd"
    )
    if i.size:
        k = int(np.argmin(distances))
        atom_i, atom_j = int(i[k]), int(j[k])
        what = f"atoms {atom_i} and {atom_j}" if atom_i != atom_j else f"atom {atom_i} and its periodic image"
        raise StructureError(
            index,
            "atoms_too_close",
            f"{what} are {distances[k]:.3f} Å apart, closer than the {min_distance} Å threshold",
        )
