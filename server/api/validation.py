"""Physical sanity checks on a decoded structure, against the server's limits and the model's coverage."""

from __future__ import annotations

import itertools

import numpy as np
from ase.neighborlist import primitive_neighbor_list

from ...errors import ErrorCode
from ...models.cards import ModelCard
from ...models.checks import StructureRejected, check_elements
from ...models.system import AtomicSystem
from ..config import StructureLimits
from .errors import StructureError

#: Positions and cell entries beyond this (Å) are refused like infinite ones: no structure needs them, and model
#: neighbour lists size their cell grids by them.
MAX_COORDINATE = 1e5


def validate_structure(index: int, system: AtomicSystem, card: ModelCard, limits: StructureLimits) -> None:
    """Raise :class:`StructureError` naming the first problem found with structure ``index``.

    These checks need only the model's card (which was checked against the loaded model), so the front end runs
    them without loading a model; the family's own limits (``Potential.check_structure``) are checked by the
    worker. Overlaps are found directly in numpy for small structures and with ASE's neighbour list for large ones;
    neither imports torch (vesin does).
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
    # Finite is not enough: SevenNet's neighbour list kills the whole process (SIGFPE) on two atoms 1e6 Å apart.
    if (np.abs(system.positions) > MAX_COORDINATE).any():
        atom = int(np.argwhere(np.abs(system.positions) > MAX_COORDINATE)[0, 0])
        raise StructureError(index, ErrorCode.NON_FINITE, f"position of atom {atom} is beyond ±{MAX_COORDINATE:g} Å")
    if (np.abs(system.cell) > MAX_COORDINATE).any():
        raise StructureError(index, ErrorCode.NON_FINITE, f"cell has entries beyond ±{MAX_COORDINATE:g} Å")
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
    _check_plane_spacing(index, system, limits.min_distance)
    _check_overlaps(index, system, limits.min_distance)


def _check_plane_spacing(index: int, system: AtomicSystem, min_distance: float) -> None:
    """Refuse a cell whose lattice planes along a periodic direction are closer than ``min_distance``.

    A cell vector that short puts every atom too close to its image. Otherwise the cell is singular: one of, say,
    1e6 × 1e6 × 1e-9 Å has an ordinary volume, but a neighbour list over it would visit min_distance / spacing
    periodic images along that direction: billions, for minutes of CPU time here and on the worker. Usable planes
    need at most three images per direction for the overlap check.
    """
    if not system.is_periodic:
        return
    lengths = np.linalg.norm(system.cell, axis=1)
    for axis in np.flatnonzero(system.pbc):
        length = float(lengths[axis])
        if length < min_distance:  # the plainest case, named as the neighbour list would name it
            raise StructureError(
                index,
                ErrorCode.ATOMS_TOO_CLOSE,
                f"atom 0 and its periodic image are {length:.3f} Å apart, closer than the {min_distance} Å threshold",
            )
    # Spacings scale with the cell: computed on the cell scaled to entries of at most 1, they cannot overflow.
    scale = float(np.abs(system.cell).max())
    cell = system.cell / scale
    volume = abs(np.linalg.det(cell))
    faces = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)  # the face opposite each vector
    for axis in np.flatnonzero(system.pbc):
        face = float(faces[axis])
        with np.errstate(over="ignore"):
            spacing = scale * volume / face if face > 0 else 0.0
        if spacing < min_distance:
            raise StructureError(
                index,
                ErrorCode.SINGULAR_CELL,
                f"cell is degenerate: its lattice planes along cell vector {axis} are {spacing:.3g} Å apart, "
                f"closer than the {min_distance} Å threshold",
            )


#: Structures of up to this many atoms have their closest pair found directly (all pairs with each of the 27
#: neighbouring images, in numpy: tens of microseconds for 8 atoms); larger ones with ASE's neighbour list, whose
#: set-up costs milliseconds even for a handful of atoms (the bulk of a small request's validation time).
DIRECT_OVERLAP_ATOMS = 48


def _check_overlaps(index: int, system: AtomicSystem, min_distance: float) -> None:
    if system.n_atoms < 2 and not system.is_periodic:
        return
    if system.n_atoms <= DIRECT_OVERLAP_ATOMS:
        i, j, distances = _close_pairs_direct(system, min_distance)
    else:
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


def _close_pairs_direct(system: AtomicSystem, min_distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j, distance), both ways, closer than ``min_distance``, from all pairs of atoms and images.

    Atoms are first wrapped into the cell along its periodic directions. The lattice planes are at least
    ``min_distance`` apart (:func:`_check_plane_spacing` ran first), so a pair that close has fractional
    coordinates less than 1 apart along every periodic direction: the images one cell away each way hold them all.
    """
    positions, pbc = system.positions, system.pbc
    if system.is_periodic:
        fractional = np.linalg.solve(system.cell.T, positions.T).T
        fractional[:, pbc] -= np.floor(fractional[:, pbc])
        positions = fractional @ system.cell
    steps = [(-1, 0, 1) if periodic else (0,) for periodic in pbc]
    offsets = np.array(list(itertools.product(*steps)), dtype=np.float64) @ system.cell  # (S, 3)
    vectors = positions[None, None, :, :] + offsets[:, None, None, :] - positions[None, :, None, :]  # (S, i, j, 3)
    squared = np.einsum("sijk,sijk->sij", vectors, vectors)
    shift, i, j = np.nonzero(squared < min_distance**2)
    itself = (i == j) & ~offsets[shift].any(axis=1)  # an atom and itself, not an image
    i, j, shift = i[~itself], j[~itself], shift[~itself]
    return i, j, np.sqrt(squared[shift, i, j])
