"""What :class:`~.client.Client` and :class:`~.client.AsyncClient` share for relaxations (``/v1/relax``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .encoding import chunked, encode_structure
from .results import RelaxResult, collect

#: Lists longer than this are relaxed through a server-side job (its progress is followed structure by structure,
#: and no single request has to wait for thousands of relaxations).
RELAX_DIRECT_LIMIT = 256
#: Relaxation requests sent at once: the server relaxes all their structures in flight, so more requests in
#: flight keep its batches full, and smaller ones let the progress bar move.
RELAX_CONCURRENCY = 16
OUTPUTS = ("result", "ase", "pymatgen")


def fixed_atoms(structure: Any) -> list[int] | None:
    """The indices an ase.Atoms' FixAtoms constraints hold in place, or None."""
    from ase.constraints import FixAtoms

    indices = [int(i) for c in getattr(structure, "constraints", []) if isinstance(c, FixAtoms) for i in c.index]
    return sorted(set(indices)) or None


def relax_chunks(
    structures: Any, fixed: Sequence[Sequence[int] | None] | None, chunk_size: int, chunk_atoms: int
) -> tuple[bool, list[tuple[int, list[dict]]], list[list[int] | None], int]:
    """Encode the structures and split them into requests; also each structure's fixed atoms."""
    single = not isinstance(structures, (list, tuple))
    items = [structures] if single else list(structures)
    if fixed is not None and len(fixed) != len(items):
        raise ValueError(f"fixed has {len(fixed)} entries for {len(items)} structures")
    fixed_lists = [list(f) if f is not None else None for f in fixed] if fixed else [fixed_atoms(s) for s in items]
    size = max(1, min(chunk_size, math.ceil(len(items) / RELAX_CONCURRENCY)))
    chunks = list(chunked([encode_structure(s) for s in items], size, chunk_atoms))
    return single, chunks, fixed_lists, len(items)


def relax_body(
    chunk: tuple[int, list[dict]], fixed: list[list[int] | None], options: dict[str, Any], model: str | None
) -> dict[str, Any]:
    start, structures = chunk
    body: dict[str, Any] = {"structures": structures, **options}
    chunk_fixed = fixed[start : start + len(structures)]
    if any(f is not None for f in chunk_fixed):
        body["fixed"] = chunk_fixed
    if model:
        body["model"] = model
    return body


def relax_results(
    chunks: list[tuple[int, list[dict]]], payloads: list[dict[str, Any]], errors: str, output: str
) -> list[Any]:
    """Decode the answers; ``output`` "result" gives RelaxResults, "ase" Atoms, "pymatgen" Structures/Molecules."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    return converted(collect(chunks, payloads, errors, RelaxResult), output)


def converted(results: list[RelaxResult], output: str) -> list[Any]:
    """The results as ``output`` asks: RelaxResults, ase.Atoms, or pymatgen Structures/Molecules."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "ase":
        return [result.atoms for result in results]
    if output == "pymatgen":
        return [result.to_pymatgen() for result in results]
    return results
