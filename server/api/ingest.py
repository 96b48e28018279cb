"""Ingest: decode and validate a request's structures and turn the good ones into tasks.

Each structure is decoded (``structures.py``) and checked against the server's limits and the model's card
(``validation.py``) on its own, so a bad structure becomes an error entry while the others go on.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import ErrorCode
from ...models.cards import ModelCard
from ...models.system import AtomicSystem
from ..dynamics.options import RelaxOptions, RelaxSpec
from ..engine.tasks import Task
from .errors import RequestError, StructureError
from .structures import decode_structure
from .validation import StructureLimits, validate_structure

#: What a relaxation result reports for its final geometry.
RELAX_PROPERTIES = ("energy", "forces", "stress")

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
