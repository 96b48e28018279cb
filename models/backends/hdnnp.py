"""HDNNP backend: Behler–Parrinello neural network potentials in n2p2's format, evaluated batched in torch.

n2p2 (``nnp-predict``, LAMMPS ``pair_style hdnnp``) and RuNNer evaluate one structure at a time on CPUs and are
not pip-installable; this module is our own implementation of n2p2's 2G-HDNNP, so that a batch of structures is one
set of tensor operations on CPU or CUDA, in float64 by default:

1. edges of the batched neighbour graph within the largest symmetry function cutoff (:func:`build_graph`), in the
   file's length unit;
2. radial symmetry functions (type 2) ``sum_j exp(-eta (r_ij - rs)^2) fc(r_ij)`` per edge, summed per atom;
3. angular ones over every unordered pair of an atom's neighbours j, k: narrow (type 3)
   ``2^(1-zeta) (1 + lambda cos) ^ zeta exp(-eta sum (r - rs)^2) fc(r_ij) fc(r_ik) fc(r_jk)`` and wide (type 9)
   without the r_jk terms. Per pair, only the distinct angular parts (lambda, zeta) and radial parts (eta, rs, rc,
   narrow or wide) are computed; each atom's sums of their products are one batched matrix product over its
   zero-padded pairs. Pairs go in chunks, recomputed in the backward pass when there are many (memory stays
   bounded);
4. n2p2's scaling of each symmetry function, then the element's feed-forward network;
5. atomic energy ``E_nn / conv_energy + mean_energy`` (when normalised) ``+ atom_energy``, then the file's energy
   unit in eV; forces and stress by autograd with respect to the edge vectors.

Normalisation needs no change of length unit here: n2p2 rescales the symmetry function parameters with
``conv_length`` exactly as it rescales positions, so the symmetry functions are the same in physical units.

Card: ``checkpoint`` is the ``input.nn``; ``options`` name the other files, each with its sha256 and loaded only
from the model directory (:func:`~.ace.verified_companion`): ``scaling`` + ``scaling_sha256``, and ``weights`` +
``weights_sha256``, two mappings from element symbol to its ``weights.ZZZ.data`` and that file's sha256. The n2p2
files say nothing of units: ``length_unit`` (Angstrom, Bohr or nm) and ``energy_unit`` (eV, Hartree, Rydberg,
kcal/mol or kJ/mol) say what they were fitted in, converted with ASE's constants (``ase.units``, CODATA 2014);
the answers are eV and Å. ``dtype`` may be float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.data import atomic_numbers
from torch.utils.checkpoint import checkpoint

from ..cards import CardError, ModelCard
from ..edge_gradients import predict_on_edges
from ..graph import BatchedGraph, build_graph
from ..potential import ALL_PROPERTIES, Potential, Prediction
from ..system import AtomicSystem
from .ace import verified_companion
from .hdnnp_format import NARROW, RADIAL, HDNNPFormatError, HDNNPModel, read_scaling, read_settings, read_weights
from .hdnnp_functions import activation, cutoff_function, integer_power, pairs_across, pairs_within

_OPTIONS = {"scaling", "scaling_sha256", "weights", "weights_sha256", "length_unit", "energy_unit", "dtype"}
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: Å per length unit and eV per energy unit of the files (ASE's constants).
LENGTH_UNITS = {"Angstrom": 1.0, "Bohr": units.Bohr, "nm": units.nm}
ENERGY_UNITS = {
    "eV": 1.0,
    "Hartree": units.Hartree,
    "Rydberg": units.Rydberg,
    "kcal/mol": units.kcal / units.mol,
    "kJ/mol": units.kJ / units.mol,
}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> HDNNPPotential:
    """Read ``input.nn`` (``checkpoint``, already hash-checked) and the scaling and weight files the card names."""
    unknown = set(card.options) - _OPTIONS
    if unknown:
        raise CardError(f"{card.name}: unknown HDNNP options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    length_unit = _choice(card, "length_unit", LENGTH_UNITS, "Angstrom")
    energy_unit = _choice(card, "energy_unit", ENERGY_UNITS, "eV")
    dtype = _DTYPES[_choice(card, "dtype", _DTYPES, "float64")]
    if "scaling" not in card.options:
        raise CardError(f"{card.name}: an HDNNP card needs options.scaling (the scaling.data file) and its sha256")
    try:
        settings = read_settings(checkpoint)
        scaling = read_scaling(verified_companion(card, "scaling"), settings)
        networks = {
            element: read_weights(_weights_file(card, element), settings, element) for element in settings.elements
        }
    except HDNNPFormatError as error:
        raise CardError(f"{card.name}: {error}") from error
    model = HDNNPModel(settings, scaling, networks)
    return HDNNPPotential(card, model, device, dtype, LENGTH_UNITS[length_unit], ENERGY_UNITS[energy_unit])


def _choice(card: ModelCard, option: str, choices: dict, default: str) -> str:
    value = str(card.options.get(option, default))
    if value not in choices:
        raise CardError(f"{card.name}: options.{option} must be one of {list(choices)}, not {value!r}")
    return value


def _weights_file(card: ModelCard, element: str) -> Path:
    """The weights file of ``element``: ``options.weights[element]``, checked against ``weights_sha256[element]``."""
    files, digests = card.options.get("weights"), card.options.get("weights_sha256")
    if not isinstance(files, dict) or not isinstance(digests, dict):
        raise CardError(
            f"{card.name}: options.weights and options.weights_sha256 must map each element to its weights.ZZZ.data "
            f"file and that file's sha256, e.g. weights: {{{element}: weights.{atomic_numbers[element]:03d}.data}}"
        )
    if element not in files or element not in digests:
        raise CardError(f"{card.name}: options.weights and options.weights_sha256 need an entry for {element}")
    key = f"weights.{element}"
    one = dataclasses.replace(card, options={key: files[element], f"{key}_sha256": digests[element]})
    return verified_companion(one, key)


@dataclasses.dataclass
class _AngularGroup:
    """The angular symmetry functions of one central element with one unordered pair of neighbour elements.

    Function s is ``norm[s] * angle[angle_index[s]] * radial[radial_index[s]]`` summed over neighbour pairs, with
    the distinct angular parts (lambda, zeta) and radial parts (eta, rs, rc, narrow) computed once each.
    """

    neighbours: tuple[int, int]  # element indices e1 <= e2
    columns: torch.Tensor  # (k,) where the functions go among the element's inputs
    norm: torch.Tensor  # (k,) 2^(1 - zeta)
    angle_index: torch.Tensor  # (k,)
    lambda_: torch.Tensor  # (n_angle,)
    zeta: torch.Tensor
    radial_index: torch.Tensor  # (k,)
    eta: torch.Tensor  # (n_radial,)
    rs: torch.Tensor
    narrow: torch.Tensor  # (n_radial,) bool: type 3 (with the r_jk terms) or 9
    cutoff_index: torch.Tensor  # (n_radial,) into rc
    rc: torch.Tensor  # (n_cutoff,)
    narrow_only: bool
    largest_rc: float
    integer_zetas: tuple[int, ...] | None  # the zetas as Python integers, when they all are
    single_rs: float | None  # the shift rs, when all functions of the group share one

    @classmethod
    def build(
        cls, neighbours: tuple[int, int], members: list, device: torch.device, dtype: torch.dtype
    ) -> _AngularGroup:
        """From (column, SymmetryFunction) members."""
        angles = sorted({(sf.lambda_, sf.zeta) for _, sf in members})
        radials = sorted({(sf.eta, sf.rs, sf.rc, sf.kind == NARROW) for _, sf in members})
        cutoffs = sorted({sf.rc for _, sf in members})

        def tensor(values, kind=dtype):
            return torch.as_tensor(np.asarray(values), dtype=kind, device=device)

        integer = all(float(z).is_integer() and z >= 1 for _, z in angles)
        return cls(
            neighbours=neighbours,
            columns=tensor([c for c, _ in members], torch.int64),
            norm=tensor([2.0 ** (1.0 - sf.zeta) for _, sf in members]),
            angle_index=tensor([angles.index((sf.lambda_, sf.zeta)) for _, sf in members], torch.int64),
            lambda_=tensor([a[0] for a in angles]),
            zeta=tensor([a[1] for a in angles]),
            radial_index=tensor(
                [radials.index((sf.eta, sf.rs, sf.rc, sf.kind == NARROW)) for _, sf in members], torch.int64
            ),
            eta=tensor([r[0] for r in radials]),
            rs=tensor([r[1] for r in radials]),
            narrow=tensor([r[3] for r in radials], torch.bool),
            cutoff_index=tensor([cutoffs.index(r[2]) for r in radials], torch.int64),
            rc=tensor(cutoffs),
            narrow_only=all(sf.kind == NARROW for _, sf in members),
            largest_rc=max(cutoffs),
            integer_zetas=tuple(int(z) for _, z in angles) if integer else None,
            single_rs=radials[0][1] if len({r[1] for r in radials}) == 1 else None,
        )

    @property
    def width(self) -> int:
        """Values per neighbour pair that one chunk holds: its angular and radial parts, and some ten distances,
        cutoffs and their intermediates."""
        return int(self.lambda_.numel() + self.eta.numel() + 10)


@dataclasses.dataclass
class _ElementTables:
    """Everything the evaluation needs of one central element, as tensors."""

    n_inputs: int
    radial_columns: torch.Tensor
    radial_neighbour: torch.Tensor  # element index of the neighbour
    radial_eta: torch.Tensor
    radial_rs: torch.Tensor
    radial_rc: torch.Tensor
    angular: list[_AngularGroup]
    scale: torch.Tensor  # inputs = G * scale + shift
    shift: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor, str]]
    normalize_nodes: bool
    offset: float  # atom_energy, file units


@dataclasses.dataclass
class _Edges:
    """The batch's edges, sorted by sender, with vectors in the files' length unit."""

    species: torch.Tensor  # (N,) element index of each atom
    senders: torch.Tensor
    receivers: torch.Tensor
    vectors: torch.Tensor  # (E, 3), may require grad
    n_atoms: int

    def __post_init__(self) -> None:
        self.lengths = torch.linalg.vector_norm(self.vectors, dim=1)


class HDNNPPotential(Potential):
    """An n2p2 2G-HDNNP evaluated batch-wise in torch."""

    implemented_properties = ALL_PROPERTIES
    #: Most values (neighbour pairs x their :attr:`_AngularGroup.width`) one chunk of an angular group may hold:
    #: the 1080-atom water fixture (1.6 M pairs) fits in one, in under 1 GB with autograd's saved tensors. Beyond
    #: it chunks are recomputed in the backward pass (memory stays bounded; measured 1.5-2x slower).
    triplet_chunk_elements = 1 << 25

    def __init__(
        self,
        card: ModelCard,
        model: HDNNPModel,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        length_unit: float = 1.0,
        energy_unit: float = 1.0,
    ):
        """``length_unit``: Å per length unit of the files; ``energy_unit``: eV per energy unit."""
        self.card, self.model = card, model
        self.device, self.dtype = torch.device(device), dtype
        self.length_unit, self.energy_unit = length_unit, energy_unit
        settings = model.settings
        self.elements = frozenset(atomic_numbers[e] for e in settings.elements)
        self.cutoff = settings.cutoff * length_unit
        self._species_of_z = np.full(119, -1, dtype=np.int64)
        for index, element in enumerate(settings.elements):
            self._species_of_z[atomic_numbers[element]] = index
        self._tables = [self._element_tables(element) for element in settings.elements]

    def _element_tables(self, element: str) -> _ElementTables:
        settings, device, dtype = self.model.settings, self.device, self.dtype
        index_of = {e: i for i, e in enumerate(settings.elements)}
        functions = settings.symmetry_functions[element]

        def tensor(values, kind=dtype):
            return torch.as_tensor(np.asarray(values), dtype=kind, device=device)

        radial = [(column, sf) for column, sf in enumerate(functions) if sf.kind == RADIAL]
        groups: dict[int, list] = {}
        for column, sf in enumerate(functions):
            if sf.kind != RADIAL:
                e1, e2 = (index_of[e] for e in sf.neighbours)
                groups.setdefault((e1, e2), []).append((column, sf))
        angular = [_AngularGroup.build(key, members, device, dtype) for key, members in sorted(groups.items())]
        scale, shift = self._scaling(self.model.scaling[element])
        layers = [
            (tensor(layer.weights), tensor(layer.bias), layer.activation) for layer in self.model.networks[element]
        ]
        return _ElementTables(
            n_inputs=len(functions),
            radial_columns=tensor([c for c, _ in radial], torch.int64),
            radial_neighbour=tensor([index_of[sf.neighbours[0]] for _, sf in radial], torch.int64),
            radial_eta=tensor([sf.eta for _, sf in radial]),
            radial_rs=tensor([sf.rs for _, sf in radial]),
            radial_rc=tensor([sf.rc for _, sf in radial]),
            angular=angular,
            scale=tensor(scale),
            shift=tensor(shift),
            layers=layers,
            normalize_nodes=settings.normalize_nodes,
            offset=settings.atom_energy[element],
        )

    def _scaling(self, statistics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) with n2p2's scaled input ``G * scale + shift`` (``SymFnc::scale``)."""
        settings = self.model.settings
        g_min, g_max, g_mean, g_sigma = statistics.T
        s_min, s_max = settings.scale_min, settings.scale_max
        if settings.scaling == "none":
            return np.ones_like(g_min), np.zeros_like(g_min)
        if settings.scaling == "center":
            return np.ones_like(g_min), -g_mean
        if settings.scaling == "scalesigma":
            if np.isnan(g_sigma).any():
                raise CardError(f"{self.card.name}: scale_symmetry_functions_sigma needs the sigma column of scaling")
            factor = (s_max - s_min) / g_sigma
        else:
            factor = (s_max - s_min) / (g_max - g_min)
        reference = g_min if settings.scaling == "scale" else g_mean
        return factor, s_min - factor * reference

    # -- contract -----------------------------------------------------------------------------------------------

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` at once; autograd is used only when forces or stress are asked for."""
        graph = build_graph(systems, self.cutoff)
        order = np.argsort(graph.senders, kind="stable")  # each atom's edges contiguous, for the neighbour pairs
        device = self.device
        senders = torch.as_tensor(graph.senders[order], device=device)
        receivers = torch.as_tensor(graph.receivers[order], device=device)
        energy_of = partial(self.system_energies, graph, senders, receivers)
        return predict_on_edges(systems, properties, graph, energy_of, dtype=self.dtype, device=device, order=order)

    # -- the model ----------------------------------------------------------------------------------------------

    def system_energies(
        self, graph: BatchedGraph, senders: torch.Tensor, receivers: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        """Energy (eV) of each system of ``graph`` from its edge vectors in Å (sorted by sender; may require grad)."""
        device, dtype = self.device, self.dtype
        n_atoms = int(graph.numbers.shape[0])
        edges = _Edges(
            species=torch.as_tensor(self._species_of_z[graph.numbers], device=device),
            senders=senders,
            receivers=receivers,
            vectors=vectors / self.length_unit,  # in the files' length unit
            n_atoms=n_atoms,
        )
        atom_energy = torch.zeros(n_atoms, dtype=dtype, device=device)
        normalisation = self.model.settings.normalisation
        for index, tables in enumerate(self._tables):
            atoms = torch.nonzero(edges.species == index).flatten()
            if atoms.numel() == 0:
                continue
            row_of = torch.full((n_atoms,), -1, dtype=torch.int64, device=device)
            row_of[atoms] = torch.arange(atoms.numel(), device=device)
            energy = self._network(tables, self._symmetry_functions(tables, index, row_of, atoms.numel(), edges))
            if normalisation is not None:
                energy = energy / normalisation.conv_energy + normalisation.mean_energy
            atom_energy = atom_energy.index_put((atoms,), energy + tables.offset)
        batch = torch.as_tensor(graph.batch, device=device)
        totals = torch.zeros(graph.n_systems, dtype=dtype, device=device).index_add(0, batch, atom_energy)
        return totals * self.energy_unit

    def _symmetry_functions(
        self, tables: _ElementTables, centre: int, row_of: torch.Tensor, n_rows: int, edges: _Edges
    ) -> torch.Tensor:
        """(n_rows, n_inputs) symmetry functions of the atoms of element ``centre``, in ``row_of`` order."""
        settings = self.model.settings
        own = torch.nonzero(edges.species[edges.senders] == centre).flatten()  # still sorted by sender
        blocks, columns = [], []
        if tables.radial_columns.numel():
            r = edges.lengths[own][:, None]
            neighbour = edges.species[edges.receivers[own]][:, None]
            values = torch.exp(-tables.radial_eta * (r - tables.radial_rs) ** 2)
            values = values * cutoff_function(r, tables.radial_rc, settings.cutoff_type, settings.cutoff_alpha)
            values = values * (neighbour == tables.radial_neighbour)
            zeros = torch.zeros(n_rows, values.shape[1], dtype=self.dtype, device=self.device)
            blocks.append(zeros.index_add(0, row_of[edges.senders[own]], values))
            columns.append(tables.radial_columns)
        for group in tables.angular:
            rows, first, second = self._neighbour_pairs(group, row_of, own, edges)
            blocks.append(self._angular_block(group, n_rows, rows, first, second, edges.vectors))
            columns.append(group.columns)
        inputs = torch.zeros(n_rows, tables.n_inputs, dtype=self.dtype, device=self.device)
        return inputs.index_copy(1, torch.cat(columns), torch.cat(blocks, dim=1))

    @staticmethod
    def _neighbour_pairs(
        group: _AngularGroup, row_of: torch.Tensor, own: torch.Tensor, edges: _Edges
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(central atom's row, edge j, edge k) of every pair of neighbours of the group's elements within its
        cutoff; for narrow functions only, pairs with r_jk beyond it are left out (fc(r_jk) = 0)."""
        with torch.no_grad():
            near = own[edges.lengths[own] < group.largest_rc]
            neighbour = edges.species[edges.receivers[near]]
            e1, e2 = group.neighbours
            a = near[neighbour == e1]
            if e1 == e2:
                first, second = pairs_within(edges.senders[a], edges.n_atoms)
                j, k = a[first], a[second]
            else:
                b = near[neighbour == e2]
                first, second = pairs_across(edges.senders[a], edges.senders[b], edges.n_atoms)
                j, k = a[first], b[second]
            if group.narrow_only:
                between = edges.vectors[k] - edges.vectors[j]
                inside = (between * between).sum(dim=1) < group.largest_rc**2
                j, k = j[inside], k[inside]
            return row_of[edges.senders[j]], j, k

    def _angular_block(self, group, n_rows, rows, first, second, scaled) -> torch.Tensor:
        """(n_rows, k) sums of one angular group over the neighbour pairs, chunked."""
        device = self.device
        chunk = max(1, self.triplet_chunk_elements // group.width)
        n_pairs = first.shape[0]
        block = torch.zeros(n_rows, group.columns.numel(), dtype=self.dtype, device=device)
        recompute = scaled.requires_grad and n_pairs > chunk
        for start in range(0, n_pairs, chunk):
            part = slice(start, start + chunk)
            indices = (rows[part], first[part], second[part])
            if recompute:
                values = checkpoint(self._angular_chunk, group, n_rows, *indices, scaled, use_reentrant=False)
            else:
                values = self._angular_chunk(group, n_rows, *indices, scaled)
            block = block + values
        return block * group.norm

    def _angular_chunk(self, group, n_rows, rows, first, second, scaled) -> torch.Tensor:
        """(n_rows, k) one chunk of neighbour pairs' angular terms (without 2^(1-zeta)), summed per central atom."""
        settings = self.model.settings
        rij_vector, rik_vector = scaled[first], scaled[second]
        rij = torch.linalg.vector_norm(rij_vector, dim=1)[:, None]
        rik = torch.linalg.vector_norm(rik_vector, dim=1)[:, None]
        cos = (rij_vector * rik_vector).sum(dim=1)[:, None] / (rij * rik)
        base = 1.0 + group.lambda_ * cos
        positive = base > 0.0  # n2p2: no contribution where 1 + lambda cos <= 0
        safe = torch.where(positive, base, torch.ones_like(base))
        if group.integer_zetas is not None:
            powers = [integer_power(safe[:, a], zeta) for a, zeta in enumerate(group.integer_zetas)]
            angle = torch.where(positive, torch.stack(powers, dim=1), 0.0)
        else:
            angle = torch.where(positive, safe**group.zeta, 0.0)

        def fc(r):  # (T, n_cutoff): one column per distinct cutoff radius
            return cutoff_function(r, group.rc, settings.cutoff_type, settings.cutoff_alpha)

        rs = group.rs if group.single_rs is None else group.single_rs  # a number broadcasts over fewer columns
        wide_cut, wide_sq = fc(rij) * fc(rik), (rij - rs) ** 2 + (rik - rs) ** 2
        if group.narrow_only or bool(group.narrow.any()):
            rjk = torch.linalg.vector_norm(rik_vector - rij_vector, dim=1)[:, None]
            narrow_cut, narrow_sq = wide_cut * fc(rjk), wide_sq + (rjk - rs) ** 2
        if group.narrow_only:
            cutoffs, exponent = _columns(narrow_cut, group.cutoff_index), narrow_sq
        elif not bool(group.narrow.any()):
            cutoffs, exponent = _columns(wide_cut, group.cutoff_index), wide_sq
        else:
            cutoffs = torch.where(
                group.narrow, _columns(narrow_cut, group.cutoff_index), _columns(wide_cut, group.cutoff_index)
            )
            exponent = torch.where(group.narrow, narrow_sq, wide_sq)
        radial = torch.exp(-group.eta * exponent) * cutoffs
        return _pair_sums(angle, radial, rows, n_rows)[:, group.angle_index, group.radial_index]

    @staticmethod
    def _network(tables: _ElementTables, inputs: torch.Tensor) -> torch.Tensor:
        """The element's network on its scaled symmetry functions: (n_rows,) energies in normalised units."""
        x = inputs * tables.scale + tables.shift
        for weights, bias, letter in tables.layers:
            x = x @ weights + bias
            if tables.normalize_nodes:  # n2p2's normalize_nodes: the sum (bias included) over the inputs' number
                x = x / weights.shape[0]
            x = activation(x, letter)
        return x[:, 0]


def _pair_sums(angle: torch.Tensor, radial: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(n_rows, n_angle, n_radial) sums over each row's pairs of ``angle[t, a] * radial[t, r]``; ``rows`` sorted.

    Each row's pairs go to zero-padded slots, so that the sums are one batched matrix product.
    """
    first, last = int(rows[0]), int(rows[-1]) + 1
    local = rows - first
    counts = torch.bincount(local, minlength=last - first)
    slots = torch.arange(rows.shape[0], device=rows.device) - (torch.cumsum(counts, 0) - counts)[local]
    shape = (last - first, int(counts.max()))
    padded_angle = angle.new_zeros((*shape, angle.shape[1])).index_put((local, slots), angle)
    padded_radial = radial.new_zeros((*shape, radial.shape[1])).index_put((local, slots), radial)
    sums = torch.bmm(padded_angle.transpose(1, 2), padded_radial)
    return sums.new_zeros((n_rows, *sums.shape[1:])).index_copy(0, torch.arange(first, last, device=rows.device), sums)


def _columns(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[:, index]``, or ``values`` itself when it has one column (it then broadcasts)."""
    return values if values.shape[1] == 1 else values[:, index]
