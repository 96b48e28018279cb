"""A Lennard-Jones Potential built in the tests: checks the graph and the contract against ase's own LJ.

Also :func:`saved_for_backward`, which tells whether a potential built an autograd graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from mlipserve.models.cards import ModelCard
from mlipserve.models.graph import build_graph
from mlipserve.models.potential import ALL_PROPERTIES, Potential, Prediction
from mlipserve.models.system import AtomicSystem

POISON = 118  # an atom of Og makes the toy model raise, as a buggy model would


class LennardJonesPotential(Potential):
    """Energy of ase's ``LennardJones(sigma, epsilon, rc)`` (unsmoothed, shifted to zero at rc), by autograd."""

    def __init__(self, sigma: float = 1.0, epsilon: float = 1.0, rc: float = 3.0):
        self.sigma, self.epsilon = sigma, epsilon
        self.cutoff = rc
        self.card = ModelCard.from_dict(
            {
                "name": "toy-lj",
                "family": "toy",
                "version": "1",
                "checkpoint": "none",
                "sha256": "0" * 64,
                "license": "MIT",
                "elements": ["H", "He", "Ar", "Cu", "Og"],
                "cutoff": rc,
            },
            root=None,
        )
        self.elements = self.card.atomic_numbers
        self.dtype = torch.float64
        self.device = torch.device("cpu")
        self.calls = 0

    def predict_batch(self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES):
        self.calls += 1
        if any(POISON in system.numbers for system in systems):
            raise RuntimeError("poisoned structure")
        graph = build_graph(systems, self.cutoff)
        n_systems = graph.n_systems
        strain = torch.zeros((n_systems, 3, 3), dtype=torch.float64, requires_grad=True)
        deformation = torch.eye(3, dtype=torch.float64) + 0.5 * (strain + strain.transpose(1, 2))
        batch = torch.from_numpy(graph.batch)
        positions = torch.from_numpy(graph.positions).requires_grad_(True)
        strained_positions = torch.einsum("ni,nij->nj", positions, deformation[batch])
        cells = torch.einsum("bij,bjk->bik", torch.from_numpy(graph.cells), deformation)
        senders, receivers = torch.from_numpy(graph.senders), torch.from_numpy(graph.receivers)
        edge_batch = batch[senders]
        offsets = torch.einsum("ek,ekl->el", torch.from_numpy(graph.shifts), cells[edge_batch])
        vectors = strained_positions[receivers] - strained_positions[senders] + offsets
        r = vectors.norm(dim=1)
        s6 = (self.sigma / r) ** 6
        shift = 4 * self.epsilon * ((self.sigma / self.cutoff) ** 12 - (self.sigma / self.cutoff) ** 6)
        pair = 0.5 * (4 * self.epsilon * (s6 * s6 - s6) - shift)
        energies = torch.zeros(n_systems, dtype=torch.float64).index_add(0, edge_batch, pair)
        forces_grad, strain_grad = torch.autograd.grad(energies.sum(), [positions, strain])
        predictions = []
        offsets_atoms = graph.atom_offsets
        for b, system in enumerate(systems):
            start, stop = offsets_atoms[b], offsets_atoms[b + 1]
            stress = strain_grad[b].numpy() / system.volume if system.is_periodic else None
            predictions.append(
                Prediction(energy=float(energies[b].detach()), forces=-forces_grad[start:stop].numpy(), stress=stress)
            )
        return predictions


def lj_reference(
    atoms, sigma: float = 1.0, epsilon: float = 1.0, rc: float = 3.0
) -> tuple[float, np.ndarray, np.ndarray]:
    from ase.calculators.lj import LennardJones

    atoms = atoms.copy()
    atoms.calc = LennardJones(sigma=sigma, epsilon=epsilon, rc=rc, smooth=False)
    stress = atoms.get_stress(voigt=False) if atoms.pbc.any() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


@contextlib.contextmanager
def saved_for_backward() -> Iterator[list[torch.Size]]:
    """The shapes of the tensors that autograd saves for a backward pass inside the block: none without a graph."""
    saved: list[torch.Size] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved
