"""Physical sanity checks on a decoded structure, against the server's limits and the model's coverage."""

from __future__ import annotations

import numpy as np
from ase.neighborlist import primitive_neighbor_list

from ...errors import ErrorCode
from ...models.cards import ModelCard
from ...models.checks import StructureRejected, check_elements
from ...models.system import AtomicSystem
from ..config import StructureLimits
from .errors import StructureError


def validate_structure(index: int, system: AtomicSystem, card: ModelCard, limits: StructureLimits) -> None:
    """Raise :class:`StructureError` naming the first problem found with structure ``index``.

    These checks need only the model's card (which was checked against the loaded model), so the front end runs
    them without loading a model; the family's own limits (``Potential.check_structure``) are checked by the
    worker. Overlaps are found with ASE's neighbour list, which (unlike vesin) never imports torch.
    """
    n_atoms = system.n_atoms
    if n_atoms == 0:
        raise StructureError(index, ErrorCode.NO_ATOMS, "has no atoms")
    if n_atoms > limits.max_atoms:
        raise StructureError(
            index, ErrorCode.TOO_MANY_ATOMS, f"has {n_atoms} atoms, more than this server's limit of {limits.max_atoms}"
        )
    if not np.isfinite(system.positions).all():
        atom = int(np.argwhere(~np.isfinite(system.positions))[0, 0])
        raise StructureError(index, ErrorCode.NON_FINITE, f"position of atom {atom} is NaN or infinite")
    if not np.isfinite(system.cell).all():
        raise StructureError(index, ErrorCode.NON_FINITE, "cell has NaN or infinite entries")
    if system.is_periodic and system.volume < limits.min_volume:
        raise StructureError(
            index,
            ErrorCode.SINGULAR_CELL,
            f"cell is singular (volume {system.volume:.3g} Å³) but pbc is {system.pbc.tolist()}",
        )
    try:
        check_elements(card.name, system.numbers, card.atomic_numbers)
    except StructureRejected as rejection:
        raise StructureError(index, rejection.code, rejection.message) from None
    _check_overlaps(index, system, limits.min_distance)


def _check_overlaps(index: int, system: AtomicSystem, min_distance: float) -> None:
    if system.n_atoms < 2 and not system.is_periodic:
        return
    i, j, distances = primitive_neighbor_list(
        "ijd", system.pbc, system.cell, system.positions, min_distance, self_interaction=False
    )
    once = i <= j  # the list holds each pair both ways
    i, j, distances = i[once], j[once], distances[once]
    if i.size:
        k = int(np.argmin(distances))
        atom_i, atom_j = int(i[k]), int(j[k])
        what = f"atoms {atom_i} and {atom_j}" if atom_i != atom_j else f"atom {atom_i} and its periodic image"
        raise StructureError(
            index,
            ErrorCode.ATOMS_TOO_CLOSE,
            f"{what} are {distances[k]:.3f} Å apart, closer than the {min_distance} Å threshold",
        )
