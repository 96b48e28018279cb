"""Readers for ACE potentials: pacemaker's B-basis ``.yaml``, the C-tilde ``.yace`` and LAMMPS pair tables.

Both potential formats are read into one form, :class:`AceModel`, which holds C-tilde basis functions: for every
function a list of m-combinations with one real coefficient per density, so that the density is
``rho_p = sum Re(ctilde[ms, p] * prod_t A[mu_t, n_t, l_t, m_t])``. A ``.yace`` file stores exactly that. A B-basis
``.yaml`` stores rotation-invariant functions (ls, intermediate couplings ``lint``, one coefficient per density);
they are expanded here with generalized Clebsch-Gordan coefficients over the same binary coupling tree pacemaker
uses (pairs of ``(l1 l2)``, then pairs of intermediate couplings, an odd leftover last), keeping the half of the
m-space whose first non-zero m is positive with its coefficient doubled, as pacemaker's own B -> C-tilde
conversion does. This is our own implementation: pacemaker is not a run-time dependency, and the tests check the
result against python-ace's evaluator.

Format facts follow ``../shared/fixtures/ace/FORMAT_AND_ALGORITHM.md``. Unsupported variants (legacy ``.ace``
text files, per-bond mixed inner-cutoff types, ACE.jl's embedded ``polypairpot``) raise :class:`AceFormatError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import yaml

RADIAL_BASES = ("ChebExpCos", "ChebPow", "ChebLinear", "SBessel", "ACE.jl.base")
EMBEDDINGS = ("FinnisSinclair", "FinnisSinclairShiftedScaled")
INNER_CUTOFF_TYPES = ("density", "distance", "zbl")


class AceFormatError(ValueError):
    """An ACE file is malformed or uses a variant this reader does not support."""


@dataclass(frozen=True)
class JuliaRadialBasis:
    """ACE.jl's radial basis: ``x = ((1+r0)/(1+r))^p``, envelope ``(x-xl)^pl (x-xr)^pr``, three-term recursion."""

    r0: float
    p: float
    xl: float
    xr: float
    pl: int
    pr: int
    a: tuple[float, ...]
    b: tuple[float, ...]
    c: tuple[float, ...]


@dataclass(frozen=True)
class Bond:
    """Radial basis, radial functions and core repulsion of one ordered species pair (centre, neighbour)."""

    radial_basis: str
    rcut: float
    dcut: float
    radparameter: float
    nradbase: int
    nradmax: int
    lmax: int
    #: crad[n][l][k] of ``R_nl = sum_k crad g_k``; None for ACE.jl, whose R_nl is its basis function P_n.
    crad: np.ndarray | None
    prehc: float = 0.0
    lambdahc: float = 1.0
    r_in: float = 0.0
    delta_in: float = 0.0
    julia: JuliaRadialBasis | None = None


@dataclass(frozen=True)
class Embedding:
    """Embedding of one central species: ``E = sum_p w_p F(rho_p; m_p)`` and the core-energy cutoff."""

    npoti: str
    fs_parameters: tuple[float, ...]  # (w_1, m_1, w_2, m_2, ...)
    rho_core_cutoff: float = 100000.0
    drho_core_cutoff: float = 250.0

    @property
    def ndensity(self) -> int:
        return len(self.fs_parameters) // 2


@dataclass(frozen=True)
class CTildeFunction:
    """One C-tilde function centred on species ``mu0``: neighbour species, 1-based ns, ls, m-combinations."""

    mu0: int
    mus: tuple[int, ...]
    ns: tuple[int, ...]
    ls: tuple[int, ...]
    ms: np.ndarray  # (num_ms_combs, rank) int
    ctildes: np.ndarray  # (num_ms_combs, ndensity) float
    #: (num_ms_combs,) the generalized Clebsch-Gordan coefficients of a B-basis function (``ctildes`` = gen_cgs ⊗
    #: its coefficients), for its B-projection (ace_gamma.py); None when read from a ``.yace`` file.
    gen_cgs: np.ndarray | None = None

    @property
    def rank(self) -> int:
        return len(self.mus)


@dataclass
class AceModel:
    """A whole ACE potential in C-tilde form; species index = position in ``elements``."""

    elements: tuple[str, ...]
    e0: tuple[float, ...]
    embeddings: dict[int, Embedding]
    bonds: dict[tuple[int, int], Bond]
    functions: dict[int, list[CTildeFunction]]
    inner_cutoff_type: str = "density"
    #: grid spacing (Å) of pacemaker's radial look-up tables
    delta_spline_bins: float = 0.001
    source_format: str = "yace"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def cutoff(self) -> float:
        return max(bond.rcut for bond in self.bonds.values())


@dataclass(frozen=True)
class PairTable:
    """A LAMMPS ``pair_style table`` file: tabulated ``(r, E, F)`` per element pair, F = -dE/dr."""

    sections: dict[frozenset[str], tuple[np.ndarray, np.ndarray, np.ndarray]]

    @property
    def cutoff(self) -> float:
        return max(float(r[-1]) for r, _, _ in self.sections.values())


# ----------------------------------------------------------------------------------------------------------------
# YAML with flow-sequence keys ([0, 1]: ...), which safe_load refuses as unhashable


class _SequenceKeyLoader(yaml.SafeLoader):
    """A safe loader that turns sequence mapping keys into tuples."""

    def construct_mapping(self, node, deep=False):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.SequenceNode):
                key_node.tag = "!sequence-key"
        return super().construct_mapping(node, deep=deep)


_SequenceKeyLoader.add_constructor(
    "!sequence-key", lambda loader, node: tuple(loader.construct_sequence(node, deep=True))
)


def load_yaml(path: Path) -> dict[str, Any]:
    """Load an ACE YAML file (sequence keys allowed) into a mapping."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=_SequenceKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        raise AceFormatError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise AceFormatError(f"{path}: an ACE potential is a YAML mapping")
    return data


def read_potential(path: Path | str) -> AceModel:
    """Read a pacemaker B-basis ``.yaml`` or a C-tilde ``.yace``, recognised by content."""
    path = Path(path)
    head = path.read_text(errors="replace")[:4096]
    if "nelements=" in head or "ctilde_basis_func" in head:
        raise AceFormatError(
            f"{path}: legacy C-tilde text format (.ace) is not supported; convert it to .yace with python-ace"
        )
    data = load_yaml(path)
    if "species" in data:
        return bbasis_to_model(data, path)
    if "functions" in data and "bonds" in data:
        return yace_to_model(data, path)
    raise AceFormatError(f"{path}: neither a B-basis (.yaml with 'species') nor a C-tilde (.yace) potential")


# ----------------------------------------------------------------------------------------------------------------
# C-tilde .yace


def _need(mapping: dict[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise AceFormatError(f"{where}: missing '{key}'")
    return mapping[key]


def yace_to_model(data: dict[str, Any], path: Path) -> AceModel:
    """Build an :class:`AceModel` from a parsed ``.yace`` mapping."""
    if "polypairpot" in data or "reppot" in data:
        raise AceFormatError(
            f"{path}: ACE.jl 'polypairpot'/'reppot' inside the .yace is not supported; export the pair potential "
            "as a LAMMPS table and give it as the card's options.pair_table"
        )
    elements = tuple(str(e) for e in _need(data, "elements", str(path)))
    e0 = tuple(float(v) for v in data.get("E0", [0.0] * len(elements)))
    if len(e0) != len(elements):
        raise AceFormatError(f"{path}: E0 has {len(e0)} values for {len(elements)} elements")
    embeddings = {}
    for key, spec in _need(data, "embeddings", str(path)).items():
        embeddings[int(key)] = _embedding(
            spec.get("npoti"),
            spec.get("FS_parameters"),
            spec.get("rho_core_cutoff", 100000.0),
            spec.get("drho_core_cutoff", 250.0),
            f"{path}: embeddings[{key}]",
        )
    lmax_global = int(data.get("lmax", 0))
    bonds: dict[tuple[int, int], Bond] = {}
    inner_types = set()
    for key, spec in _need(data, "bonds", str(path)).items():
        pair = tuple(int(k) for k in key)
        if len(pair) != 2:
            raise AceFormatError(f"{path}: bond key {key!r} is not a species pair")
        where = f"{path}: bonds[{list(pair)}]"
        name = str(_need(spec, "radbasename", where))
        if name == "ACE.jl.base":
            bonds[pair] = _julia_bond(spec, lmax_global, where)
            inner_types.add(str(spec.get("inner_cutoff_type", "density")))
            continue
        crad = np.asarray(_need(spec, "radcoefficients", where), dtype=np.float64)
        nradmax, lmax, nradbase = int(spec["nradmax"]), int(spec["lmax"]), int(spec["nradbasemax"])
        crad = crad.reshape(nradmax, lmax + 1, nradbase) if crad.size else np.zeros((nradmax, lmax + 1, nradbase))
        bonds[pair] = _bond(
            name,
            rcut=spec["rcut"],
            dcut=spec.get("dcut", 0.01),
            radparameters=spec.get("radparameters", [0.0]),
            crad=crad,
            core=(spec.get("prehc", 0.0), spec.get("lambdahc", 1.0)),
            inner=(spec.get("rcut_in", 0.0), spec.get("dcut_in", 0.0)),
            where=where,
        )
        inner_types.add(str(spec.get("inner_cutoff_type", "density")))
    functions: dict[int, list[CTildeFunction]] = {mu: [] for mu in range(len(elements))}
    for key, entries in (data.get("functions") or {}).items():
        mu0 = int(key)
        ndensity = embeddings[mu0].ndensity
        for entry in entries:
            rank = int(entry["rank"])
            ms = np.asarray(entry["ms_combs"], dtype=np.int64).reshape(-1, rank)
            ctildes = np.asarray(entry["ctildes"], dtype=np.float64).reshape(ms.shape[0], ndensity)
            functions[mu0].append(
                CTildeFunction(
                    mu0=mu0,
                    mus=tuple(int(v) for v in entry["mus"]),
                    ns=tuple(int(v) for v in entry["ns"]),
                    ls=tuple(int(v) for v in entry["ls"]),
                    ms=ms,
                    ctildes=ctildes,
                )
            )
    model = AceModel(
        elements=elements,
        e0=e0,
        embeddings=embeddings,
        bonds=bonds,
        functions=functions,
        inner_cutoff_type=_single_inner_type(inner_types, path),
        delta_spline_bins=float(data.get("deltaSplineBins", 0.001)),
        source_format="yace",
    )
    _validate(model, path)
    return model


def _julia_bond(spec: dict[str, Any], lmax: int, where: str) -> Bond:
    recursion = _need(spec, "recursion_coefficients", where)
    maxn = int(_need(spec, "maxn", where))
    a, b, c = (tuple(float(v) for v in recursion[k]) for k in ("A", "B", "C"))
    if not len(a) == len(b) == len(c) == maxn:
        raise AceFormatError(f"{where}: recursion_coefficients must have maxn={maxn} entries each")
    julia = JuliaRadialBasis(
        r0=float(spec["r0"]),
        p=float(spec["p"]),
        xl=float(spec["xl"]),
        xr=float(spec["xr"]),
        pl=int(spec["pl"]),
        pr=int(spec["pr"]),
        a=a,
        b=b,
        c=c,
    )
    return Bond(
        radial_basis="ACE.jl.base",
        rcut=float(spec["rcut"]),
        dcut=0.0,
        radparameter=0.0,
        nradbase=maxn,
        nradmax=maxn,
        lmax=lmax,
        crad=None,
        julia=julia,
    )


# ----------------------------------------------------------------------------------------------------------------
# B-basis .yaml


def bbasis_to_model(data: dict[str, Any], path: Path) -> AceModel:
    """Build an :class:`AceModel` from a parsed pacemaker B-basis mapping, coupling each function to C-tilde."""
    blocks = data["species"]
    if not isinstance(blocks, list) or not blocks:
        raise AceFormatError(f"{path}: 'species' must be a non-empty list of species blocks")
    names = set()
    for block in blocks:
        names.update(str(_need(block, "speciesblock", str(path))).split())
    elements = tuple(sorted(names))
    index = {element: mu for mu, element in enumerate(elements)}
    embeddings: dict[int, Embedding] = {}
    radial_specs: dict[tuple[int, int], dict[str, Any]] = {}
    core_specs: dict[tuple[int, int], dict[str, Any]] = {}
    inner_types = set()
    for block in blocks:
        block_elements = str(block["speciesblock"]).split()
        where = f"{path}: speciesblock '{block['speciesblock']}'"
        distinct = sorted(set(block_elements))
        mu0 = index[block_elements[0]]
        if len(distinct) == 1:
            embeddings[mu0] = _embedding(
                block.get("npoti"),
                block.get("parameters"),
                block.get("rho_core_cut", 100000.0),
                block.get("drho_core_cut", 250.0),
                where,
            )
        if len(distinct) <= 2:
            partner = block_elements[1] if len(block_elements) > 1 else block_elements[0]
            pair = (mu0, index[partner])
            if "lmaxi" in block:
                radial_specs[pair] = block
            if "core-repulsion" in block:
                core_specs[pair] = block
            inner_types.add(str(block.get("inner_cutoff_type", "density")))
    bonds: dict[tuple[int, int], Bond] = {}
    for mu_i, mu_j in product(range(len(elements)), repeat=2):
        spec = radial_specs.get((mu_i, mu_j)) or radial_specs.get((mu_j, mu_i))
        if spec is None:
            continue
        core = core_specs.get((mu_i, mu_j)) or core_specs.get((mu_j, mu_i)) or {}
        nradmax, lmax, nradbase = int(spec["nradmaxi"]), int(spec["lmaxi"]), int(spec["nradbaseij"])
        crad = np.asarray(spec.get("radcoefficients", []), dtype=np.float64)
        crad = crad.reshape(nradmax, lmax + 1, nradbase) if crad.size else np.zeros((nradmax, lmax + 1, nradbase))
        prehc, lambdahc = core.get("core-repulsion", [0.0, 1.0])
        bonds[(mu_i, mu_j)] = _bond(
            str(spec["radbase"]),
            rcut=spec["rcutij"],
            dcut=spec.get("dcutij", 0.01),
            radparameters=spec.get("radparameters", [0.0]),
            crad=crad,
            core=(prehc, lambdahc),
            inner=(spec.get("r_in", 0.0), spec.get("delta_in", 0.0)),
            where=f"{path}: bond {elements[mu_i]}-{elements[mu_j]}",
        )
    functions: dict[int, list[CTildeFunction]] = {mu: [] for mu in range(len(elements))}
    for block in blocks:
        for entry in block.get("nbody") or []:
            if entry.get("skip", False):
                continue
            species = str(entry["type"]).split()
            mu0 = index[species[0]]
            coefficients = entry["c"] if isinstance(entry["c"], list) else [entry["c"]]
            function = couple_bbasis_function(
                mu0=mu0,
                mus=tuple(index[s] for s in species[1:]),
                ns=tuple(int(n) for n in entry["nr"]),
                ls=tuple(int(v) for v in entry["nl"]),
                lint=tuple(int(v) for v in entry.get("lint", [])),
                coefficients=np.asarray(coefficients, dtype=np.float64),
            )
            if function is not None:
                functions[mu0].append(function)
    model = AceModel(
        elements=elements,
        e0=(0.0,) * len(elements),
        embeddings=embeddings,
        bonds=bonds,
        functions=functions,
        inner_cutoff_type=_single_inner_type(inner_types, path),
        delta_spline_bins=float((data.get("global") or {}).get("DeltaSplineBins", 0.001)),
        source_format="yaml",
        metadata=dict(data.get("metadata") or {}),
    )
    _validate(model, path)
    return model


def couple_bbasis_function(
    *,
    mu0: int,
    mus: tuple[int, ...],
    ns: tuple[int, ...],
    ls: tuple[int, ...],
    lint: tuple[int, ...],
    coefficients: np.ndarray,
) -> CTildeFunction | None:
    """Expand one rotation-invariant B-function into C-tilde form; None if no m-combination survives."""
    rank = len(mus)
    if not (len(ns) == len(ls) == rank):
        raise AceFormatError(f"B-function with species {mus}: nr, nl and type disagree in rank")
    pairs = generalized_cg(ls, expand_intermediate_ls(ls, lint))
    if not pairs:
        return None
    ms = np.array([m for m, _ in pairs], dtype=np.int64).reshape(-1, rank)
    cg = np.array([c for _, c in pairs], dtype=np.float64)
    ctildes = cg[:, None] * coefficients[None, :]
    return CTildeFunction(mu0=mu0, mus=mus, ns=ns, ls=ls, ms=ms, ctildes=ctildes, gen_cgs=cg)


def expand_intermediate_ls(ls: tuple[int, ...], lint: tuple[int, ...]) -> tuple[int, ...]:
    """The full list of intermediate couplings (rank - 2 values) from the reduced ``lint`` a B-basis file stores."""
    rank = len(ls)
    full = list(lint)
    if rank <= 2:
        full = []
    elif rank == 3 and not full:
        full = [ls[2]]
    elif rank == 4 and len(full) == 1:
        full.append(full[0])
    elif rank == 5 and len(full) == 2:
        full.append(ls[4])
    elif rank == 6 and len(full) == 3:
        full.append(full[-1])
    if len(full) != max(rank - 2, 0):
        raise AceFormatError(f"ls={list(ls)}: expected {max(rank - 2, 0)} intermediate couplings, got lint={lint}")
    return tuple(full)


@cache
def coupling_tree(rank: int) -> tuple[tuple[int, int, int], ...]:
    """Binary coupling tree as (left, right, parent) node triples; nodes 0..rank-1 are the ls, -1 the final L=0.

    The ls are coupled in pairs (0,1), (2,3), ...; the resulting intermediate nodes are coupled pairwise in order
    while intermediate labels remain; an odd last l joins the last intermediate node at the root.
    """
    if rank < 2:
        return ()
    labels = list(range(rank, 2 * rank - 2))
    leaves = list(range(rank))
    tree: list[tuple[int, int, int]] = []
    queue: list[int] = []
    parent = -1
    for _ in range(rank // 2):
        left, right = leaves.pop(0), leaves.pop(0)
        parent = labels.pop(0) if labels else -1
        tree.append((left, right, parent))
        queue.append(parent)
    while len(queue) > 1 and parent != -1:
        left, right = queue.pop(0), queue.pop(0)
        parent = labels.pop(0) if labels else -1
        tree.append((left, right, parent))
        queue.append(parent)
    if parent != -1:
        tree.append((queue.pop(0), leaves.pop(0), -1))
    if len(tree) != rank - 1:
        raise AceFormatError(f"cannot build a coupling tree for rank {rank}")
    return tuple(tree)


def generalized_cg(ls: tuple[int, ...], intermediate: tuple[int, ...]) -> list[tuple[tuple[int, ...], float]]:
    """(ms, coefficient) pairs of the invariant coupling of ``ls``, half m-space (first non-zero m > 0, doubled)."""
    rank = len(ls)
    if rank == 1:
        return [((0,), 1.0)] if ls[0] == 0 else []
    node_l = list(ls) + list(intermediate) + [0]
    root = 2 * rank - 2
    tree = coupling_tree(rank)
    pairs = []
    for ms in product(*(range(-degree, degree + 1) for degree in ls)):
        if sum(ms) != 0:
            continue
        first = next((m for m in ms if m != 0), 0)
        if first < 0:
            continue
        node_m = list(ms) + [0] * (rank - 1)
        coefficient = 1.0
        for left, right, parent in tree:
            parent = root if parent == -1 else parent
            node_m[parent] = node_m[left] + node_m[right]
            if abs(node_m[parent]) > node_l[parent]:
                coefficient = 0.0
                break
            coefficient *= clebsch_gordan(
                node_l[left], node_m[left], node_l[right], node_m[right], node_l[parent], node_m[parent]
            )
            if coefficient == 0.0:
                break
        if coefficient == 0.0:
            continue
        pairs.append((tuple(ms), 2.0 * coefficient if first > 0 else coefficient))
    return pairs


@cache
def clebsch_gordan(j1: int, m1: int, j2: int, m2: int, j: int, m: int) -> float:
    """<j1 m1 j2 m2 | j m> for integer angular momenta (Racah's formula, Condon-Shortley phase)."""
    if m1 + m2 != m or not abs(j1 - j2) <= j <= j1 + j2 or abs(m1) > j1 or abs(m2) > j2 or abs(m) > j:
        return 0.0
    f = math.factorial
    prefactor = math.sqrt(
        (2 * j + 1)
        * f(j + j1 - j2)
        * f(j - j1 + j2)
        * f(j1 + j2 - j)
        / f(j1 + j2 + j + 1)
        * f(j + m)
        * f(j - m)
        * f(j1 - m1)
        * f(j1 + m1)
        * f(j2 - m2)
        * f(j2 + m2)
    )
    total = 0.0
    for k in range(0, j1 + j2 - j + 1):
        denominators = (k, j1 + j2 - j - k, j1 - m1 - k, j2 + m2 - k, j - j2 + m1 + k, j - j1 - m2 + k)
        if min(denominators) < 0:
            continue
        term = 1.0
        for d in denominators:
            term *= f(d)
        total += (-1) ** k / term
    return prefactor * total


# ----------------------------------------------------------------------------------------------------------------
# shared pieces


def _embedding(npoti: Any, parameters: Any, rho_cut: Any, drho_cut: Any, where: str) -> Embedding:
    if npoti not in EMBEDDINGS:
        raise AceFormatError(f"{where}: embedding {npoti!r} is not supported (supported: {', '.join(EMBEDDINGS)})")
    parameters = tuple(float(v) for v in (parameters or []))
    if not parameters or len(parameters) % 2:
        raise AceFormatError(f"{where}: FS parameters must be pairs (w_p, m_p), got {list(parameters)}")
    return Embedding(
        npoti=str(npoti),
        fs_parameters=parameters,
        rho_core_cutoff=float(rho_cut),
        drho_core_cutoff=float(drho_cut),
    )


def _bond(
    name: str,
    *,
    rcut: Any,
    dcut: Any,
    radparameters: Any,
    crad: np.ndarray,
    core: tuple[Any, Any],
    inner: tuple[Any, Any],
    where: str,
) -> Bond:
    if name not in RADIAL_BASES[:-1]:
        raise AceFormatError(f"{where}: radial basis {name!r} is not supported (supported: {', '.join(RADIAL_BASES)})")
    radparameters = list(radparameters or [0.0])
    return Bond(
        radial_basis=name,
        rcut=float(rcut),
        dcut=float(dcut),
        radparameter=float(radparameters[0]),
        nradbase=int(crad.shape[2]),
        nradmax=int(crad.shape[0]),
        lmax=int(crad.shape[1]) - 1,
        crad=crad,
        prehc=float(core[0]),
        lambdahc=float(core[1]),
        r_in=float(inner[0]),
        delta_in=float(inner[1]),
    )


def _single_inner_type(types: set[str], path: Path) -> str:
    unknown = types - set(INNER_CUTOFF_TYPES)
    if unknown:
        raise AceFormatError(f"{path}: inner_cutoff_type {sorted(unknown)} is not supported")
    if len(types) > 1:
        raise AceFormatError(
            f"{path}: bonds mix inner_cutoff_type {sorted(types)}; the ACE evaluator applies one type to all bonds"
        )
    return types.pop() if types else "density"


def _validate(model: AceModel, path: Path) -> None:
    n = len(model.elements)
    missing = [model.elements[mu] for mu in range(n) if mu not in model.embeddings]
    if missing:
        raise AceFormatError(f"{path}: no embedding for {', '.join(missing)}")
    for mu0, functions in model.functions.items():
        for function in functions:
            for mu, n_index, l_index in zip(function.mus, function.ns, function.ls, strict=True):
                bond = model.bonds.get((mu0, mu))
                if bond is None:
                    raise AceFormatError(
                        f"{path}: a function centred on {model.elements[mu0]} uses the bond "
                        f"{model.elements[mu0]}-{model.elements[mu]}, which has no radial basis"
                    )
                limit = bond.nradbase if function.rank == 1 else bond.nradmax
                if not 1 <= n_index <= limit or l_index > bond.lmax:
                    raise AceFormatError(
                        f"{path}: function (mu0={mu0}, ns={function.ns}, ls={function.ls}) exceeds its bond's "
                        f"basis (nradbase={bond.nradbase}, nradmax={bond.nradmax}, lmax={bond.lmax})"
                    )


# ----------------------------------------------------------------------------------------------------------------
# LAMMPS pair table


def read_pair_table(path: Path | str) -> PairTable:
    """Read a LAMMPS ``pair_style table`` file whose sections are named ``El1_El2`` (as ACEpotentials.jl writes)."""
    path = Path(path)
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    sections: dict[frozenset[str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    i = 0
    while i < len(lines):
        keyword = lines[i]
        if not keyword:
            i += 1
            continue
        pair = keyword.split("_")
        if len(pair) != 2 or i + 1 >= len(lines):
            raise AceFormatError(f"{path}:{i + 1}: expected a section name 'El1_El2', got {keyword!r}")
        params = lines[i + 1].split()
        if not params or params[0] != "N" or len(params) != 2:
            raise AceFormatError(
                f"{path}:{i + 2}: only 'N <count>' table parameters are supported, got {lines[i + 1]!r}"
            )
        count = int(params[1])
        rows = [line for line in lines[i + 2 :] if line][:count]
        table = np.array([[float(v) for v in row.split()] for row in rows])
        if table.shape != (count, 4):
            raise AceFormatError(f"{path}: section {keyword} should have {count} rows 'index r E F'")
        r, energy, force = table[:, 1], table[:, 2], table[:, 3]
        step = np.diff(r)
        if np.any(step <= 0) or not np.allclose(step, step[0], rtol=1e-6, atol=1e-9):
            raise AceFormatError(f"{path}: section {keyword} is not on a uniform, increasing r grid")
        sections[frozenset(pair)] = (r, energy, force)
        consumed = 0
        j = i + 2
        while consumed < count:
            if lines[j]:
                consumed += 1
            j += 1
        i = j
    if not sections:
        raise AceFormatError(f"{path}: no table sections found")
    return PairTable(sections=sections)
