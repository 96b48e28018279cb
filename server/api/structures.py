"""Decode the structure forms a request may carry into :class:`AtomicSystem` objects.

Three forms are accepted (see the README): arrays (``numbers`` or ``symbols``, ``positions``, ``cell``, ``pbc``),
a pymatgen ``Structure.as_dict()`` / ``Molecule.as_dict()``, and text in a file format read by ase
(``{"format": "extxyz" | "cif" | "poscar", "text": ...}``).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from ...errors import ErrorCode
from ...models.system import AtomicSystem
from .errors import StructureError

#: request format name -> ase.io format name
TEXT_FORMATS = {"extxyz": "extxyz", "xyz": "extxyz", "cif": "cif", "poscar": "vasp", "vasp": "vasp"}
MAX_ATOMIC_NUMBER = len(chemical_symbols) - 1


def decode_structure(index: int, data: Any) -> AtomicSystem:
    """Decode structure ``index`` of a request, raising :class:`StructureError` for anything malformed."""
    if not isinstance(data, dict):
        raise StructureError(index, ErrorCode.MALFORMED_STRUCTURE, f"expected a JSON object, got {type(data).__name__}")
    if "format" in data or "text" in data:
        return _from_text(index, data)
    if "sites" in data:
        return _from_pymatgen(index, data)
    if "positions" in data:
        return _from_arrays(index, data)
    raise StructureError(
        index,
        ErrorCode.MALFORMED_STRUCTURE,
        "expected 'numbers' or 'symbols' with 'positions', a pymatgen as_dict() with 'sites', "
        f"or 'format' with 'text'; got keys {sorted(data)}",
    )


def _from_arrays(index: int, data: dict[str, Any]) -> AtomicSystem:
    if ("numbers" in data) == ("symbols" in data):
        raise StructureError(index, ErrorCode.MALFORMED_STRUCTURE, "give exactly one of 'numbers' and 'symbols'")
    numbers = _numbers_from_symbols(index, data["symbols"]) if "symbols" in data else _numbers(index, data["numbers"])
    positions = _float_array(index, "positions", data["positions"], (len(numbers), 3))
    cell = data.get("cell")
    cell = np.zeros((3, 3)) if cell is None else _cell(index, cell)
    pbc = data.get("pbc")
    if pbc is None:
        pbc = np.full(3, bool(np.any(cell)))
    else:
        pbc = np.asarray(pbc) if _is_array(pbc) else None
        if pbc is None or pbc.shape not in ((), (3,)) or pbc.dtype != bool:
            raise StructureError(
                index, ErrorCode.MALFORMED_STRUCTURE, "'pbc' must be a boolean or a list of 3 booleans"
            )
    return AtomicSystem.from_arrays(numbers, positions, cell, pbc)


def _numbers(index: int, values: Any) -> np.ndarray:
    try:
        numbers = np.asarray(values)
        if numbers.ndim != 1 or not (numbers.size == 0 or np.issubdtype(numbers.dtype, np.integer)):
            raise ValueError
    except (ValueError, TypeError):
        raise StructureError(index, ErrorCode.MALFORMED_STRUCTURE, "'numbers' must be a list of integers") from None
    bad = numbers[(numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)]
    if bad.size:
        raise StructureError(index, ErrorCode.UNKNOWN_ELEMENT, f"atomic number {int(bad[0])} is not an element")
    return numbers.astype(np.int64)


def _numbers_from_symbols(index: int, symbols: Any) -> np.ndarray:
    if not isinstance(symbols, list) or not all(isinstance(symbol, str) for symbol in symbols):
        raise StructureError(index, ErrorCode.MALFORMED_STRUCTURE, "'symbols' must be a list of element symbols")
    unknown = sorted({symbol for symbol in symbols if symbol not in atomic_numbers or symbol == "X"})
    if unknown:
        raise StructureError(index, ErrorCode.UNKNOWN_ELEMENT, f"unknown element symbol(s) {', '.join(unknown)}")
    return np.array([atomic_numbers[symbol] for symbol in symbols], dtype=np.int64)


def _float_array(index: int, name: str, values: Any, shape: tuple[int, int]) -> np.ndarray:
    array = _numeric_array(values)
    if array is None:
        raise StructureError(index, ErrorCode.MALFORMED_STRUCTURE, f"'{name}' must be numbers of shape {shape}")
    if array.shape != shape and not (array.size == 0 and shape[0] == 0):
        raise StructureError(
            index, ErrorCode.MALFORMED_STRUCTURE, f"'{name}' has shape {list(array.shape)}, expected {list(shape)}"
        )
    return array.reshape(shape)


def _cell(index: int, values: Any) -> np.ndarray:
    cell = _numeric_array(values)
    if cell is not None and cell.shape == (3,):
        cell = np.diag(cell)
    if cell is None or cell.shape != (3, 3):
        raise StructureError(
            index, ErrorCode.MALFORMED_STRUCTURE, "'cell' must be a 3×3 matrix (rows are lattice vectors)"
        )
    return cell


def _numeric_array(values: Any) -> np.ndarray | None:
    """``values`` as a float array, or None unless they are nested lists of numbers (JSON ints or floats).

    numpy alone would take the strings "1.5" and the booleans true/false as numbers, and raise OverflowError on an
    integer beyond a float's range (JSON allows 1 followed by 400 zeros); all of those are malformed here.
    """
    if not _is_array(values):
        return None
    array = np.asarray(values)
    if array.dtype.kind not in "iuf" and not (array.dtype.kind == "O" and _all_numbers(array)):
        return None
    try:
        with np.errstate(over="ignore"):
            return array.astype(np.float64)
    except (OverflowError, ValueError, TypeError):
        return None


def _all_numbers(array: np.ndarray) -> bool:
    """Whether an object array holds ints and floats only (numpy makes one of integers beyond 64 bits)."""
    return all(isinstance(value, int | float) and not isinstance(value, bool) for value in array.flat)


def _is_array(values: Any) -> bool:
    """Whether numpy makes a regular (non-ragged) array of ``values`` without an error."""
    try:
        np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def _from_pymatgen(index: int, data: dict[str, Any]) -> AtomicSystem:
    from pymatgen.core import Molecule, Structure

    periodic = "lattice" in data
    # pymatgen checks little in from_dict: a bad site or lattice may only fail when its coordinates, species or
    # matrix are read, so everything read from the object is read here.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = Structure.from_dict(data) if periodic else Molecule.from_dict(data)
            ordered = obj.is_ordered
            numbers = [site.specie.Z for site in obj] if ordered else []
            positions = obj.cart_coords
            cell = obj.lattice.matrix if isinstance(obj, Structure) else None
    except Exception as error:  # pymatgen raises many types for bad dicts
        raise StructureError(index, ErrorCode.MALFORMED_STRUCTURE, f"not a valid pymatgen as_dict(): {error}") from None
    if not ordered:
        raise StructureError(index, ErrorCode.MALFORMED_STRUCTURE, "partial occupancies are not supported")
    numbers_array = _numbers(index, numbers)
    positions = _float_array(index, "sites", positions, (len(numbers), 3))
    if periodic:
        return AtomicSystem.from_arrays(numbers_array, positions, _cell(index, cell), [True, True, True])
    return AtomicSystem.from_arrays(numbers_array, positions, None, [False, False, False])


def _from_text(index: int, data: dict[str, Any]) -> AtomicSystem:
    name, text = data.get("format"), data.get("text")
    if not isinstance(name, str) or name not in TEXT_FORMATS:  # a list or object is no format (and unhashable)
        raise StructureError(
            index,
            ErrorCode.MALFORMED_STRUCTURE,
            f"unknown format {name!r}; use one of {', '.join(sorted(TEXT_FORMATS))}",
        )
    if not isinstance(text, str) or not text.strip():
        raise StructureError(index, ErrorCode.MALFORMED_STRUCTURE, "'text' must be a non-empty string")
    try:
        frames = read_frames(text, name)
    except ValueError as error:
        raise StructureError(index, ErrorCode.UNPARSABLE_TEXT, f"could not read the {name} text: {error}") from None
    if len(frames) != 1:
        raise StructureError(
            index, ErrorCode.UNPARSABLE_TEXT, f"the {name} text holds {len(frames)} structures; send one per entry"
        )
    return AtomicSystem.from_ase(frames[0])


def read_frames(text: str, name: str) -> list[Any]:
    """Every structure in ``text`` (a file in format ``name``, see :data:`TEXT_FORMATS`) as ase.Atoms.

    ase's readers raise many kinds of errors on bad text; every one becomes a ValueError saying what went wrong.
    """
    from ase.io import read

    if TEXT_FORMATS[name] == "extxyz":
        _check_xyz_atom_counts(text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = read(io.StringIO(text), index=":", format=TEXT_FORMATS[name])
    except Exception as error:
        raise ValueError(str(error) or f"{type(error).__name__} in ase's {TEXT_FORMATS[name]} reader") from None
    return frames if isinstance(frames, list) else [frames]


def _check_xyz_atom_counts(text: str) -> None:
    """Raise ValueError when a frame of (ext)xyz ``text`` declares more atoms than the text has lines left.

    ase's reader skips a frame's lines one by one, so a count line of 10^11 in a small text would keep it busy
    for minutes; this walk over the frames' count lines costs one pass over the text. Frames end, as in ase, at
    the first blank line where a count is expected; a count line that is no integer is left for ase to refuse.
    """
    lines = text.splitlines()
    start = 0
    while start < len(lines) and lines[start].strip():
        try:
            n_atoms = int(lines[start])
        except ValueError:
            return
        if n_atoms < 0 or start + 2 + n_atoms > len(lines):
            raise ValueError(
                f"line {start + 1} declares {n_atoms} atoms, but the text has {len(lines) - start - 2} lines for them"
            )
        start += 2 + n_atoms


def extxyz_first_frame_problem(text: str) -> str | None:
    """Why ``text`` cannot be extxyz, judged from its first frame only (cheap); None when the first frame reads."""
    lines = text.split("\n", 1)
    try:
        n_atoms = int(lines[0].strip())
        if n_atoms < 0:
            raise ValueError
    except ValueError:
        return f"the first line must be the number of atoms of the first frame, got {lines[0].strip()[:80]!r}"
    head = "\n".join(text.split("\n", n_atoms + 2)[: n_atoms + 2])
    try:
        frames = read_frames(head, "extxyz")
    except ValueError as error:
        return f"the first frame: {error}"
    return None if len(frames) == 1 else "the first frame could not be read"
