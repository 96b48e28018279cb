"""Ingest: decode and validate a request's structures and turn the good ones into tasks.

Each structure is decoded (``structures.py``) and checked against the server's limits and the model's card
(``validation.py``) on its own, so a bad structure becomes an error entry while the others go on.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import ErrorCode
from ...models.cards import ModelCard
from ...models.system import AtomicSystem
from ..dynamics.options import MDOptions, MDSpec, NEBOptions, NEBSpec, RelaxOptions, RelaxSpec, image_mismatch
from ..engine.tasks import Task
from .errors import RequestError, StructureError
from .structures import decode_structure
from .validation import StructureLimits, validate_structure

#: What a relaxation result reports for its final geometry.
RELAX_PROPERTIES = ("energy", "forces", "stress")
#: What an MD result reports for its final geometry (its frames carry the stress of periodic structures).
MD_PROPERTIES = ("energy", "forces", "stress")
#: What an NEB path is evaluated for, and reports for its saddle image.
NEB_PROPERTIES = ("energy", "forces")
#: The integrators that hold a temperature, and so need ``temperature_K``.
THERMOSTATS = ("langevin", "csvr", "npt_crescale")
#: End points and images whose cells differ by more than this (Å, any entry) are refused.
CELL_TOLERANCE = 1e-6

Prepared = Task | StructureError

#: A request of at most this many atoms, all given as arrays, is decoded and validated on the event loop: that
#: takes a fraction of a millisecond, less than the hop to a worker thread and back (two thread wake-ups, each
#: milliseconds on a busy machine; ``benchmarks/bench_latency.py``). Larger ones, and files to parse, go to a thread.
INLINE_ATOMS = 64


def quick_to_prepare(structures: Sequence[Any]) -> bool:
    """Whether ``structures`` are few small arrays (see :data:`INLINE_ATOMS`), judged by their shapes alone."""
    atoms = 0
    for data in structures:
        positions = data.get("positions") if isinstance(data, dict) else None
        if not isinstance(positions, list) or "text" in data or "sites" in data:
            return False
        atoms += len(positions)
        if atoms > INLINE_ATOMS or not all(isinstance(row, list) and len(row) == 3 for row in positions):
            return False
        cell = data.get("cell")
        if cell is not None and not (isinstance(cell, list) and len(cell) == 3 and all(_row3(row) for row in cell)):
            return False
        species = data.get("numbers", data.get("symbols"))
        if not isinstance(species, list) or len(species) != len(positions):
            return False
    return True


def _row3(row: Any) -> bool:
    return isinstance(row, list) and len(row) == 3


def prepare_tasks(
    structures: Sequence[Any],
    card: ModelCard,
    properties: tuple[str, ...],
    limits: StructureLimits,
    start: int = 0,
    relax: RelaxOptions | None = None,
    fixed: Sequence[Sequence[int] | None] | None = None,
) -> list[Prepared]:
    """Decode and validate each structure: a Task for each good one, the error for each bad one.

    With ``relax``, the tasks are relaxations; ``fixed`` lists each structure's fixed atoms (or None).
    Error messages number the structures from ``start`` (a job prepares its structures a slice at a time).
    """
    prepared: list[Prepared] = []
    for offset, data in enumerate(structures):
        index = start + offset
        try:
            system = decode_structure(index, data)
            validate_structure(index, system, card, limits)
            spec = None
            if relax is not None:
                spec = RelaxSpec(relax, fixed_atoms(index, system, fixed[offset] if fixed else None))
        except StructureError as error:
            prepared.append(error)
            continue
        prepared.append(Task(id=uuid.uuid4().hex, model=card.name, system=system, properties=properties, relax=spec))
    return prepared


def tasks_of(prepared: Sequence[Prepared]) -> list[Task]:
    return [item for item in prepared if isinstance(item, Task)]


def fixed_atoms(index: int, system: AtomicSystem, indices: Sequence[int] | None) -> np.ndarray | None:
    """The fixed-atom indices of structure ``index`` as an array, checked against its atom count."""
    if indices is None or len(indices) == 0:
        return None
    # checked as Python ints: JSON integers have no size limit, and one beyond int64 would overflow numpy
    bad = [atom for atom in indices if not 0 <= atom < system.n_atoms]
    if bad:
        problem = f"fixed atom index {bad[0]} is out of range for {system.n_atoms} atoms"
        raise StructureError(index, ErrorCode.MALFORMED_STRUCTURE, problem)
    return np.unique(np.asarray(indices, dtype=np.int64))


def check_fixed_count(fixed: Sequence[Any] | None, n_structures: int) -> None:
    """``fixed`` must have one entry per structure."""
    if fixed is not None and len(fixed) != n_structures:
        message = f"'fixed' has {len(fixed)} entries for {n_structures} structures; give one each"
        raise RequestError(422, ErrorCode.INVALID_REQUEST, message)


def check_structure_count(n_structures: int, limit: int, what: str, advice: str) -> None:
    """Refuse an empty ``what`` (request or job) with 422, and one over ``limit`` structures with 413."""
    if n_structures == 0:
        raise RequestError(422, ErrorCode.NO_STRUCTURES, f"the {what} has no structures")
    if n_structures > limit:
        raise RequestError(
            413,
            ErrorCode.TOO_MANY_STRUCTURES,
            f"the {what} holds {n_structures} structures, more than this server's limit of {limit} per {what}; "
            f"split it ({advice})",
        )


def check_request_atoms(prepared: Sequence[Prepared], limit: int) -> None:
    """Refuse (413) a request whose valid structures hold more than ``limit`` atoms together."""
    total = sum(task.n_atoms for task in tasks_of(prepared))
    if total > limit:
        raise RequestError(
            413,
            ErrorCode.TOO_MANY_ATOMS,
            f"the request holds {total} atoms, more than this server's limit of {limit} per request; "
            "split it (the Python client does this for you)",
        )


def check_md_options(options: MDOptions) -> None:
    """Refuse (422) MD options that cannot run: a thermostat without a target temperature."""
    if options.integrator in THERMOSTATS and options.temperature_K is None:
        message = f"integrator {options.integrator!r} is thermostatted: give temperature_K, its target (K)"
        raise RequestError(422, ErrorCode.INVALID_REQUEST, message)


def base_seed(options: MDOptions) -> int:
    """The seed of a request's first structure: the one asked for, or one drawn for this request."""
    return options.seed if options.seed is not None else secrets.randbits(32)


def check_velocities(velocities: Sequence[Any] | None, n_structures: int) -> list[np.ndarray | None] | None:
    """Each structure's initial velocities (N×3 finite numbers, Å/fs) or None; 422 naming the first problem.

    The atom count is checked against each structure when it is decoded (:func:`prepare_md_tasks`)."""
    if velocities is None:
        return None
    if len(velocities) != n_structures:
        message = f"'velocities' has {len(velocities)} entries for {n_structures} structures; give one each (or null)"
        raise RequestError(422, ErrorCode.INVALID_REQUEST, message)
    arrays: list[np.ndarray | None] = []
    for index, values in enumerate(velocities):
        if values is None:
            arrays.append(None)
            continue
        array = _number_rows(values)
        if array is None:
            message = f"velocities[{index}] must be a list of [vx, vy, vz] rows of numbers (Å/fs)"
            raise RequestError(422, ErrorCode.INVALID_REQUEST, message)
        if not np.isfinite(array).all():
            atom = int(np.argwhere(~np.isfinite(array))[0, 0])
            message = f"velocities[{index}]: the velocity of atom {atom} is NaN or infinite"
            raise RequestError(422, ErrorCode.NON_FINITE, message)
        arrays.append(array)
    return arrays


def _number_rows(values: Any) -> np.ndarray | None:
    """``values`` as an (N, 3) float array when they are rows of three JSON numbers, else None."""
    if not isinstance(values, list) or not all(isinstance(row, list) and len(row) == 3 for row in values):
        return None
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for row in values for x in row):
        return None
    try:
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=np.float64).reshape(len(values), 3)
    except (OverflowError, ValueError):
        return None


def prepare_md_tasks(
    structures: Sequence[Any],
    card: ModelCard,
    limits: StructureLimits,
    options: MDOptions,
    seed: int,
    start: int = 0,
    velocities: Sequence[np.ndarray | None] | None = None,
    fixed: Sequence[Sequence[int] | None] | None = None,
) -> list[Prepared]:
    """Decode and validate each structure as :func:`prepare_tasks` does, each good one an MD task.

    Structure ``start + i`` runs with seed ``seed + start + i``. NPT needs a structure periodic in all three
    directions (an error entry otherwise). Velocities whose row count is not the structure's atom count are
    refused with 422 (``velocities`` are checked by :func:`check_velocities` first).
    """
    prepared = prepare_tasks(structures, card, MD_PROPERTIES, limits, start)
    for offset, item in enumerate(prepared):
        if not isinstance(item, Task):
            continue
        index = start + offset
        system = item.system
        try:
            check_atom_steps(index, "structure", system.n_atoms * options.steps, limits)
            if options.integrator == "npt_crescale" and not system.pbc.all():
                problem = f"npt_crescale needs a structure periodic in 3 directions; its pbc is {system.pbc.tolist()}"
                raise StructureError(index, ErrorCode.INVALID_REQUEST, problem)
            atoms_fixed = fixed_atoms(index, system, fixed[offset] if fixed else None)
        except StructureError as error:
            prepared[offset] = error
            continue
        initial = velocities[offset] if velocities else None
        if initial is not None and len(initial) != system.n_atoms:
            message = f"velocities[{index}] has {len(initial)} rows for structure {index}'s {system.n_atoms} atoms"
            raise RequestError(422, ErrorCode.INVALID_REQUEST, message)
        spec = MDSpec(options, seed + index, velocities=initial, fixed=atoms_fixed)
        prepared[offset] = dataclasses.replace(item, md=spec)
    return prepared


def check_atom_steps(index: int, what: str, atom_steps: int, limits: StructureLimits) -> None:
    """Refuse an MD run or NEB path (``what`` ``index``) asking for more model work than the server allows."""
    if atom_steps > limits.max_atom_steps:
        problem = (
            f"{atom_steps:,} atom-steps (atoms × steps{' × images' if what == 'path' else ''}) are more than this "
            f"server's limit of {limits.max_atom_steps:,} per {'path' if what == 'path' else 'MD run'}; "
            "ask for fewer steps"
        )
        raise StructureError(index, ErrorCode.INVALID_REQUEST, problem)


class PathError(StructureError):
    """One path of an NEB request is unusable; ``message`` names the path (and the image)."""

    def __init__(self, index: int, code: ErrorCode, problem: str):
        super().__init__(index, code, problem)
        self.message = f"path {index}: {problem}"
        self.args = (self.message,)


def prepare_neb_tasks(
    paths: Sequence[Any], card: ModelCard, limits: StructureLimits, options: NEBOptions
) -> list[Prepared]:
    """Decode and validate each path's structures: a task for each good path, a :class:`PathError` for the others.

    Images that do not match the initial end point (atom count, species order, periodicity, cell) refuse the
    whole request (422): the path is not a path.
    """
    prepared: list[Prepared] = []
    for index, path in enumerate(paths):
        try:
            images = [_path_image(index, name, data, card, limits) for name, data in _named_images(path)]
            initial, *rest = images
            for (name, _), system in zip(_named_images(path)[1:], rest, strict=True):
                if problem := image_mismatch(initial, system, CELL_TOLERANCE):
                    raise RequestError(422, ErrorCode.INVALID_REQUEST, f"path {index}: {name} {problem}")
            fixed = fixed_atoms(index, initial, path.fixed)
            moving = len(path.intermediates or ()) or options.images
            check_atom_steps(index, "path", initial.n_atoms * moving * options.max_steps, limits)
        except StructureError as error:
            prepared.append(error if isinstance(error, PathError) else PathError(index, error.code, _problem(error)))
            continue
        final, *intermediates = rest
        spec = NEBSpec(options, final, tuple(intermediates), fixed)
        task = Task(id=uuid.uuid4().hex, model=card.name, system=initial, properties=NEB_PROPERTIES, neb=spec)
        prepared.append(task)
    return prepared


def _named_images(path: Any) -> list[tuple[str, Any]]:
    """A path's structures by name: initial, final, then the intermediates in order."""
    named = [("initial", path.initial), ("final", path.final)]
    return named + [(f"intermediate {i}", data) for i, data in enumerate(path.intermediates or ())]


def _path_image(index: int, name: str, data: Any, card: ModelCard, limits: StructureLimits) -> AtomicSystem:
    try:
        system = decode_structure(index, data)
        validate_structure(index, system, card, limits)
    except StructureError as error:
        raise PathError(index, error.code, f"{name}: {_problem(error)}") from None
    return system


def _problem(error: StructureError) -> str:
    return error.message.removeprefix(f"structure {error.index}: ")
