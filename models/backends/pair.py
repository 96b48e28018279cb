"""Pair backend: analytic pair potentials (Lennard-Jones, Morse) from a parameter file, batched in torch.

Exactly ASE's :class:`~ase.calculators.lj.LennardJones` (its ``rc`` energy shift, or with ``smooth`` its cutoff
function between ``ro`` and ``rc``) and :class:`~ase.calculators.morse.MorsePotential` (its quintic cutoff between
``rcut1 r0`` and ``rcut2 r0``), with per-element-pair parameters (:mod:`.pair_format`). Hand-written because ASE's
calculators run one structure at a time in numpy; here a whole batch is one set of tensor operations:

1. edges of the batched neighbour graph (:func:`~mlipserve.models.graph.build_graph`, vesin) up to the largest
   pair cutoff, keeping those within their own pair's cutoff;
2. each edge's pair energy from its species pair's parameters; the energy is half the sum over edges (each pair
   is listed both ways);
3. forces and stress by autograd with respect to the edge vectors ``g = dE/dr_ij``: ``F_i += g``, ``F_j -= g``,
   stress ``Σ g ⊗ r_ij / V`` (ASE's sign).

It is also the cheapest model to serve: the server's own overhead is what remains when it runs
(``benchmarks/bench_latency.py``). The card's ``checkpoint`` is the parameter file; ``options.dtype`` may be
``float32`` (default ``float64``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers

from ..cards import CardError, ModelCard
from ..graph import build_graph
from ..potential import ALL_PROPERTIES, Potential, Prediction, divide_by_volume, needs_gradients, split_batch
from ..system import AtomicSystem
from .pair_format import LENNARD_JONES, PairFormatError, PairParameters, read_parameters

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_OPTIONS = {"dtype"}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> PairPotential:
    """Read the parameter file ``checkpoint`` (already hash-checked) and build its Potential on ``device``."""
    unknown = set(card.options) - _OPTIONS
    if unknown:
        raise CardError(f"{card.name}: unknown pair options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    dtype_name = str(card.options.get("dtype", "float64"))
    if dtype_name not in _DTYPES:
        raise CardError(f"{card.name}: options.dtype must be one of {sorted(_DTYPES)}, not {dtype_name!r}")
    try:
        parameters = read_parameters(checkpoint, card.elements)
    except PairFormatError as error:
        raise CardError(f"{card.name}: {error}") from None
    return PairPotential(card, parameters, device, _DTYPES[dtype_name])


class PairPotential(Potential):
    """A Lennard-Jones or Morse pair potential evaluated for a whole batch at once."""

    implemented_properties = ALL_PROPERTIES

    def __init__(
        self,
        card: ModelCard,
        parameters: PairParameters,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        self.card, self.parameters = card, parameters
        self.device, self.dtype = torch.device(device), dtype
        self.elements = frozenset(atomic_numbers[symbol] for symbol in parameters.elements)
        self.cutoff = parameters.cutoff
        self._species_of = np.full(119, -1, dtype=np.int64)
        for index, symbol in enumerate(parameters.elements):
            self._species_of[atomic_numbers[symbol]] = index
        # Each pair's cutoff (Å), in numpy: edges beyond it are dropped before any tensor is made.
        tables = parameters.tables
        self._pair_cutoff = tables["rc"] if parameters.potential == LENNARD_JONES else tables["rcut2"] * tables["r0"]
        self._tables = {key: torch.as_tensor(table.reshape(-1), dtype=dtype, device=self.device)
                        for key, table in tables.items()}  # fmt: skip

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one pass; gradients are taken only for forces or stress."""
        energy, forces, virial = self.evaluate(systems, need_grad=needs_gradients(properties))
        stress = None if virial is None else divide_by_volume(systems, virial)
        return split_batch(systems, properties, energy, forces, stress)

    def evaluate(
        self, systems: Sequence[AtomicSystem], need_grad: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Energies (B,), and with ``need_grad`` forces (N, 3) and virials Σ g ⊗ r (B, 3, 3), float64 numpy."""
        graph = build_graph(systems, self.cutoff)
        species = self._species_of[graph.numbers]
        pair = species[graph.senders] * len(self.parameters.elements) + species[graph.receivers]
        vectors_np = graph.edge_vectors()
        keep = np.flatnonzero(np.einsum("ij,ij->i", vectors_np, vectors_np) <= self._pair_cutoff.reshape(-1)[pair] ** 2)
        n_atoms, n_systems = graph.numbers.shape[0], graph.n_systems
        device, dtype = self.device, self.dtype
        with torch.inference_mode(False), torch.set_grad_enabled(need_grad):
            senders = torch.as_tensor(graph.senders[keep], device=device)
            receivers = torch.as_tensor(graph.receivers[keep], device=device)
            edge_system = torch.as_tensor(graph.batch[graph.senders[keep]], device=device)
            vectors = torch.as_tensor(vectors_np[keep], dtype=dtype, device=device).requires_grad_(need_grad)
            parameters = {key: table[torch.as_tensor(pair[keep], device=device)] for key, table in self._tables.items()}
            pair_energy = self.pair_energies(vectors, parameters)
            energy = torch.zeros(n_systems, dtype=dtype, device=device).index_add(0, edge_system, 0.5 * pair_energy)
            if not need_grad:
                return _numpy(energy), None, None
            if vectors.shape[0] == 0:
                return _numpy(energy), np.zeros((n_atoms, 3)), np.zeros((n_systems, 3, 3))
            (gradient,) = torch.autograd.grad(energy.sum(), vectors)
        forces = torch.zeros((n_atoms, 3), dtype=dtype, device=device)
        forces = forces.index_add(0, senders, gradient).index_add(0, receivers, gradient, alpha=-1)
        edge_virial = gradient[:, :, None] * vectors.detach()[:, None, :]
        virial = torch.zeros((n_systems, 3, 3), dtype=dtype, device=device).index_add(0, edge_system, edge_virial)
        virial = 0.5 * (virial + virial.transpose(1, 2))
        return _numpy(energy), _numpy(forces), _numpy(virial)

    def pair_energies(self, vectors: torch.Tensor, parameters: dict[str, torch.Tensor]) -> torch.Tensor:
        """(E,) energy of each edge's pair from its (E, 3) vector and its pair's parameters (each (E,))."""
        squared = (vectors * vectors).sum(dim=1)
        if self.parameters.potential == LENNARD_JONES:
            return lennard_jones(squared, parameters, smooth=self.parameters.smooth)
        return morse(torch.sqrt(squared), parameters)


def lennard_jones(squared: torch.Tensor, p: dict[str, torch.Tensor], smooth: bool) -> torch.Tensor:
    """ASE's LennardJones pair energy at squared distances ``squared`` (all within their pair's ``rc``)."""
    c6 = (p["sigma"] ** 2 / squared) ** 3
    energy = 4 * p["epsilon"] * (c6 * c6 - c6)
    if smooth:
        return energy * lj_cutoff(squared, p["rc"] ** 2, p["ro"] ** 2)
    c6_rc = (p["sigma"] / p["rc"]) ** 6
    return energy - 4 * p["epsilon"] * (c6_rc * c6_rc - c6_rc)  # ASE's shift: zero at rc


def lj_cutoff(r2: torch.Tensor, rc2: torch.Tensor, ro2: torch.Tensor) -> torch.Tensor:
    """ASE's (and JAX-MD's) smooth cutoff in squared distances: 1 below ro², 0 from rc² on, C¹ in between."""
    inner = (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3
    return torch.where(r2 < ro2, torch.ones_like(r2), torch.where(r2 < rc2, inner, torch.zeros_like(r2)))


def morse(distance: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """ASE's MorsePotential pair energy ``ε e (e - 2) fcut`` with ``e = exp(ρ0 (1 - r / r0))``."""
    expf = torch.exp(p["rho0"] * (1 - distance / p["r0"]))
    return p["epsilon"] * expf * (expf - 2) * morse_cutoff(distance, p["rcut1"] * p["r0"], p["rcut2"] * p["r0"])


def morse_cutoff(distance: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """ASE's quintic smoothstep from 1 at ``inner`` to 0 at ``outer`` (``ase.calculators.morse.fcut``)."""
    s = 1 - (distance - inner) / (outer - inner)
    step = 6 * s**5 - 15 * s**4 + 10 * s**3
    return torch.where(s >= 1, torch.ones_like(s), torch.where(s > 0, step, torch.zeros_like(s)))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()
