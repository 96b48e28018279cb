"""Energies, forces and stresses of a potential written as a function of its edge vectors, by one backward pass.

The classical families evaluated here in torch (ACE, SNAP, HDNNP) give each system's energy as a function of the
edge vectors ``r_e = x_j - x_i + S_e H`` of a :class:`~.graph.BatchedGraph`. One backward pass gives ``g_e = ∂E/∂r_e``;
then the force on atom ``i`` is ``Σ_{e from i} g_e - Σ_{e to i} g_e`` and the virial of a system is
``Σ_e r_e ⊗ g_e`` (symmetrised; divided by the volume it is ASE's stress), with no derivative by the cell needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .graph import BatchedGraph
from .potential import divide_by_volume, needs_gradients, split_batch
from .prediction import Prediction
from .system import AtomicSystem

#: Each system's energy (B,) from the edge vectors (E, 3), which may require grad.
EnergyOfEdges = Callable[[torch.Tensor], torch.Tensor]


def predict_on_edges(
    systems: Sequence[AtomicSystem],
    properties: Sequence[str],
    graph: BatchedGraph,
    energy_of: EnergyOfEdges,
    *,
    dtype: torch.dtype,
    device: torch.device,
    order: np.ndarray | None = None,
) -> list[Prediction]:
    """One Prediction per system; autograd runs only when ``properties`` asks for forces or stress.

    ``order`` permutes the edges before ``energy_of`` sees them (e.g. sorted by sender); the caller builds its
    own sender and receiver tensors in the same order.
    """
    edges = slice(None) if order is None else order
    need_grad = needs_gradients(properties)
    forces = stress = None
    with torch.inference_mode(False), torch.set_grad_enabled(need_grad):
        vectors = torch.as_tensor(graph.edge_vectors()[edges], dtype=dtype, device=device)
        vectors.requires_grad_(need_grad)
        energies = energy_of(vectors)
        if need_grad:
            gradient = None
            if energies.requires_grad:  # not when no atom has a neighbour inside the cutoff
                (gradient,) = torch.autograd.grad(energies.sum(), vectors, allow_unused=True)
            if gradient is None:
                gradient = torch.zeros_like(vectors)
            forces, virials = forces_and_virials(graph, vectors.detach(), gradient, edges)
            stress = divide_by_volume(systems, 0.5 * (virials + virials.transpose(0, 2, 1)))
    return split_batch(systems, properties, energies.detach().double().cpu().numpy(), forces, stress)


def forces_and_virials(
    graph: BatchedGraph, vectors: torch.Tensor, gradient: torch.Tensor, edges: slice | np.ndarray = slice(None)
) -> tuple[np.ndarray, np.ndarray]:
    """Forces (N, 3) and virials ``Σ_e r_e ⊗ ∂E/∂r_e`` (B, 3, 3) from the gradient of the energy per edge vector."""
    device, dtype = vectors.device, vectors.dtype
    senders = torch.as_tensor(graph.senders[edges], device=device)
    receivers = torch.as_tensor(graph.receivers[edges], device=device)
    forces = torch.zeros(graph.numbers.shape[0], 3, dtype=dtype, device=device)
    forces = forces.index_add(0, senders, gradient).index_add(0, receivers, -gradient)
    edge_batch = torch.as_tensor(graph.edge_batch[edges], device=device)
    per_edge = vectors[:, :, None] * gradient[:, None, :]
    virials = torch.zeros(graph.n_systems, 3, 3, dtype=dtype, device=device).index_add(0, edge_batch, per_edge)
    return forces.double().cpu().numpy(), virials.double().cpu().numpy()
