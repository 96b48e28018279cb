"""Turn the structures users hold (ase.Atoms, pymatgen Structure/Molecule, dicts) into request JSON."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

#: A request's share of the caller's list: the index of its first structure there, and the encoded structures.
Chunk = tuple[int, list[dict[str, Any]]]


def as_list(structures: Any) -> tuple[bool, list[Any]]:
    """Whether the caller gave one structure rather than a list or tuple, and the structures as a list."""
    single = not isinstance(structures, (list, tuple))
    return single, [structures] if single else list(structures)


def encode_structure(structure: Any) -> dict[str, Any]:
    """The request form of one structure: an ase.Atoms, a pymatgen Structure or Molecule, or a ready dict."""
    if isinstance(structure, dict):
        return structure
    if hasattr(structure, "get_atomic_numbers") and hasattr(structure, "get_pbc"):  # ase.Atoms
        return {
            "numbers": structure.numbers.tolist(),
            "positions": structure.positions.tolist(),
            "cell": structure.cell.array.tolist(),
            "pbc": structure.pbc.tolist(),
        }
    if hasattr(structure, "cart_coords") and hasattr(structure, "species"):  # pymatgen
        numbers = [site.specie.Z for site in structure]
        encoded: dict[str, Any] = {"numbers": numbers, "positions": np.asarray(structure.cart_coords).tolist()}
        if hasattr(structure, "lattice"):
            encoded.update(cell=structure.lattice.matrix.tolist(), pbc=list(structure.lattice.pbc))
        else:
            encoded["pbc"] = [False, False, False]
        return encoded
    if hasattr(structure, "numbers") and hasattr(structure, "positions"):  # mlipserve AtomicSystem
        return {
            "numbers": np.asarray(structure.numbers).tolist(),
            "positions": np.asarray(structure.positions).tolist(),
            "cell": np.asarray(structure.cell).tolist(),
            "pbc": np.asarray(structure.pbc).tolist(),
        }
    raise TypeError(f"cannot send a {type(structure).__name__}: give ase.Atoms, pymatgen Structure/Molecule or dict")


def count_atoms(encoded: dict[str, Any]) -> int:
    """Atoms in an encoded structure (0 when the form does not tell without parsing, e.g. file text)."""
    for key in ("numbers", "symbols", "sites"):
        if key in encoded:
            return len(encoded[key])
    return 0


def chunked(encoded: Sequence[dict[str, Any]], max_structures: int, max_atoms: int) -> Iterator[Chunk]:
    """Split structures into requests of at most ``max_structures`` and ``max_atoms``; yields (start, chunk)."""
    chunk: list[dict[str, Any]] = []
    start, atoms = 0, 0
    for index, structure in enumerate(encoded):
        n = count_atoms(structure)
        if chunk and (len(chunk) >= max_structures or atoms + n > max_atoms):
            yield start, chunk
            start, chunk, atoms = index, [], 0
        chunk.append(structure)
        atoms += n
    if chunk:
        yield start, chunk
