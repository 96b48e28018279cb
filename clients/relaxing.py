"""Relaxation requests (``/v1/relax``): how a list is split, each request's body, and the shapes of the answer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..protocol import RelaxOptions
from .encoding import Chunk, chunked, encode_structure
from .options import OUTPUTS, Output
from .results import RelaxResult

#: Lists longer than this are relaxed through a server-side job (its progress is followed structure by structure,
#: and no single request has to wait for thousands of relaxations).
RELAX_DIRECT_LIMIT = 256
#: Relaxation requests sent at once: the server relaxes all their structures in flight, so more requests in
#: flight keep its batches full, and smaller ones let the progress bar move.
RELAX_CONCURRENCY = 16

FixedAtoms = Sequence[Sequence[int] | None]


def fixed_atoms(structure: Any) -> list[int] | None:
    """The indices an ase.Atoms' FixAtoms constraints hold in place, or None."""
    from ase.constraints import FixAtoms

    indices = [int(i) for c in getattr(structure, "constraints", []) if isinstance(c, FixAtoms) for i in c.index]
    return sorted(set(indices)) or None


def fixed_lists(structures: Sequence[Any], fixed: FixedAtoms | None) -> list[list[int] | None]:
    """Each structure's fixed atom indices: from ``fixed`` when given, else from its FixAtoms constraints."""
    if fixed is None:
        return [fixed_atoms(s) for s in structures]
    return [None if f is None else [int(i) for i in f] for f in fixed]


def check_fixed(structures: Sequence[Any], fixed: FixedAtoms | None) -> None:
    """Refuse a ``fixed`` list that does not give one entry per structure."""
    if fixed is not None and len(fixed) != len(structures):
        raise ValueError(f"fixed has {len(fixed)} entries for {len(structures)} structures")


def relax_chunks(structures: Sequence[Any], chunk_size: int, chunk_atoms: int) -> list[Chunk]:
    """Encode the structures and split them into requests, small enough to keep RELAX_CONCURRENCY in flight."""
    size = max(1, min(chunk_size, math.ceil(len(structures) / RELAX_CONCURRENCY)))
    return list(chunked([encode_structure(s) for s in structures], size, chunk_atoms))


def relax_body(chunk: Chunk, fixed: list[list[int] | None], options: RelaxOptions, model: str | None) -> dict[str, Any]:
    """The JSON body of ``POST /v1/relax`` for one chunk; ``fixed`` holds every structure's fixed atoms."""
    start, structures = chunk
    body: dict[str, Any] = {"structures": structures, **options.request()}
    chunk_fixed = fixed[start : start + len(structures)]
    if any(f is not None for f in chunk_fixed):
        body["fixed"] = chunk_fixed
    if model:
        body["model"] = model
    return body


def converted(results: list[RelaxResult], output: Output) -> list[Any]:
    """The results as ``output`` asks: RelaxResults, ase.Atoms, or pymatgen Structures/Molecules."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "ase":
        return [result.atoms for result in results]
    if output == "pymatgen":
        return [result.to_pymatgen() for result in results]
    return list(results)
