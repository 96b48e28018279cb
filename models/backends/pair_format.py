"""The parameter file of a `pair` model: which analytic pair potential, and its parameters for each element pair.

A pair potential has no weights, only a handful of numbers; they live in a small YAML file that is the card's
``checkpoint``, hash-checked like any other checkpoint, so a card names its model exactly and the rest of the
server (model directory, ``sha256``, ``/v1/models``) treats it like every other family. Hand-written because the
format is ours: a mapping read with PyYAML and checked key by key.

Two potentials, with ASE's parameter names, defaults and cutoff conventions::

    potential: lennard-jones      # ase.calculators.lj.LennardJones
    epsilon: 0.0104               # eV (required)
    sigma: 3.40                   # Å (required)
    rc: 8.5                       # Å, default 3 sigma; the pair energy is shifted to zero at rc ...
    ro: 5.6                       # Å, default 0.66 rc
    smooth: false                 # ... or, with smooth: true, multiplied by ASE's cutoff function from ro to rc

    potential: morse              # ase.calculators.morse.MorsePotential
    epsilon: 0.3429               # eV (required)
    r0: 2.866                     # Å (required)
    rho0: 4.19                    # dimensionless (required)
    rcut1: 1.9                    # where the smooth cutoff starts, in units of r0 (default 1.9)
    rcut2: 2.7                    # where it ends, in units of r0 (default 2.7)

Several elements: top-level parameters hold for every pair; ``elements`` gives parameters per element and
``pairs`` per element pair (``Ar-Kr``), which win over the element and top-level ones. Like pairs (Ar-Ar) take
their element's parameters. Unlike pairs take, in this order: the pair's own entry; for Lennard-Jones, the
Lorentz-Berthelot mix of the two elements' ``sigma`` (arithmetic mean) and ``epsilon`` (geometric mean); the
top-level value. Morse has no standard mixing rule, so its unlike pairs need a ``pairs`` entry or top-level values.
``rc``/``ro`` defaults follow each pair's own ``sigma`` (ASE's ``3 sigma`` and ``0.66 rc``). ``smooth`` is one
setting for the whole model. With ``elements`` or ``pairs`` the model covers the elements they name; without
them, every element of its card.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase.data import atomic_numbers

LENNARD_JONES, MORSE = "lennard-jones", "morse"

#: Per pair parameters of each potential: the required ones, and the optional ones with ASE's defaults
#: (None: derived from the others, see :func:`_complete`).
REQUIRED = {LENNARD_JONES: ("epsilon", "sigma"), MORSE: ("epsilon", "r0", "rho0")}
OPTIONAL: dict[str, dict[str, float | None]] = {
    LENNARD_JONES: {"rc": None, "ro": None},
    MORSE: {"rcut1": 1.9, "rcut2": 2.7},
}
#: Model-wide settings (not per pair).
SETTINGS = {LENNARD_JONES: ("smooth",), MORSE: ()}
TABLES = ("elements", "pairs")


class PairFormatError(ValueError):
    """The parameter file is malformed, names an unknown potential or parameter, or leaves a pair without one."""


@dataclass(frozen=True)
class PairParameters:
    """A pair potential's parameters as (S, S) tables over its elements (symmetric; species index = position)."""

    potential: str
    elements: tuple[str, ...]
    #: Parameter name -> (S, S) float64 table.
    tables: dict[str, np.ndarray]
    smooth: bool = False

    @property
    def cutoff(self) -> float:
        """The largest distance (Å) at which any pair interacts."""
        if self.potential == LENNARD_JONES:
            return float(self.tables["rc"].max())
        return float((self.tables["rcut2"] * self.tables["r0"]).max())


def read_parameters(path: Path, card_elements: tuple[str, ...]) -> PairParameters:
    """Read the parameter file ``path``; ``card_elements`` are the elements covered when it names none."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise PairFormatError(f"{Path(path).name} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise PairFormatError(f"{Path(path).name} is not a YAML mapping of pair-potential parameters")
    return parse_parameters(data, card_elements)


def parse_parameters(data: dict[str, Any], card_elements: tuple[str, ...]) -> PairParameters:
    """The :class:`PairParameters` of a parameter file's mapping (see the module docstring)."""
    potential = data.get("potential")
    if potential not in REQUIRED:
        raise PairFormatError(f"potential {potential!r} is not served by the pair family; it serves {sorted(REQUIRED)}")
    per_pair = (*REQUIRED[potential], *OPTIONAL[potential])
    allowed = {"potential", *per_pair, *SETTINGS[potential], *TABLES}
    _check_keys(data, allowed, f"a {potential} parameter file")
    top = {key: _number(key, data[key]) for key in per_pair if key in data}
    elements_table = _elements_table(data.get("elements") or {}, per_pair)
    pairs_table = _pairs_table(data.get("pairs") or {}, per_pair)
    named = set(elements_table) | {symbol for pair in pairs_table for symbol in pair}
    elements = tuple(sorted(named, key=atomic_numbers.__getitem__)) if named else tuple(card_elements)
    smooth = data.get("smooth", False)
    if not isinstance(smooth, bool):
        raise PairFormatError(f"smooth must be true or false, not {smooth!r}")
    size = len(elements)
    tables = {key: np.zeros((size, size)) for key in per_pair}
    for (a, first), (b, second) in itertools.combinations_with_replacement(enumerate(elements), 2):
        values = _pair_values(potential, first, second, top, elements_table, pairs_table)
        for key, value in values.items():
            tables[key][a, b] = tables[key][b, a] = value
    return PairParameters(potential, elements, tables, smooth)


def _pair_values(
    potential: str,
    first: str,
    second: str,
    top: dict[str, float],
    elements_table: dict[str, dict[str, float]],
    pairs_table: dict[frozenset[str], dict[str, float]],
) -> dict[str, float]:
    """Every per-pair parameter of the pair ``first``-``second``, resolved as the module docstring says."""
    own = pairs_table.get(frozenset((first, second)), {})
    values: dict[str, float] = {}
    for key in (*REQUIRED[potential], *OPTIONAL[potential]):
        value = own.get(key)
        if value is None and first == second:
            value = elements_table.get(first, {}).get(key)
        elif value is None:
            value = _mixed(potential, key, elements_table.get(first, {}), elements_table.get(second, {}))
        if value is None:
            value = top.get(key)
        if value is not None:
            values[key] = value
    return _complete(potential, f"{first}-{second}", values)


def _mixed(potential: str, key: str, first: dict[str, float], second: dict[str, float]) -> float | None:
    """Lorentz-Berthelot mixing of Lennard-Jones ``sigma`` and ``epsilon``; None for anything else."""
    if potential != LENNARD_JONES or key not in first or key not in second:
        return None
    if key == "sigma":
        return 0.5 * (first[key] + second[key])
    if key == "epsilon":
        return math.sqrt(first[key] * second[key])
    return None


def _complete(potential: str, pair: str, values: dict[str, float]) -> dict[str, float]:
    """Refuse a missing required parameter, fill the optional ones with ASE's defaults, and check ranges."""
    missing = [key for key in REQUIRED[potential] if key not in values]
    if missing:
        raise PairFormatError(
            f"pair {pair} has no {', '.join(missing)} (give it at the top level, per element or per pair)"
        )
    for key, default in OPTIONAL[potential].items():
        if key not in values and default is not None:
            values[key] = default
    if potential == LENNARD_JONES:
        values.setdefault("rc", 3 * values["sigma"])  # ASE: rc = 3 sigma
        values.setdefault("ro", 0.66 * values["rc"])  # ASE: ro = 0.66 rc
        positive = ("sigma", "rc")
    else:
        positive = ("r0", "rcut2")
        if values["rcut1"] >= values["rcut2"]:
            raise PairFormatError(f"pair {pair}: rcut1 ({values['rcut1']}) must be below rcut2 ({values['rcut2']})")
    bad = [key for key in positive if values[key] <= 0]
    if bad:
        raise PairFormatError(f"pair {pair}: {', '.join(bad)} must be positive")
    return values


def _elements_table(table: Any, keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    if not isinstance(table, dict):
        raise PairFormatError("elements must map element symbols to their parameters")
    return {_symbol(symbol): _entry(f"elements.{symbol}", entry, keys) for symbol, entry in table.items()}


def _pairs_table(table: Any, keys: tuple[str, ...]) -> dict[frozenset[str], dict[str, float]]:
    if not isinstance(table, dict):
        raise PairFormatError("pairs must map element pairs (e.g. Ar-Kr) to their parameters")
    pairs: dict[frozenset[str], dict[str, float]] = {}
    for name, entry in table.items():
        symbols = str(name).split("-")
        if len(symbols) != 2:
            raise PairFormatError(f"pairs: {name!r} is not an element pair such as Ar-Kr")
        pair = frozenset(_symbol(symbol) for symbol in symbols)
        if pair in pairs:
            raise PairFormatError(f"pairs: {name!r} is given twice")
        pairs[pair] = _entry(f"pairs.{name}", entry, keys)
    return pairs


def _entry(where: str, entry: Any, keys: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(entry, dict):
        raise PairFormatError(f"{where} must be a mapping of parameters")
    _check_keys(entry, set(keys), where)
    return {key: _number(f"{where}.{key}", value) for key, value in entry.items()}


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise PairFormatError(f"{where} has unknown keys {unknown}; known: {sorted(allowed)}")


def _symbol(symbol: Any) -> str:
    if symbol not in atomic_numbers:
        raise PairFormatError(f"{symbol!r} is not an element symbol")
    return str(symbol)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PairFormatError(f"{key} must be a finite number, not {value!r}")
    return float(value)
