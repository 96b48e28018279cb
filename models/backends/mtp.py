"""MTP backend: Moment Tensor Potentials (MLIP-2/MLIP-3 ``.mtp`` files) evaluated batched in torch.

Our own implementation, because no maintained code evaluates MTPs batched or on a GPU (MLIP, its LAMMPS plugin
and motep run on the CPU, one structure at a time). It follows MLIP's algorithm exactly, in float64 by default:

1. neighbours j of atom i with ``r = |r_j - r_i| < max_dist`` (vesin, via :func:`build_graph`);
2. Chebyshev radial basis ``Q_0 = s (r - max_dist)², Q_1 = s ξ (r - max_dist)², Q_k = 2 ξ Q_{k-1} - Q_{k-2}``
   with ``ξ = (2r - min_dist - max_dist) / (max_dist - min_dist)`` and ``s`` the file's ``scaling``; ``min_dist``
   is no cutoff (below it the polynomials are extrapolated, as MLIP does);
3. radial functions ``f_mu = Σ_k c[species_i, species_j, mu, k] Q_k``;
4. basic moments ``M_a(i) = Σ_j f_mu(r) u_x^px u_y^py u_z^pz`` (``u`` the unit vector to j);
5. composite moments ``M_c += mult M_a M_b`` in the file's order, run as waves of independent rows;
6. site energy ``species_coeffs[species_i] + Σ_k moment_coeffs[k] M_{mapping[k]}(i)``.

Batching: the whole batch is one graph. Each atom's edges fill zero-padded neighbour slots, so step 4 is one
batched matrix product (monomials × radial functions) per atom, the monomials are built degree by degree (one
product per degree), and moments are stored as (moment, atom) rows so step 5 gathers and adds whole rows.

Forces and the virial come from autograd of the energy with respect to the edge vectors ``g = dE/dr_ij``
(measured faster than motep's analytic C engine, benchmarks/README.md): ``F_i += g``, ``F_j -= g``, virial
``W = -Σ g ⊗ r_ij`` (MLIP's ``PlusStress``, symmetrised) and ASE stress ``-W / V``.

The ``.mtp`` file names no elements: the model card's ``elements`` list gives the element of each species index,
in species-index order (``elements: Fe Co Ni`` means species 0 is Fe, 1 is Co, 2 is Ni), so the potential's
elements are the card's by design, and what is checked against the file is their number (``species_count``). The
cutoff is the file's ``max_dist``, which the card's must equal. ``options.dtype`` may be ``float32`` (default
``float64``). ``options.active_set`` (training configurations) makes every prediction carry its extrapolation
grade (mtp_grade.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from ..cards import CardError, ModelCard
from ..graph import BatchedGraph, build_graph
from ..potential import ALL_PROPERTIES, Potential, Prediction, divide_by_volume, needs_gradients, split_batch
from ..prediction import FORCES, STRESS
from ..system import AtomicSystem
from ..tensor_batch import TensorBatch, TensorPrediction
from .mtp_format import MTPFile, read_mtp
from .mtp_grade import MTPGrader, load_grader

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> MTPPotential:
    """Read the ``.mtp`` file ``checkpoint`` (already hash-checked) and build its Potential on ``device``."""
    dtype_name = str(card.options.get("dtype", "float64"))
    if dtype_name not in _DTYPES:
        raise CardError(f"{card.name}: options.dtype must be one of {sorted(_DTYPES)}, not {dtype_name!r}")
    potential = MTPPotential(card, read_mtp(checkpoint), device, _DTYPES[dtype_name])
    potential.grader = load_grader(card, potential)
    if potential.grader is not None:
        potential.uncertainty_kind = "grade"
    return potential


@dataclass
class MTPOutput:
    """Raw results of one batch: energies (B,), forces (N, 3) and virials (B, 3, 3) in eV, float64 numpy."""

    energy: np.ndarray
    forces: np.ndarray | None = None
    virial: np.ndarray | None = None


class MTPPotential(Potential):
    """A trained MTP that evaluates whole batches of structures in one pass."""

    implemented_properties = ALL_PROPERTIES
    #: The active set that grades every prediction (card option ``active_set``, mtp_grade.py), or None.
    grader: MTPGrader | None = None

    def __init__(
        self, card: ModelCard, mtp: MTPFile, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
    ):
        self.card = card
        self.mtp = mtp
        self.device = torch.device(device)
        self.dtype = dtype
        self.species_of = _species_map(card, mtp)
        self.elements = frozenset(int(z) for z in np.flatnonzero(self.species_of >= 0))
        self.cutoff = mtp.max_dist

        def tensor(values, dtype=dtype):
            return torch.as_tensor(np.asarray(values), dtype=dtype, device=self.device)

        species, funcs, size = mtp.species_count, mtp.radial_funcs_count, mtp.radial_basis_size
        # (S*S, R, F): the radial coefficients of each (central, neighbour) species pair.
        self._radial = tensor(mtp.radial_coeffs.reshape(species * species, funcs, size).transpose(0, 2, 1).copy())
        basic = mtp.alpha_index_basic
        # Monomials u_x^px u_y^py u_z^pz are built degree by degree, each from a parent of one degree less;
        # basic moment (mu, p) is column p * F + mu of the per-atom products.
        steps, powers = monomial_steps(basic[:, 1:])
        self._monomial_steps = [(parents.to(self.device), axes.to(self.device)) for parents, axes in steps]
        position = {power: index for index, power in enumerate(powers)}
        columns = [position[tuple(power)] * funcs + mu for mu, *power in basic.tolist()]
        self._basic_columns = tensor(columns, torch.int64)
        self._waves = [
            (tensor(rows[:, 0], torch.int64), tensor(rows[:, 1], torch.int64), tensor(rows[:, 2]),
             tensor(rows[:, 3], torch.int64))
            for rows in contraction_waves(mtp.alpha_index_times)
        ]  # fmt: skip
        self._mapping = tensor(mtp.alpha_moment_mapping, torch.int64)
        self._moment_coeffs = tensor(mtp.moment_coeffs)
        self._species_coeffs = tensor(mtp.species_coeffs)

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one pass; gradients are taken only for forces or stress."""
        graph = build_graph(systems, self.cutoff)
        output = self.evaluate(graph, need_grad=needs_gradients(properties))
        stress = None if output.virial is None else divide_by_volume(systems, -output.virial)  # ASE: -W / V
        predictions = split_batch(systems, properties, output.energy, output.forces, stress)
        return self.graded(predictions, graph)

    @property
    def tensor_native(self) -> bool:
        """The tensor path stays on the device, except with an active set (its grades are computed on the host)."""
        return self.grader is None

    def predict_tensors(self, batch: TensorBatch, properties: Sequence[str] = ALL_PROPERTIES) -> TensorPrediction:
        """Evaluate a device batch without a host round trip: edges from ``batch.neighbor_list``, then as
        :meth:`evaluate` does (the same edge order, so the same sums); falls back with an active set."""
        if not self.tensor_native or batch.n_systems == 0:
            return super().predict_tensors(batch, properties)
        need_grad = needs_gradients(properties)
        edges = batch.neighbor_list(self.cutoff)
        vectors64 = batch.edge_vectors(edges)
        keep = torch.nonzero((vectors64 * vectors64).sum(dim=1) < self.cutoff**2).flatten()  # r < max_dist
        order = keep[torch.argsort(edges.senders[keep], stable=True)]
        n_atoms, n_systems, device = int(batch.positions.shape[0]), batch.n_systems, self.device
        senders, receivers = edges.senders[order].to(device), edges.receivers[order].to(device)
        counts = torch.bincount(senders, minlength=n_atoms)
        slots = torch.arange(senders.shape[0], device=device) - (torch.cumsum(counts, 0) - counts)[senders]
        index = EdgeIndex(senders, receivers, slots, int(counts.max()) if n_atoms else 0)
        species_of = torch.as_tensor(self.species_of, device=device)
        atom_batch = batch.batch.to(device)
        with torch.inference_mode(False), torch.set_grad_enabled(need_grad):
            vectors = vectors64[order].detach().to(device, self.dtype).requires_grad_(need_grad)
            site = self.site_energies(vectors, index, species_of[batch.numbers.to(device)])
            energy = torch.zeros(n_systems, dtype=self.dtype, device=device).index_add(0, atom_batch, site)
            gradient = torch.zeros_like(vectors)
            if need_grad and vectors.shape[0] > 0:
                (gradient,) = torch.autograd.grad(energy.sum(), vectors)
        result = TensorPrediction(energy.detach().to(torch.float64))
        if need_grad:
            zeros = torch.zeros((n_atoms, 3), dtype=self.dtype, device=device)
            forces = zeros.index_add(0, senders, gradient).index_add(0, receivers, gradient, alpha=-1)
            edge_virial = -gradient[:, :, None] * vectors.detach()[:, None, :]
            virial = torch.zeros((n_systems, 3, 3), dtype=self.dtype, device=device)
            virial = virial.index_add(0, atom_batch[senders], edge_virial).to(torch.float64)
            virial = 0.5 * (virial + virial.transpose(1, 2))
            volume = batch.volumes().to(device)
            stress = torch.where(volume[:, None, None] > 0, -virial / volume.clamp(min=1e-300)[:, None, None], 0.0)
            result.forces = forces.to(torch.float64) if FORCES in properties else None
            result.stress = stress if STRESS in properties else None
        return result

    def evaluate(self, graph: BatchedGraph, need_grad: bool = True) -> MTPOutput:
        """Energies of every system of ``graph``; with ``need_grad`` also forces and MLIP's virials."""
        vectors_np = graph.edge_vectors()
        keep = np.einsum("ij,ij->i", vectors_np, vectors_np) < self.cutoff**2  # MLIP's test: r < max_dist
        order = np.flatnonzero(keep)[np.argsort(graph.senders[keep], kind="stable")]
        n_atoms, n_systems = graph.numbers.shape[0], graph.n_systems
        # Gradients must work even when the caller runs under no_grad or inference_mode, so every tensor that
        # autograd saves is made outside inference mode.
        with torch.inference_mode(False), torch.set_grad_enabled(need_grad):
            edges = EdgeIndex.from_numpy(graph.senders[order], graph.receivers[order], n_atoms, self.device)
            species = torch.as_tensor(self.species_of[graph.numbers], device=self.device)
            batch = torch.as_tensor(graph.batch, device=self.device)
            vectors = torch.as_tensor(vectors_np[order], dtype=self.dtype, device=self.device)
            vectors.requires_grad_(need_grad)
            site = self.site_energies(vectors, edges, species)
            energy = torch.zeros(n_systems, dtype=self.dtype, device=self.device).index_add(0, batch, site)
            if not need_grad or vectors.shape[0] == 0:
                forces = np.zeros((n_atoms, 3)) if need_grad else None
                virial = np.zeros((n_systems, 3, 3)) if need_grad else None
                return MTPOutput(_numpy(energy), forces, virial)
            (gradient,) = torch.autograd.grad(energy.sum(), vectors)
        zeros = torch.zeros((n_atoms, 3), dtype=self.dtype, device=self.device)
        forces = zeros.index_add(0, edges.senders, gradient).index_add(0, edges.receivers, gradient, alpha=-1)
        edge_virial = -gradient[:, :, None] * vectors.detach()[:, None, :]
        virial = torch.zeros((n_systems, 3, 3), dtype=self.dtype, device=self.device)
        virial = virial.index_add(0, batch[edges.senders], edge_virial)
        virial = 0.5 * (virial + virial.transpose(1, 2))
        return MTPOutput(_numpy(energy), _numpy(forces), _numpy(virial))

    def site_energies(self, vectors: torch.Tensor, edges: EdgeIndex, species: torch.Tensor) -> torch.Tensor:
        """(N,) energy of each atom from the (E, 3) vectors of its edges to neighbours closer than max_dist."""
        return self._species_coeffs[species] + self._moment_coeffs @ self.basis_values(vectors, edges, species)

    def basis_values(
        self,
        vectors: torch.Tensor,
        edges: EdgeIndex,
        species: torch.Tensor,
        radial_coeffs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(alpha_scalar_moments, N) the scalar moments ``M_{mapping[k]}(i)`` that the moment coefficients weigh.

        ``radial_coeffs`` (N, S, R, F), each atom's own copy of its species' radial coefficients (for the
        derivatives of each site energy by them, mtp_grade.py); the model's when None.
        """
        mtp = self.mtp
        distance = torch.linalg.vector_norm(vectors, dim=1)
        basis = chebyshev_basis(distance, mtp.min_dist, mtp.max_dist, mtp.radial_basis_size, mtp.scaling)
        if radial_coeffs is None:
            coefficients = self._radial[species[edges.senders] * mtp.species_count + species[edges.receivers]]
        else:
            coefficients = radial_coeffs[edges.senders, species[edges.receivers]]
        radial = torch.bmm(basis[:, None, :], coefficients)[:, 0]  # (E, F): f_mu = sum_k c[pair, k, mu] Q_k

        # Basic moments as one batched matrix product per atom over its neighbour slots (zero-padded):
        # sum_j m_p(u_ij) f_mu(r_ij) = (M_i R_i)[p, mu], with M_i (P, slots) the monomials, R_i (slots, F).
        n_atoms, slots = species.shape[0], (edges.senders, edges.slots)
        padded_radial = vectors.new_zeros((n_atoms, edges.max_neighbours, radial.shape[1])).index_put_(slots, radial)
        unit = vectors.new_zeros((n_atoms, edges.max_neighbours, 3)).index_put_(slots, vectors / distance[:, None])
        products = torch.bmm(self._monomials(unit.transpose(1, 2)), padded_radial).reshape(n_atoms, -1)
        # Moments are kept as (moment, atom) rows: the contractions then gather and add whole contiguous rows.
        basic = products.index_select(1, self._basic_columns).T
        composite = vectors.new_zeros((mtp.alpha_moments_count - basic.shape[0], n_atoms))
        moments = torch.cat([basic, composite], dim=0)
        for first, second, mult, target in self._waves:
            moments = moments.index_add(0, target, mult[:, None] * moments[first] * moments[second])
        return moments[self._mapping]

    def _monomials(self, unit: torch.Tensor) -> torch.Tensor:
        """(N, P, slots) monomials of the (N, 3, slots) unit vectors, one gather and one product per degree."""
        degrees = [torch.ones_like(unit[:, :1])]
        for parents, axes in self._monomial_steps:
            degrees.append(degrees[-1][:, parents] * unit[:, axes])
        return torch.cat(degrees, dim=1)


@dataclass
class EdgeIndex:
    """Edges shorter than the cutoff, each with its slot among its sender's edges (for padded per-atom blocks)."""

    senders: torch.Tensor
    receivers: torch.Tensor
    slots: torch.Tensor
    max_neighbours: int

    @classmethod
    def from_numpy(cls, senders: np.ndarray, receivers: np.ndarray, n_atoms: int, device: torch.device) -> EdgeIndex:
        """``senders`` must be sorted."""
        counts = np.bincount(senders, minlength=n_atoms)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slots = np.arange(senders.shape[0]) - first[senders]
        return cls(
            senders=torch.as_tensor(senders, device=device),
            receivers=torch.as_tensor(receivers, device=device),
            slots=torch.as_tensor(slots, device=device),
            max_neighbours=int(counts.max()) if n_atoms else 0,
        )


def chebyshev_basis(
    distance: torch.Tensor, min_dist: float, max_dist: float, size: int, scaling: float
) -> torch.Tensor:
    """(E, size) MLIP's ``RBChebyshev`` values: Chebyshev polynomials of ξ(r) times ``scaling (r - max_dist)²``."""
    ksi = (2 * distance - (min_dist + max_dist)) / (max_dist - min_dist)
    envelope = scaling * (distance - max_dist) ** 2
    values = [envelope, ksi * envelope]
    for _ in range(2, size):
        values.append(2 * ksi * values[-1] - values[-2])
    return torch.stack(values[:size], dim=1)


def monomial_steps(powers: np.ndarray) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[int, int, int]]]:
    """How to build the monomials ``powers`` (rows px, py, pz) degree by degree.

    Returns, for each degree d >= 1, the index of each monomial's parent among those of degree d - 1 and the axis
    that multiplies it; and the (px, py, pz) of every monomial built, in the order they are concatenated.
    """
    needed = {tuple(int(p) for p in row) for row in powers}
    for power in list(needed):  # every ancestor down to degree 0
        while sum(power) > 0:
            power = _parent(power)
            needed.add(power)
    top = max(sum(power) for power in needed)
    levels = [sorted(power for power in needed if sum(power) == degree) for degree in range(top + 1)]
    steps = []
    for lower, level in itertools.pairwise(levels):
        parents = [lower.index(_parent(power)) for power in level]
        axes = [next(a for a in range(3) if power[a] > 0) for power in level]
        steps.append((torch.tensor(parents), torch.tensor(axes)))
    return steps, [power for level in levels for power in level]


def _parent(power: tuple[int, int, int]) -> tuple[int, int, int]:
    """The monomial that times u along the first axis with a positive power gives ``power``."""
    axis = next(a for a in range(3) if power[a] > 0)
    return tuple(p - (a == axis) for a, p in enumerate(power))  # type: ignore[return-value]


def contraction_waves(times: np.ndarray) -> list[np.ndarray]:
    """Split the ``alpha_index_times`` rows into consecutive groups that can run at once.

    A row starts a new group when it reads a moment written earlier in the current group, so every row sees
    exactly the values it would see if the rows ran one by one in file order.
    """
    waves: list[np.ndarray] = []
    start, written = 0, set()
    for index, (first, second, _, target) in enumerate(times.tolist()):
        if first in written or second in written:
            waves.append(times[start:index])
            start, written = index, set()
        written.add(target)
    if start < len(times):
        waves.append(times[start:])
    return waves


def _species_map(card: ModelCard, mtp: MTPFile) -> np.ndarray:
    """Atomic number -> species index (-1 for none), from the card's elements in species-index order."""
    if len(card.elements) != mtp.species_count:
        raise CardError(
            f"{card.name}: the card lists {len(card.elements)} elements, the .mtp file has species_count = "
            f"{mtp.species_count}; list the element of each species index, in order"
        )
    if len(set(card.elements)) != len(card.elements):
        raise CardError(f"{card.name}: the card lists an element twice: {list(card.elements)}")
    species_of = np.full(len(chemical_symbols), -1, dtype=np.int64)
    for index, symbol in enumerate(card.elements):
        species_of[atomic_numbers[symbol]] = index
    return species_of


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()
