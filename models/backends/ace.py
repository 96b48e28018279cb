"""ACE backend: pacemaker ``.yaml`` / ``.yace`` potentials evaluated for a whole batch of structures in torch.

pacemaker's evaluator (python-ace, LAMMPS ML-PACE) runs on the CPU, one atom at a time. This module is our own
implementation of the same model, so that a batch of structures is one set of tensor operations on CPU or CUDA:

1. edges of the batched neighbour graph (:func:`mlipserve.models.graph.build_graph`), grouped by species pair;
2. per edge the radial basis g_k(r), radial functions R_nl(r), spherical harmonics Y_lm(r̂) and core term;
3. atomic base A[i, mu_j, n, l, m] = sum_j R_nl Y_lm (rank 1: sum_j g_k), summed with ``index_add``;
4. densities rho_p = sum Re(ctilde * prod_t A[...]) by gathering the A's of every m-combination at once;
5. embedding, core-repulsion / ZBL switching, E0, and an optional tabulated pair potential (ACEpotentials.jl);
6. forces and stress by autograd with respect to the edge vectors.

Card options: ``pair_table`` + ``pair_table_sha256`` (a LAMMPS table file in the model directory, added to the
energy), ``dtype`` (float64 by default, or float32) and ``radial`` (``spline``, the default, tabulates the radial
functions exactly as pacemaker does; ``exact`` evaluates them analytically), and ``active_set`` +
``active_set_sha256`` (a pacemaker ``.asi`` file: every prediction then carries each atom's γ, ace_gamma.py). The
spherical harmonics are
sqrt(4 pi) times the orthonormal complex ones with the Condon-Shortley phase, as pacemaker's. The tests compare
energies and forces with python-ace's ``PyACECalculator`` on the same files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers

from ...errors import ErrorCode
from ..cards import CardError, ModelCard
from ..edge_gradients import predict_on_edges
from ..graph import BatchedGraph, build_graph, neighbor_list
from ..potential import (
    ALL_PROPERTIES,
    Potential,
    Prediction,
    StructureRejected,
)
from ..system import AtomicSystem
from .ace_format import AceFormatError, AceModel, PairTable, read_pair_table, read_potential
from .ace_gamma import AceGammaGrader
from .ace_radial import (
    RadialSpline,
    core_repulsion,
    cutoff_poly,
    embedding_energy,
    hermite_table,
    radial_basis,
    radial_functions,
    zbl,
)

_OPTIONS = {"pair_table", "pair_table_sha256", "dtype", "radial", "active_set", "active_set_sha256"}
_RADIAL_MODES = ("spline", "exact")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> AcePotential:
    """Read the ACE file named by the card (already hash-checked) and, if the card names one, its pair table."""
    unknown = set(card.options) - _OPTIONS
    if unknown:
        raise CardError(f"{card.name}: unknown ACE options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    try:
        model = read_potential(checkpoint)
        table = None
        if "pair_table" in card.options:
            table = read_pair_table(verified_companion(card, "pair_table"))
    except AceFormatError as error:
        raise CardError(f"{card.name}: {error}") from error
    dtype_name = str(card.options.get("dtype", "float64"))
    if dtype_name not in _DTYPES:
        raise CardError(f"{card.name}: options.dtype must be one of {sorted(_DTYPES)}, got {dtype_name!r}")
    radial = str(card.options.get("radial", "spline"))
    if radial not in _RADIAL_MODES:
        raise CardError(f"{card.name}: options.radial must be one of {_RADIAL_MODES}, got {radial!r}")
    potential = AcePotential(card, model, table, device, _DTYPES[dtype_name], radial=radial)
    if "active_set" in card.options:
        potential.grader = AceGammaGrader.from_file(potential, verified_companion(card, "active_set"))
        potential.uncertainty_kind = "gamma"
    return potential


def verified_companion(card: ModelCard, option: str) -> Path:
    """A second file of a model (``options.<option>``), resolved inside the model directory and hash-checked."""
    digest = card.options.get(f"{option}_sha256")
    if not digest:
        raise CardError(f"{card.name}: options.{option} needs options.{option}_sha256")
    companion = dataclasses.replace(card, checkpoint=str(card.options[option]), sha256=str(digest).lower())
    return companion.verified_checkpoint()


@dataclasses.dataclass
class AtomicBase:
    """Per-atom sums over neighbours, feature-major: ``a1`` (species * nradbase, N) rank-1 base ``sum_j g_k``;
    ``a`` (species * nradmax * (lmax+1)², N) complex ``sum_j R_nl Y_lm``; ``rho_core`` (N,) core-repulsion term;
    and the edges of each bond that produced them (for the ZBL switch)."""

    a1: torch.Tensor
    a: torch.Tensor
    rho_core: torch.Tensor
    edge_ids: list[torch.Tensor]
    inner_parts: list[tuple]


class AcePotential(Potential):
    """An ACE potential (C-tilde form) evaluated batch-wise in torch."""

    implemented_properties = ALL_PROPERTIES
    #: Size of the per-rank (terms x atoms) product tensors that a chunk of atoms may create.
    product_chunk_elements = 1 << 24
    #: The active set that gives every prediction its γ (card option ``active_set``, ace_gamma.py), or None.
    grader: AceGammaGrader | None = None

    def __init__(
        self,
        card: ModelCard,
        model: AceModel,
        pair_table: PairTable | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        radial: str = "spline",
    ):
        """``radial``: "spline" tabulates radial functions exactly as pacemaker does; "exact" evaluates them."""
        self.card, self.model, self.pair_table = card, model, pair_table
        self.radial_mode = radial
        self.device, self.dtype = torch.device(device), dtype
        self.elements = frozenset(atomic_numbers[e] for e in model.elements)
        self.cutoff = max(model.cutoff, pair_table.cutoff if pair_table else 0.0)
        self._species_of_z = np.full(119, -1, dtype=np.int64)
        for mu, element in enumerate(model.elements):
            self._species_of_z[atomic_numbers[element]] = mu
        self._build_tables()

    # -- set-up -----------------------------------------------------------------------------------------------

    def _build_tables(self) -> None:
        """Turn the C-tilde functions into gather indices and coefficient matrices, per central species and rank."""
        model, device, dtype = self.model, self.device, self.dtype
        n_species = len(model.elements)
        bonds = model.bonds.values()
        self.lmax = max([bond.lmax for bond in bonds] + [max(f.ls) for fs in model.functions.values() for f in fs])
        self.nradmax = max(bond.nradmax for bond in bonds)
        self.nradbase = max(bond.nradbase for bond in bonds)
        self.ndensity = max(embedding.ndensity for embedding in model.embeddings.values())
        n_lm = (self.lmax + 1) ** 2
        # A is summed for m >= 0 only (columns l(l+1)/2 + m); A[l, -m] = (-1)^m conj(A[l, m]) fills the rest.
        self._l_of_positive_m = torch.tensor(
            [ell for ell in range(self.lmax + 1) for _ in range(ell + 1)], device=device
        )
        full_to_positive, negative_sign = [], []
        for ell in range(self.lmax + 1):
            for m in range(-ell, ell + 1):
                full_to_positive.append(ell * (ell + 1) // 2 + abs(m))
                negative_sign.append((-1) ** m if m < 0 else 0)
        self._full_to_positive = torch.tensor(full_to_positive, device=device)
        self._negative_sign = torch.tensor(negative_sign, dtype=dtype, device=device)
        self._crad = {
            pair: None if bond.crad is None else torch.as_tensor(bond.crad, dtype=dtype, device=device)
            for pair, bond in model.bonds.items()
        }
        self._e0 = torch.tensor(model.e0, dtype=dtype, device=device)
        self._splines: dict[tuple[int, int], RadialSpline] = {}
        if self.radial_mode == "spline":
            for pair, bond in model.bonds.items():
                if bond.julia is None:  # pacemaker evaluates ACE.jl's basis directly, without a table
                    crad = torch.as_tensor(bond.crad, dtype=torch.float64)  # the table is built in float64
                    functions = partial(self._exact_radial, pair, crad=crad)
                    self._splines[pair] = RadialSpline(functions, bond.rcut, model.delta_spline_bins, dtype, device)
        # Per central species: rank-1 (index into A1, coefficients) and rank >= 2 (indices into A, coefficients).
        self._rank1: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._products: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for mu0 in range(n_species):
            rank1_index, rank1_coefficients = [], []
            by_rank: dict[int, tuple[list, list]] = {}
            for function in model.functions.get(mu0, []):
                coefficients = np.zeros((function.ctildes.shape[0], self.ndensity))
                coefficients[:, : function.ctildes.shape[1]] = function.ctildes
                if function.rank == 1:
                    rank1_index.append(function.mus[0] * self.nradbase + function.ns[0] - 1)
                    rank1_coefficients.append(coefficients[0])
                    continue
                slots = [
                    (mu * self.nradmax + n - 1) * n_lm + ell * ell + ell + function.ms[:, t]
                    for t, (mu, n, ell) in enumerate(zip(function.mus, function.ns, function.ls, strict=True))
                ]
                indices, coefficient_rows = by_rank.setdefault(function.rank, ([], []))
                indices.append(np.stack(slots, axis=1))
                coefficient_rows.append(coefficients)
            if rank1_index:
                self._rank1[mu0] = (
                    torch.tensor(rank1_index, device=device),
                    torch.as_tensor(np.array(rank1_coefficients), dtype=dtype, device=device),
                )
            self._products[mu0] = [
                (
                    torch.as_tensor(np.concatenate(indices), device=device),
                    torch.as_tensor(np.concatenate(rows), dtype=dtype, device=device),
                )
                for _, (indices, rows) in sorted(by_rank.items())
            ]
        if self.pair_table is not None:
            self._pair = {}
            for pair, (r, energy, force) in self.pair_table.sections.items():
                self._pair[pair] = (
                    float(r[0]),
                    float(r[1] - r[0]),
                    torch.as_tensor(energy, dtype=dtype, device=device),
                    torch.as_tensor(-force, dtype=dtype, device=device),
                )

    # -- contract -----------------------------------------------------------------------------------------------

    def check_structure(self, system: AtomicSystem) -> None:
        """Reject distances below the pair table's first point (the table cannot be extrapolated)."""
        if self.pair_table is not None and system.n_atoms > 1:
            shortest = min(float(r[0]) for r, _, _ in self.pair_table.sections.values())
            i, _, _ = neighbor_list(system, shortest)
            if i.size:
                raise StructureRejected(
                    ErrorCode.ATOMS_TOO_CLOSE,
                    f"{self.card.name}: two atoms are closer than the pair table's {shortest} Å",
                )

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` at once; autograd is used only when forces or stress are asked for."""
        graph = build_graph(systems, self.cutoff)
        energy_of = partial(self.system_energies, graph)
        predictions = predict_on_edges(systems, properties, graph, energy_of, dtype=self.dtype, device=self.device)
        return self.graded(predictions, graph)

    # -- the model ----------------------------------------------------------------------------------------------

    def system_energies(self, graph: BatchedGraph, vectors: torch.Tensor) -> torch.Tensor:
        """Total energy of each system of ``graph``, given its edge vectors (which may require grad)."""
        device, dtype = self.device, self.dtype
        n_atoms = int(graph.numbers.shape[0])
        species = torch.as_tensor(self._species_of_z[graph.numbers], device=device)
        senders = torch.as_tensor(graph.senders, device=device)
        receivers = torch.as_tensor(graph.receivers, device=device)
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        atom_energy = self.atomic_energies(species, senders, receivers, vectors, lengths, n_atoms)
        if self.pair_table is not None:
            atom_energy = atom_energy + self._pair_energies(graph, species, senders, receivers, lengths, n_atoms)
        batch = torch.as_tensor(graph.batch, device=device)
        return torch.zeros(graph.n_systems, dtype=dtype, device=device).index_add(0, batch, atom_energy)

    def atomic_energies(
        self,
        species: torch.Tensor,
        senders: torch.Tensor,
        receivers: torch.Tensor,
        vectors: torch.Tensor,
        lengths: torch.Tensor,
        n_atoms: int,
    ) -> torch.Tensor:
        """ACE energy of every atom (embedding, core term, E0) from the edges around it."""
        model, device, dtype = self.model, self.device, self.dtype
        n_species = len(model.elements)
        base = self.atomic_base(species, senders, receivers, vectors, lengths, n_atoms)
        a1, a, rho_core = base.a1, base.a, base.rho_core
        edge_ids, inner_parts = base.edge_ids, base.inner_parts
        ace_energy = torch.zeros(n_atoms, dtype=dtype, device=device)
        for mu0 in range(n_species):
            atoms = torch.nonzero(species == mu0).flatten()
            if atoms.numel() == 0:
                continue
            rho = torch.zeros(atoms.numel(), self.ndensity, dtype=dtype, device=device)
            if mu0 in self._rank1:
                index, coefficients = self._rank1[mu0]
                rho = rho + a1[index][:, atoms].T @ coefficients
            a_atoms = a[:, atoms].contiguous()
            for index, coefficients in self._products[mu0]:
                rho = rho + self._product_densities(a_atoms, index, coefficients)
            embedding = model.embeddings[mu0]
            energy = embedding_energy(embedding, rho)
            ace_energy = ace_energy.index_add(0, atoms, energy)
        if model.inner_cutoff_type == "zbl":
            switch = self._zbl_switch(senders, edge_ids, inner_parts, n_atoms)
            total = ace_energy * switch + rho_core * (1.0 - switch)
        else:
            rho_cut = torch.tensor([model.embeddings[mu].rho_core_cutoff for mu in range(n_species)], device=device)
            drho_cut = torch.tensor([model.embeddings[mu].drho_core_cutoff for mu in range(n_species)], device=device)
            switch = self._density_switch(rho_core, rho_cut[species].to(dtype), drho_cut[species].to(dtype))
            total = ace_energy * switch + rho_core
        return total + self._e0[species]

    def atomic_base(
        self,
        species: torch.Tensor,
        senders: torch.Tensor,
        receivers: torch.Tensor,
        vectors: torch.Tensor,
        lengths: torch.Tensor,
        n_atoms: int,
    ) -> AtomicBase:
        """The atomic base of every atom (rank 1: ``sum_j g_k``; higher ranks: ``sum_j R_nl Y_lm``) and core term."""
        model, device, dtype = self.model, self.device, self.dtype
        n_species = len(model.elements)
        centre_species, neighbour_species = species[senders], species[receivers]
        edge_ids, g_parts, r_parts, core_parts, inner_parts = [], [], [], [], []
        for (mu_i, mu_j), bond in model.bonds.items():
            selected = torch.nonzero(
                (centre_species == mu_i) & (neighbour_species == mu_j) & (lengths < bond.rcut)
            ).flatten()
            if selected.numel() == 0:
                continue
            r = lengths[selected]
            if (mu_i, mu_j) in self._splines:
                values = self._splines[(mu_i, mu_j)](r)
            else:
                values = self._exact_radial((mu_i, mu_j), r, crad=self._crad[(mu_i, mu_j)])
            g = values[:, : bond.nradbase]
            radial = values[:, bond.nradbase : -1].reshape(-1, bond.nradmax, bond.lmax + 1)
            core = values[:, -1]
            edge_ids.append(selected)
            g_parts.append(torch.nn.functional.pad(g, (0, self.nradbase - g.shape[1])))
            pad = (0, self.lmax + 1 - radial.shape[2], 0, self.nradmax - radial.shape[1])
            r_parts.append(torch.nn.functional.pad(radial, pad))
            core_parts.append(core)
            inner_parts.append((bond.r_in, bond.delta_in, r))
        rho_core = torch.zeros(n_atoms, dtype=dtype, device=device)
        a1 = torch.zeros(n_atoms * n_species, self.nradbase, dtype=dtype, device=device)
        n_positive = (self.lmax + 1) * (self.lmax + 2) // 2
        # feature-major accumulators (components x atom-species slots): edge-wide operations run along the edges
        a_positive = torch.zeros(self.nradmax * n_positive * 2, n_atoms * n_species, dtype=dtype, device=device)
        if edge_ids:
            ids = torch.cat(edge_ids)
            centres = senders[ids]
            slots = centres * n_species + neighbour_species[ids]
            unit = vectors[ids] / lengths[ids, None]
            ylm = spherical_harmonics(unit, self.lmax)  # (n_positive, 2, E): real and imaginary parts
            radial = torch.cat(r_parts)[:, :, self._l_of_positive_m]
            a1 = a1.index_add(0, slots, torch.cat(g_parts))
            phi = radial.permute(1, 2, 0)[:, :, None, :] * ylm[None]  # (nradmax, n_positive, 2, E)
            a_positive = a_positive.index_add(1, slots, phi.reshape(-1, slots.shape[0]))
            rho_core = rho_core.index_add(0, centres, torch.cat(core_parts))
        # feature-major layout: gathering whole rows (one A component for all atoms) is contiguous
        a1 = a1.reshape(n_atoms, n_species * self.nradbase).T
        a_positive = a_positive.reshape(self.nradmax, n_positive, 2, n_atoms, n_species).permute(4, 0, 1, 3, 2)
        a = self._all_m(torch.view_as_complex(a_positive.contiguous())).reshape(-1, n_atoms)
        return AtomicBase(a1=a1, a=a, rho_core=rho_core, edge_ids=edge_ids, inner_parts=inner_parts)

    def _product_densities(self, a: torch.Tensor, index: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """``sum_terms Re(prod_t A[index[term, t]]) * coefficients[term]`` per atom, in chunks of atoms.

        ``a`` is (components, atoms) complex; the (terms, atoms) products, one per rank kept by autograd, stay near
        ``product_chunk_elements`` each.
        """
        chunk = max(1, self.product_chunk_elements // max(1, index.shape[0]))
        parts = []
        for start in range(0, a.shape[1], chunk):
            block = a[:, start : start + chunk]
            product = block[index[:, 0]]
            for t in range(1, index.shape[1]):
                product = product * block[index[:, t]]
            parts.append(product.real.T @ coefficients)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _exact_radial(self, pair: tuple[int, int], r: torch.Tensor, crad: torch.Tensor | None) -> torch.Tensor:
        """[g_k (nradbase), R_nl (nradmax * (lmax+1)), core term (1)] of one bond at distances ``r``: (E, F)."""
        model, bond = self.model, self.model.bonds[pair]
        g = radial_basis(bond, r, model.inner_cutoff_type)
        radial = radial_functions(bond, g, crad)
        if model.inner_cutoff_type == "zbl":
            core = zbl(bond, r, atomic_numbers[model.elements[pair[0]]], atomic_numbers[model.elements[pair[1]]])
        else:
            core = core_repulsion(bond, r, model.inner_cutoff_type)
        return torch.cat([g, radial.reshape(r.shape[0], -1), core[:, None]], dim=1)

    def _all_m(self, a_positive: torch.Tensor) -> torch.Tensor:
        """A for m = -l..l (columns l*l + l + m) from A for m >= 0, using A[l, -m] = (-1)^m conj(A[l, m])."""
        gathered = a_positive.index_select(2, self._full_to_positive)  # (species, nradmax, n_lm, atoms)
        sign = self._negative_sign[:, None]
        return torch.where(sign == 0, gathered, sign.to(gathered.dtype) * gathered.conj())

    @staticmethod
    def _density_switch(rho_core: torch.Tensor, rho_cut: torch.Tensor, drho_cut: torch.Tensor) -> torch.Tensor:
        """1 below ``rho_cut - drho_cut``, 0 above ``rho_cut``, pacemaker's polynomial in between (per atom)."""
        t = ((rho_core - rho_cut + drho_cut) / drho_cut).clamp(0.0, 1.0)
        x = 1.0 - 2.0 * t
        return 0.5 + 3.75 * (x / 4.0 - x**3 / 6.0 + x**5 / 20.0)

    def _zbl_switch(self, senders, edge_ids, inner_parts, n_atoms: int) -> torch.Tensor:
        """ZBL regime: blend ACE to ZBL by the nearest neighbour's distance below the inner cutoff (per atom)."""
        device, dtype = self.device, self.dtype
        switch = torch.ones(n_atoms, dtype=dtype, device=device)
        if not edge_ids:
            return switch
        ids = torch.cat(edge_ids)
        centres = senders[ids]
        distance = torch.cat([r - (r_in - delta) for r_in, delta, r in inner_parts])
        fcut = torch.cat([cutoff_poly(delta - (r - (r_in - delta)), delta, delta) for r_in, delta, r in inner_parts])
        key = distance.detach()
        nearest = torch.full((n_atoms,), float(self.model.cutoff), dtype=dtype, device=device)
        nearest = nearest.scatter_reduce(0, centres, key, reduce="amin", include_self=True)
        is_nearest = (key == nearest[centres]) & (key < self.model.cutoff)
        order = torch.arange(ids.numel(), device=device)
        first = torch.full((n_atoms,), ids.numel(), device=device)
        first = first.scatter_reduce(0, centres[is_nearest], order[is_nearest], reduce="amin", include_self=True)
        has = first < ids.numel()
        return switch.index_put((torch.nonzero(has).flatten(),), fcut[first[has]])

    def _pair_energies(self, graph, species, senders, receivers, lengths, n_atoms: int) -> torch.Tensor:
        """Half of the tabulated pair energy of every edge, summed on its centre atom."""
        energy = torch.zeros(n_atoms, dtype=self.dtype, device=self.device)
        elements = self.model.elements
        for mu_i in range(len(elements)):
            for mu_j in range(len(elements)):
                key = frozenset((elements[mu_i], elements[mu_j]))
                if key not in self._pair:
                    continue
                start, step, values, slopes = self._pair[key]
                selected = torch.nonzero((species[senders] == mu_i) & (species[receivers] == mu_j)).flatten()
                if selected.numel() == 0:
                    continue
                pair = hermite_table(lengths[selected], start, step, values, slopes)
                energy = energy.index_add(0, senders[selected], 0.5 * pair)
        return energy


def spherical_harmonics(unit: torch.Tensor, lmax: int) -> torch.Tensor:
    """Y_lm (m >= 0) of unit vectors as ((lmax+1)(lmax+2)/2, 2, E): real and imaginary parts, row l(l+1)/2 + m.

    Normalised to Y_00 = 1 (sqrt(4 pi) x orthonormal, Condon-Shortley phase), as pacemaker's. Computed as
    Y_lm = N_lm Q_lm(z) (x + iy)^m, where Q_lm is the associated Legendre function divided by sin^m(theta).
    """
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    powers = [(torch.ones_like(x), torch.zeros_like(x))]  # (x + iy)^m as (real, imaginary)
    for _ in range(lmax):
        real, imaginary = powers[-1]
        powers.append((real * x - imaginary * y, real * y + imaginary * x))
    q: dict[tuple[int, int], torch.Tensor] = {}
    for m in range(lmax + 1):
        double_factorial = float(np.prod(np.arange(2 * m - 1, 0, -2))) if m > 0 else 1.0
        q[(m, m)] = torch.full_like(z, (-1) ** m * double_factorial)
        if m + 1 <= lmax:
            q[(m + 1, m)] = (2 * m + 1) * z * q[(m, m)]
        for ell in range(m + 2, lmax + 1):
            q[(ell, m)] = ((2 * ell - 1) * z * q[(ell - 1, m)] - (ell + m - 1) * q[(ell - 2, m)]) / (ell - m)
    columns = []
    for ell in range(lmax + 1):
        for m in range(ell + 1):
            norm = float(np.sqrt((2 * ell + 1) / np.prod(np.arange(ell - m + 1, ell + m + 1, dtype=float))))
            radial_part = norm * q[(ell, m)]
            columns.append(torch.stack([radial_part * powers[m][0], radial_part * powers[m][1]]))
    return torch.stack(columns)
