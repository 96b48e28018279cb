"""Readers for LAMMPS SNAP potentials: ``.snapcoeff``, ``.snapparam`` and the ``.snap`` include file beside them.

* ``.snapcoeff``: ``nelements ncoeffall``, then per element a line ``symbol radius weight`` and ``ncoeffall``
  coefficients, one a line (``#`` starts a comment), as LAMMPS' ``pair_style snap`` reads it.
* ``.snapparam``: ``keyword value`` lines. Read: ``rcutfac`` and ``twojmax`` (required), ``rfac0``, ``rmin0``,
  ``switchflag``, ``bzeroflag``, ``quadraticflag``, ``chemflag``, ``bnormflag``, ``wselfallflag`` (LAMMPS' defaults
  where absent); ``chunksize`` and ``parallelthresh`` only tune LAMMPS' Kokkos kernels and are ignored. The inner
  switching function (``switchinnerflag 1``, ``sinner``, ``dinner``) is refused by name, as is any other keyword.
* the ``.snap`` include file (LAMMPS' recommended full definition, e.g. ``potentials/Ta06A.snap``): ``variable``
  (``index``, ``string`` or a plain number as ``equal``), ``pair_style snap`` or ``pair_style hybrid/overlay`` of
  ``zbl INNER OUTER`` and ``snap``, and ``pair_coeff`` lines, with ``&`` continuations and ``${name}`` references.
  Any other command, pair style or variable style is refused by name.

Hand-written: the formats are LAMMPS' own and tiny; LAMMPS itself is the reference in the tests only.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

#: LAMMPS' defaults for the optional keywords of a ``.snapparam`` file.
PARAMETER_DEFAULTS: dict[str, float] = {
    "rfac0": 0.99363,
    "rmin0": 0.0,
    "switchflag": 1,
    "bzeroflag": 1,
    "quadraticflag": 0,
    "chemflag": 0,
    "bnormflag": 0,
    "wselfallflag": 0,
}
_FLAGS = ("switchflag", "bzeroflag", "quadraticflag", "chemflag", "bnormflag", "wselfallflag")
_IGNORED = ("chunksize", "parallelthresh")  # performance knobs of LAMMPS' Kokkos kernels
_REFUSED = {
    "switchinnerflag": "the inner switching function (switchinnerflag 1)",
    "sinner": "the inner switching function (sinner)",
    "dinner": "the inner switching function (dinner)",
}
#: Pair styles a ``.snap`` include file may combine (``hybrid/overlay``), with their number of arguments.
PAIR_STYLES = {"snap": 0, "zbl": 2}


class SnapFormatError(ValueError):
    """A SNAP file is malformed or uses a feature this reader does not support."""


@dataclass(frozen=True)
class SnapParameters:
    """The hyper-parameters of a ``.snapparam`` file."""

    rcutfac: float
    twojmax: int
    rfac0: float = 0.99363
    rmin0: float = 0.0
    switchflag: bool = True
    bzeroflag: bool = True
    quadraticflag: bool = False
    chemflag: bool = False
    bnormflag: bool = False
    wselfallflag: bool = False


@dataclass(frozen=True)
class SnapElement:
    """One element block of a ``.snapcoeff`` file: its radius, neighbour weight and coefficients."""

    symbol: str
    radius: float
    weight: float
    coefficients: np.ndarray  # (ncoeffall,) float64: constant, linear, then (quadratic) upper triangle row by row


@dataclass(frozen=True)
class Zbl:
    """LAMMPS' ``pair_style zbl INNER OUTER`` with the nuclear charges of each element pair it was given."""

    inner: float
    outer: float
    #: (symbol_i, symbol_j) -> (Z_i, Z_j), both orders; pairs absent here get no ZBL term (hybrid/overlay).
    charges: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PairInclude:
    """What a ``.snap`` include file defines: the SNAP files and element order, and an optional ZBL term."""

    snapcoeff: str
    snapparam: str
    elements: tuple[str, ...]  # LAMMPS atom type 1, 2, ... in order
    zbl: Zbl | None = None


@dataclass(frozen=True)
class SnapModel:
    """A SNAP potential as LAMMPS would run it: parameters, element blocks in atom-type order, optional ZBL."""

    parameters: SnapParameters
    elements: tuple[SnapElement, ...]
    zbl: Zbl | None = None


def read_model(coefficients: Path, parameters: Path, include: Path | None = None) -> SnapModel:
    """Read a ``.snapcoeff`` and ``.snapparam`` pair and, if given, the include file that names both.

    The element order (LAMMPS' atom types, which index ``chemflag``'s element channels) is the include file's
    ``pair_coeff * * snap`` order, else the ``.snapcoeff`` file's.
    """
    blocks, settings = read_coefficients(coefficients), read_parameters(parameters)
    order, zbl = tuple(block.symbol for block in blocks), None
    if include is not None:
        definition = read_pair_include(include)
        named = (Path(definition.snapcoeff).name, Path(definition.snapparam).name)
        if named != (Path(coefficients).name, Path(parameters).name):
            raise SnapFormatError(
                f"{Path(include).name}: its snap pair_coeff names {named[0]} and {named[1]}, not "
                f"{Path(coefficients).name} and {Path(parameters).name}"
            )
        order, zbl = definition.elements, definition.zbl
    by_symbol = {block.symbol: block for block in blocks}
    missing = [symbol for symbol in order if symbol not in by_symbol]
    if missing:
        raise SnapFormatError(f"elements {missing} are not in {Path(coefficients).name} ({sorted(by_symbol)})")
    if len(set(order)) != len(order):
        raise SnapFormatError(f"an element is mapped to two atom types: {list(order)}")
    if settings.chemflag and set(order) != set(by_symbol):
        raise SnapFormatError(f"chemflag 1 needs every element of {Path(coefficients).name}: {sorted(by_symbol)}")
    return SnapModel(settings, tuple(by_symbol[symbol] for symbol in order), zbl)


def _words(line: str) -> list[str]:
    """The words of a line without its comment (LAMMPS strips quotes from words too)."""
    return [word.strip("'\"") for word in line.split("#", 1)[0].split()]


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SnapFormatError(f"{what}: {text!r} is not a number") from None


def read_parameters(path: Path) -> SnapParameters:
    """Read a ``.snapparam`` file."""
    values: dict[str, float] = dict(PARAMETER_DEFAULTS)
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        words = _words(line)
        if not words:
            continue
        keyword = words[0]
        if keyword in _REFUSED:
            if keyword == "switchinnerflag" and len(words) == 2 and _number(words[1], keyword) == 0:
                continue
            raise SnapFormatError(f"{path.name}: {_REFUSED[keyword]} is not supported (line {number})")
        if len(words) != 2:
            raise SnapFormatError(f"{path.name}, line {number}: expected 'keyword value', got {line.strip()!r}")
        if keyword in _IGNORED:
            continue
        if keyword not in PARAMETER_DEFAULTS and keyword not in ("rcutfac", "twojmax"):
            raise SnapFormatError(f"{path.name}: unknown SNAP parameter {keyword!r} (line {number})")
        values[keyword] = _number(words[1], f"{path.name}, {keyword}")
    missing = [key for key in ("rcutfac", "twojmax") if key not in values]
    if missing:
        raise SnapFormatError(f"{path.name}: required SNAP parameter(s) {missing} missing")
    twojmax = values["twojmax"]
    if twojmax != int(twojmax) or twojmax < 0:
        raise SnapFormatError(f"{path.name}: twojmax must be a non-negative integer, got {twojmax}")
    for flag in _FLAGS:
        if values[flag] not in (0, 1):
            raise SnapFormatError(f"{path.name}: {flag} must be 0 or 1, got {values[flag]}")
    return SnapParameters(
        rcutfac=values["rcutfac"],
        twojmax=int(twojmax),
        rfac0=values["rfac0"],
        rmin0=values["rmin0"],
        **{flag: bool(values[flag]) for flag in _FLAGS},
    )


def read_coefficients(path: Path) -> tuple[SnapElement, ...]:
    """Read a ``.snapcoeff`` file: one :class:`SnapElement` per element block, in the file's order."""
    lines = [words for words in (_words(line) for line in Path(path).read_text().splitlines()) if words]
    if not lines or len(lines[0]) != 2:
        raise SnapFormatError(f"{path.name}: the first line must be 'nelements ncoeffall'")
    try:
        n_elements, n_coefficients = int(lines[0][0]), int(lines[0][1])
    except ValueError:
        raise SnapFormatError(f"{path.name}: the first line must be 'nelements ncoeffall'") from None
    if len(lines) != 1 + n_elements * (1 + n_coefficients):
        raise SnapFormatError(
            f"{path.name}: expected {n_elements} element blocks of 1 + {n_coefficients} lines, "
            f"found {len(lines) - 1} lines"
        )
    elements = []
    for block in range(n_elements):
        start = 1 + block * (1 + n_coefficients)
        header = lines[start]
        if len(header) != 3:
            raise SnapFormatError(f"{path.name}: element line must be 'symbol radius weight', got {header}")
        symbol = header[0]
        if symbol not in atomic_numbers:
            raise SnapFormatError(f"{path.name}: {symbol!r} is not a chemical element")
        rows = lines[start + 1 : start + 1 + n_coefficients]
        if any(len(row) != 1 for row in rows):
            raise SnapFormatError(f"{path.name}: element {symbol}: one coefficient per line expected")
        coefficients = np.array([_number(row[0], f"{path.name}, {symbol}") for row in rows], dtype=np.float64)
        radius = _number(header[1], f"{path.name}, {symbol} radius")
        weight = _number(header[2], f"{path.name}, {symbol} weight")
        elements.append(SnapElement(symbol, radius, weight, coefficients))
    symbols = [element.symbol for element in elements]
    if len(set(symbols)) != len(symbols):
        raise SnapFormatError(f"{path.name}: an element is listed twice: {symbols}")
    return tuple(elements)


# -- the .snap include file -------------------------------------------------------------------------------------


def _commands(text: str) -> list[list[str]]:
    """Commands of a LAMMPS input: comments stripped, ``&`` continuations joined, split into words."""
    commands, pending = [], ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if line.endswith("&"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip():
            commands.append(line)
    if pending.strip():
        commands.append(pending)
    return [shlex.split(command) for command in commands]


def _substitute(word: str, variables: dict[str, str], name: str) -> str:
    """Replace ``${var}`` and ``$x`` references; immediate expressions ``$(...)`` are refused."""
    if "$(" in word:
        raise SnapFormatError(f"{name}: immediate variables $(...) are not supported ({word!r})")

    def value(match: re.Match[str]) -> str:
        key = match.group(1) or match.group(2)
        if key not in variables:
            raise SnapFormatError(f"{name}: variable {key!r} is used before it is defined")
        return variables[key]

    return re.sub(r"\$\{(\w+)\}|\$(\w)", value, word)


def _types(text: str, n_types: int, name: str) -> range:
    """The atom types of a LAMMPS type range (``2``, ``*``, ``1*3``, ``*2``, ``2*``)."""
    try:
        if "*" not in text:
            low = high = int(text)
        else:
            left, right = text.split("*", 1)
            low, high = int(left or 1), int(right or n_types)
    except ValueError:
        raise SnapFormatError(f"{name}: {text!r} is not an atom type range") from None
    if not 1 <= low <= high <= n_types:
        raise SnapFormatError(f"{name}: atom types {text!r} outside 1..{n_types}")
    return range(low, high + 1)


def read_pair_include(path: Path) -> PairInclude:
    """Read a ``.snap`` include file (``pair_style``/``pair_coeff`` of SNAP, optionally overlaid with ZBL)."""
    name = Path(path).name
    variables: dict[str, str] = {}
    styles: list[str] | None = None
    zbl_cutoffs: tuple[float, float] | None = None
    snap_line: list[str] | None = None
    zbl_lines: list[list[str]] = []
    for words in _commands(Path(path).read_text()):
        command = words[0]
        if command == "variable":
            if len(words) < 4:
                raise SnapFormatError(f"{name}: malformed variable command {' '.join(words)!r}")
            style = words[2]
            value = _substitute(words[3], variables, name)
            if style == "equal":
                _number(value, f"{name}: variable {words[1]} (only a plain number is supported as 'equal')")
            elif style not in ("index", "string"):
                raise SnapFormatError(f"{name}: variable style {style!r} is not supported (index, string, equal)")
            variables.setdefault(words[1], value)  # LAMMPS ignores the redefinition of index variables
            continue
        words = [words[0]] + [_substitute(word, variables, name) for word in words[1:]]
        if command == "pair_style":
            styles, zbl_cutoffs = _pair_styles(words[1:], name)
        elif command == "pair_coeff":
            if styles is None:
                raise SnapFormatError(f"{name}: pair_coeff before pair_style")
            arguments = words[3:]
            style = "snap" if styles == ["snap"] else (arguments[0] if arguments else "")
            if len(styles) > 1:
                arguments = arguments[1:]
            if style not in styles:
                raise SnapFormatError(f"{name}: pair_coeff for pair style {style!r}, which pair_style does not name")
            if style == "snap":
                if words[1:3] != ["*", "*"] or len(arguments) < 3:
                    raise SnapFormatError(f"{name}: the snap pair_coeff must read '* * COEFF PARAM ELEMENTS...'")
                snap_line = arguments
            else:
                if len(arguments) != 2:
                    raise SnapFormatError(f"{name}: a zbl pair_coeff needs I J Z_I Z_J")
                zbl_lines.append(words[1:3] + arguments)
        else:
            raise SnapFormatError(
                f"{name}: command {command!r} is not supported (a SNAP include file may hold only variable, "
                "pair_style and pair_coeff)"
            )
    if snap_line is None:
        raise SnapFormatError(f"{name}: no 'pair_coeff * * snap ...' line")
    elements = tuple(snap_line[2:])
    for symbol in elements:
        if symbol not in atomic_numbers:
            raise SnapFormatError(f"{name}: {symbol!r} in the snap pair_coeff is not a chemical element")
    zbl = None
    if zbl_cutoffs is not None:
        charges: dict[tuple[str, str], tuple[float, float]] = {}
        for type_i, type_j, z_i, z_j in zbl_lines:
            charge_i, charge_j = _number(z_i, f"{name}: zbl Z"), _number(z_j, f"{name}: zbl Z")
            columns = _types(type_j, len(elements), name)
            pairs = [(i, j) for i in _types(type_i, len(elements), name) for j in columns if j >= i]
            if not pairs:  # as LAMMPS: only pairs I <= J are set
                raise SnapFormatError(f"{name}: zbl pair_coeff {type_i} {type_j} sets no pair I <= J")
            for i, j in pairs:
                if i == j and charge_i != charge_j:
                    raise SnapFormatError(f"{name}: zbl pair_coeff {i} {i} needs Z_I = Z_J")
                pair = (elements[i - 1], elements[j - 1])
                charges[pair] = (charge_i, charge_j)
                charges[pair[::-1]] = (charge_j, charge_i)
        zbl = Zbl(*zbl_cutoffs, charges=charges)
    return PairInclude(snapcoeff=snap_line[0], snapparam=snap_line[1], elements=elements, zbl=zbl)


def _pair_styles(arguments: list[str], name: str) -> tuple[list[str], tuple[float, float] | None]:
    """The sub-styles of a ``pair_style`` command and ZBL's (inner, outer) cutoffs if it has one."""
    if arguments == ["snap"]:
        return ["snap"], None
    if not arguments or arguments[0] != "hybrid/overlay":
        style = arguments[0] if arguments else ""
        raise SnapFormatError(
            f"{name}: pair style {style!r} is not supported (pair_style snap, or hybrid/overlay of "
            f"{' and '.join(PAIR_STYLES)})"
        )
    styles, cutoffs, rest = [], None, arguments[1:]
    while rest:
        style = rest.pop(0)
        if style not in PAIR_STYLES:
            raise SnapFormatError(f"{name}: pair style {style!r} is not supported (only {', '.join(PAIR_STYLES)})")
        if style in styles:
            raise SnapFormatError(f"{name}: pair style {style!r} is named twice")
        values = [_number(rest.pop(0), f"{name}: {style} argument") for _ in range(PAIR_STYLES[style]) if rest]
        if len(values) != PAIR_STYLES[style]:
            raise SnapFormatError(f"{name}: pair style {style} takes {PAIR_STYLES[style]} arguments")
        if style == "zbl":
            inner, outer = values
            if not 0 < inner <= outer or not math.isfinite(outer):
                raise SnapFormatError(f"{name}: zbl needs 0 < inner <= outer cutoff, got {inner} {outer}")
            cutoffs = (inner, outer)
        styles.append(style)
    if "snap" not in styles:
        raise SnapFormatError(f"{name}: pair_style hybrid/overlay without snap")
    return styles, cutoffs
