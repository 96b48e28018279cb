"""Readers for n2p2 / RuNNer Behler–Parrinello potentials: ``input.nn``, ``scaling.data``, ``weights.ZZZ.data``.

``input.nn`` holds the keywords (one per line, ``#`` starts a comment, some keywords repeat); this module reads those
that change a prediction and refuses, by name, the ones it does not implement rather than ignore them. Facts follow
n2p2's ``libnnp`` (CompPhysVienna/n2p2, read, not copied):

* elements are indexed in order of atomic number (``ElementMap``), whatever their order in ``elements``;
* each element's symmetry functions are sorted as n2p2 sorts them (``Element::sortSymmetryFunctions``: by type,
  cutoff radius, eta, rs, then zeta, lambda and neighbour elements), and that order is the order of the network's
  inputs and of the rows of ``scaling.data`` (e_index and sf_index 1-based);
* a ``weights.ZZZ.data`` file lists, layer by layer, the weights ``w[prev, next]`` (previous neuron outer, next
  neuron inner) and then the biases of that layer; only its first column is read.

Supported: symmetry functions of type 2 (radial), 3 (narrow angular) and 9 (wide angular) with the optional shift
rs; cutoff types 0-8 with the inner-cutoff parameter alpha; the scaling keywords; ``mean_energy`` / ``conv_energy``
/ ``conv_length`` normalisation; ``atom_energy``; global hidden layers, nodes and activations (all ten of n2p2's
activation letters); ``normalize_nodes``. Refused by name: 4G / Q HDNNPs (``nnp_type``), the weighted (12, 13) and
polynomial (20-25) symmetry functions, per-element topologies (``element_*_short``) and RuNNer's
``global_symfunction_short`` / ``element_symfunction_short`` shorthands.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

#: n2p2's cutoff function types (``CutoffFunction::CutoffType``), by number.
CUTOFF_TYPES = {0: "hard", 1: "cos", 2: "tanhu", 3: "tanh", 4: "exp", 5: "poly1", 6: "poly2", 7: "poly3", 8: "poly4"}
#: n2p2's activation letters (``activationFromString``).
ACTIVATIONS = {
    "l": "identity",
    "t": "tanh",
    "s": "logistic",
    "p": "softplus",
    "r": "relu",
    "g": "gaussian",
    "c": "cos",
    "S": "reverse logistic",
    "e": "exp",
    "h": "harmonic",
}
RADIAL, NARROW, WIDE = 2, 3, 9
#: Symmetry function types n2p2 defines that this reader refuses, with their names.
UNSUPPORTED_TYPES = {
    12: "weighted radial",
    13: "weighted narrow angular",
    20: "polynomial radial",
    21: "polynomial narrow angular",
    22: "polynomial wide angular",
    23: "weighted polynomial radial",
    24: "weighted polynomial narrow angular",
    25: "weighted polynomial wide angular",
}
#: Keywords that change a prediction and are not implemented, with why.
REFUSED_KEYWORDS = {
    "element_hidden_layers_short": "per-element network topologies are not supported",
    "element_nodes_short": "per-element network topologies are not supported",
    "element_activation_short": "per-element network topologies are not supported",
    "global_symfunction_short": "RuNNer's shorthand for symmetry functions is not supported; list symfunction_short",
    "element_symfunction_short": "RuNNer's shorthand for symmetry functions is not supported; list symfunction_short",
}
SCALINGS = ("none", "scale", "center", "scalecenter", "scalesigma")


class HDNNPFormatError(ValueError):
    """An n2p2 file is malformed or uses a feature this reader does not support."""


@dataclass(frozen=True)
class SymmetryFunction:
    """One ``symfunction_short`` line, in the file's length unit; angular neighbours ordered by atomic number."""

    kind: int  # RADIAL, NARROW or WIDE
    neighbours: tuple[str, ...]  # (e1,) or (e1, e2)
    eta: float
    rs: float
    rc: float
    lambda_: float = 0.0
    zeta: float = 0.0

    def sort_key(self) -> tuple:
        """n2p2's order within one central element (``SymFncExpRad/Angn/Angw::operator<``)."""
        elements = tuple(atomic_numbers[e] for e in self.neighbours)
        if self.kind == RADIAL:
            return (self.kind, self.rc, self.eta, self.rs, *elements)
        return (self.kind, self.rc, self.eta, self.rs, self.zeta, self.lambda_, *elements)


@dataclass(frozen=True)
class Normalisation:
    """n2p2's data-set normalisation: physical energy = network energy / conv_energy + mean_energy per atom."""

    mean_energy: float
    conv_energy: float
    conv_length: float


@dataclass(frozen=True)
class Settings:
    """What ``input.nn`` says about prediction; elements in n2p2's order (by atomic number)."""

    elements: tuple[str, ...]
    cutoff_type: int
    cutoff_alpha: float
    scaling: str  # one of SCALINGS
    scale_min: float
    scale_max: float
    normalisation: Normalisation | None
    atom_energy: dict[str, float]
    hidden_nodes: tuple[int, ...]
    activations: tuple[str, ...]  # one letter per hidden layer, then the output layer's
    normalize_nodes: bool
    symmetry_functions: dict[str, tuple[SymmetryFunction, ...]]  # per central element, in n2p2's order

    @property
    def cutoff(self) -> float:
        """The largest symmetry function cutoff, in the file's length unit."""
        return max(sf.rc for functions in self.symmetry_functions.values() for sf in functions)


@dataclass(frozen=True)
class Layer:
    """One network layer: ``activation(x @ weights + bias)``."""

    weights: np.ndarray  # (n_in, n_out)
    bias: np.ndarray  # (n_out,)
    activation: str  # n2p2's letter


@dataclass(frozen=True)
class HDNNPModel:
    """A whole potential: settings, per-element scaling statistics and networks."""

    settings: Settings
    #: per element, (n_sf, 4): min, max, mean, sigma of each symmetry function (sigma NaN when the file has none)
    scaling: dict[str, np.ndarray]
    networks: dict[str, tuple[Layer, ...]]


def _keywords(path: Path) -> dict[str, list[tuple[int, str]]]:
    """Every keyword of ``path`` with its (line number, value) occurrences, comments removed."""
    found: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        words = raw.split("#", 1)[0].split(maxsplit=1)
        if words:
            found[words[0]].append((number, words[1].strip() if len(words) > 1 else ""))
    return found


def read_settings(path: Path) -> Settings:
    """Read an n2p2 ``input.nn``; raise :class:`HDNNPFormatError` for what cannot be served faithfully."""
    keywords = _keywords(path)
    for keyword, why in REFUSED_KEYWORDS.items():
        if keyword in keywords:
            raise HDNNPFormatError(f"{path.name}: keyword {keyword!r}: {why}")
    nnp_type = _single(keywords, "nnp_type", "2G-HDNNP")
    if nnp_type not in ("2G-HDNNP", "0"):
        raise HDNNPFormatError(
            f"{path.name}: nnp_type {nnp_type!r} is not supported (only short-range 2G-HDNNPs; 4G-HDNNP and Q-HDNNP "
            "charge networks and electrostatics are not implemented)"
        )
    listed = _single(keywords, "elements").split()
    unknown = [symbol for symbol in listed if symbol not in atomic_numbers]
    if unknown or not listed or len(set(listed)) != len(listed):
        raise HDNNPFormatError(f"{path.name}: elements {listed} must be distinct chemical symbols")
    elements = tuple(sorted(listed, key=atomic_numbers.__getitem__))
    count = _single(keywords, "number_of_elements", str(len(elements)))
    if _integer(path, "number_of_elements", count) != len(elements):
        raise HDNNPFormatError(f"{path.name}: number_of_elements {count} but elements lists {len(elements)}")
    cutoff_words = _single(keywords, "cutoff_type").split()
    cutoff_type = _integer(path, "cutoff_type", cutoff_words[0])
    if cutoff_type not in CUTOFF_TYPES:
        raise HDNNPFormatError(f"{path.name}: cutoff_type {cutoff_type} is not one of n2p2's {sorted(CUTOFF_TYPES)}")
    alpha = _number(path, "cutoff_type", cutoff_words[1]) if len(cutoff_words) > 1 else 0.0
    if not 0.0 <= alpha < 1.0:
        raise HDNNPFormatError(f"{path.name}: the cutoff parameter alpha must lie in [0, 1), got {alpha}")
    hidden_layers = _integer(path, "global_hidden_layers_short", _single(keywords, "global_hidden_layers_short"))
    nodes = tuple(_integer(path, "global_nodes_short", w) for w in _single(keywords, "global_nodes_short").split())
    activations = tuple(_single(keywords, "global_activation_short").split())
    if len(nodes) != hidden_layers or len(activations) != hidden_layers + 1:
        raise HDNNPFormatError(
            f"{path.name}: {hidden_layers} hidden layers need as many global_nodes_short ({len(nodes)} given) and "
            f"one more global_activation_short ({len(activations)} given)"
        )
    for letter in activations:
        if letter not in ACTIVATIONS:
            raise HDNNPFormatError(f"{path.name}: activation {letter!r} is not one of n2p2's {sorted(ACTIVATIONS)}")
    return Settings(
        elements=elements,
        cutoff_type=cutoff_type,
        cutoff_alpha=alpha,
        scaling=_scaling(keywords),
        scale_min=_number(path, "scale_min_short", _single(keywords, "scale_min_short", "0.0")),
        scale_max=_number(path, "scale_max_short", _single(keywords, "scale_max_short", "1.0")),
        normalisation=_normalisation(path, keywords),
        atom_energy=_atom_energies(path, keywords, elements),
        hidden_nodes=nodes,
        activations=activations,
        normalize_nodes="normalize_nodes" in keywords,
        symmetry_functions=_symmetry_functions(path, keywords, elements),
    )


def _single(keywords: dict[str, list[tuple[int, str]]], keyword: str, default: str | None = None) -> str:
    occurrences = keywords.get(keyword, [])
    if len(occurrences) > 1:
        raise HDNNPFormatError(f"keyword {keyword!r} is given {len(occurrences)} times (lines "
                               f"{', '.join(str(n) for n, _ in occurrences)})")  # fmt: skip
    if occurrences:
        return occurrences[0][1]
    if default is None:
        raise HDNNPFormatError(f"keyword {keyword!r} is missing")
    return default


def _number(path: Path, keyword: str, text: str) -> float:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        raise HDNNPFormatError(f"{path.name}: {keyword}: {text!r} is not a number") from None


def _integer(path: Path, keyword: str, text: str) -> int:
    value = _number(path, keyword, text)
    if value != int(value):
        raise HDNNPFormatError(f"{path.name}: {keyword}: {text!r} is not an integer")
    return int(value)


def _scaling(keywords: dict) -> str:
    """n2p2's choice among the scaling keywords (``Mode::setupSymmetryFunctionScaling``)."""
    scale, center = "scale_symmetry_functions" in keywords, "center_symmetry_functions" in keywords
    if scale and center:
        return "scalecenter"
    if scale:
        return "scale"
    if center:
        return "center"
    return "scalesigma" if "scale_symmetry_functions_sigma" in keywords else "none"


def _normalisation(path: Path, keywords: dict) -> Normalisation | None:
    names = ("mean_energy", "conv_energy", "conv_length")
    present = [name for name in names if name in keywords]
    if not present:
        return None
    if len(present) != len(names):
        raise HDNNPFormatError(f"{path.name}: normalisation needs all of {names} or none, found only {present}")
    mean, energy, length = (_number(path, name, _single(keywords, name)) for name in names)
    return Normalisation(mean_energy=mean, conv_energy=energy, conv_length=length)


def _atom_energies(path: Path, keywords: dict, elements: tuple[str, ...]) -> dict[str, float]:
    energies = dict.fromkeys(elements, 0.0)
    for _, value in keywords.get("atom_energy", []):
        words = value.split()
        if len(words) < 2 or words[0] not in energies:
            raise HDNNPFormatError(f"{path.name}: atom_energy {value!r} does not name an element of the potential")
        energies[words[0]] = _number(path, "atom_energy", words[1])
    return energies


def _symmetry_functions(
    path: Path, keywords: dict, elements: tuple[str, ...]
) -> dict[str, tuple[SymmetryFunction, ...]]:
    functions: dict[str, list[SymmetryFunction]] = {element: [] for element in elements}
    for number, value in keywords.get("symfunction_short", []):
        words = value.split()
        where = f"{path.name} line {number}"
        try:
            kind = int(words[1])
        except (ValueError, IndexError):
            raise HDNNPFormatError(f"{where}: symfunction_short {value!r} has no type") from None
        if kind in UNSUPPORTED_TYPES:
            raise HDNNPFormatError(
                f"{where}: symmetry function type {kind} ({UNSUPPORTED_TYPES[kind]}) is not supported"
            )
        if kind not in (RADIAL, NARROW, WIDE):
            raise HDNNPFormatError(f"{where}: symmetry function type {kind} is not one of n2p2's")
        n_elements = 2 if kind == RADIAL else 3
        symbols, numbers = words[:1] + words[2 : 1 + n_elements], words[1 + n_elements :]
        if any(symbol not in functions for symbol in symbols):
            raise HDNNPFormatError(f"{where}: {value!r} names an element not in `elements` {list(elements)}")
        needed = 3 if kind == RADIAL else 4
        if len(numbers) < needed or (kind == RADIAL and len(numbers) > 3) or len(numbers) > 5:
            raise HDNNPFormatError(f"{where}: symfunction_short {value!r} has the wrong number of parameters")
        try:
            p = [float(word) for word in numbers]
        except ValueError:
            raise HDNNPFormatError(f"{where}: symfunction_short {value!r} has a parameter that is no number") from None
        if kind == RADIAL:
            sf = SymmetryFunction(kind, (symbols[1],), eta=p[0], rs=p[1], rc=p[2])
        else:
            pair = tuple(sorted(symbols[1:], key=atomic_numbers.__getitem__))
            rs = p[4] if len(p) > 4 else 0.0
            sf = SymmetryFunction(kind, pair, eta=p[0], rs=rs, rc=p[3], lambda_=p[1], zeta=p[2])
        if sf.rc <= 0:
            raise HDNNPFormatError(f"{where}: the cutoff radius must be positive")
        functions[symbols[0]].append(sf)
    empty = [element for element, listed in functions.items() if not listed]
    if empty:
        raise HDNNPFormatError(f"{path.name}: no symmetry functions for {empty}")
    return {element: tuple(sorted(listed, key=SymmetryFunction.sort_key)) for element, listed in functions.items()}


def read_scaling(path: Path, settings: Settings) -> dict[str, np.ndarray]:
    """Per element, the (n_sf, 4) min, max, mean and sigma rows of ``scaling.data`` (sigma NaN if absent)."""
    rows = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            values = [float(word) for word in words]
        except ValueError:
            raise HDNNPFormatError(f"{path.name} line {number}: {raw.strip()!r} is not a row of numbers") from None
        if len(values) not in (5, 6):
            raise HDNNPFormatError(f"{path.name} line {number}: expected 5 or 6 columns, found {len(values)}")
        rows.append((number, values + [float("nan")] * (6 - len(values))))
    scaling, start = {}, 0
    for index, element in enumerate(settings.elements):
        count = len(settings.symmetry_functions[element])
        block = rows[start : start + count]
        for offset, (number, values) in enumerate(block):
            if (int(values[0]), int(values[1])) != (index + 1, offset + 1):
                raise HDNNPFormatError(
                    f"{path.name} line {number}: expected element {index + 1} function {offset + 1}, found "
                    f"{int(values[0])} {int(values[1])}"
                )
        if len(block) != count:
            raise HDNNPFormatError(f"{path.name}: {element} has {count} symmetry functions but {len(block)} rows")
        scaling[element] = np.array([values[2:] for _, values in block])
        start += count
    if start != len(rows):
        raise HDNNPFormatError(f"{path.name}: {len(rows) - start} rows more than the potential's symmetry functions")
    return scaling


def read_weights(path: Path, settings: Settings, element: str) -> tuple[Layer, ...]:
    """The network of ``element`` from its ``weights.ZZZ.data`` (first column, n2p2's order)."""
    values = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            values.append(float(words[0]))
        except ValueError:
            raise HDNNPFormatError(f"{path.name} line {number}: {words[0]!r} is not a number") from None
    sizes = [len(settings.symmetry_functions[element]), *settings.hidden_nodes, 1]
    expected = sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(sizes))
    if len(values) != expected:
        raise HDNNPFormatError(
            f"{path.name}: {len(values)} connections, but the {element} network {'-'.join(map(str, sizes))} has "
            f"{expected}"
        )
    layers, position = [], 0
    for (n_in, n_out), activation in zip(itertools.pairwise(sizes), settings.activations, strict=True):
        weights = np.array(values[position : position + n_in * n_out]).reshape(n_in, n_out)
        position += n_in * n_out
        bias = np.array(values[position : position + n_out])
        position += n_out
        layers.append(Layer(weights, bias, activation))
    return tuple(layers)


def read_structures(path: Path) -> list[dict]:
    """Frames of an n2p2 ``input.data`` file: ``lattice`` (3, 3) or None, ``positions``, ``symbols``, ``energy``
    and ``forces`` (the reference values it stores), all in the file's units."""
    frames: list[dict] = []
    frame: dict = {}
    for raw in Path(path).read_text().splitlines():
        words = raw.split()
        if not words:
            continue
        if words[0] == "begin":
            frame = {"lattice": [], "positions": [], "symbols": [], "forces": [], "energy": None}
        elif words[0] == "lattice":
            frame["lattice"].append([float(w) for w in words[1:4]])
        elif words[0] == "atom":
            frame["positions"].append([float(w) for w in words[1:4]])
            frame["symbols"].append(words[4])
            frame["forces"].append([float(w) for w in words[7:10]])
        elif words[0] == "energy":
            frame["energy"] = float(words[1])
        elif words[0] == "end":
            frames.append(
                {
                    "lattice": np.array(frame["lattice"]) if frame["lattice"] else None,
                    "positions": np.array(frame["positions"]),
                    "symbols": frame["symbols"],
                    "forces": np.array(frame["forces"]),
                    "energy": frame["energy"],
                }
            )
    return frames
