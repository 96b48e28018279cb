"""Turn a batch of atomic systems into one batched periodic graph.

Neighbour lists come from vesin (a maintained, cell-list based library), one call per system; the graph holds all
systems' atoms back to back with a ``batch`` index, as the message-passing backends expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import vesin

from .system import AtomicSystem


@dataclass
class BatchedGraph:
    """All systems of a batch in one graph.

    Edges are directed and listed both ways. For edge ``k`` from ``senders[k] = i`` to ``receivers[k] = j``
    the vector from atom ``i`` to the periodic image of atom ``j`` is
    ``positions[j] - positions[i] + shifts[k] @ cells[edge_batch[k]]``.
    """

    numbers: np.ndarray  # (N,) int64
    positions: np.ndarray  # (N, 3) float64
    batch: np.ndarray  # (N,) int64: system index of each atom
    n_atoms: np.ndarray  # (B,) int64
    cells: np.ndarray  # (B, 3, 3) float64
    pbc: np.ndarray  # (B, 3) bool
    senders: np.ndarray  # (E,) int64, global atom index i
    receivers: np.ndarray  # (E,) int64, global atom index j
    shifts: np.ndarray  # (E, 3) float64, integer cell shifts
    n_edges: np.ndarray  # (B,) int64
    cutoff: float

    @property
    def n_systems(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def atom_offsets(self) -> np.ndarray:
        """Index of each system's first atom, (B + 1,) with the total at the end."""
        return np.concatenate([[0], np.cumsum(self.n_atoms)])

    @property
    def edge_batch(self) -> np.ndarray:
        return self.batch[self.senders]

    def edge_vectors(self) -> np.ndarray:
        """(E, 3) vectors from sender to receiver image, in Å."""
        offsets = np.einsum("ek,ekl->el", self.shifts, self.cells[self.edge_batch])
        return self.positions[self.receivers] - self.positions[self.senders] + offsets


def neighbor_list(system: AtomicSystem, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list ``(i, j, shifts)`` of one system within ``cutoff`` Å, computed by vesin."""
    box = system.cell if system.is_periodic else np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(points=system.positions, box=box, periodic=system.pbc.tolist(), quantities="ijS")
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.float64)


def build_graph(systems: Sequence[AtomicSystem], cutoff: float) -> BatchedGraph:
    """Batch ``systems`` into one graph with edges shorter than ``cutoff`` Å."""
    n_atoms = np.array([system.n_atoms for system in systems], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    senders, receivers, shifts, n_edges = [], [], [], []
    for offset, system in zip(offsets, systems, strict=True):
        i, j, shift = neighbor_list(system, cutoff)
        senders.append(i + offset)
        receivers.append(j + offset)
        shifts.append(shift)
        n_edges.append(i.shape[0])
    return BatchedGraph(
        numbers=np.concatenate([system.numbers for system in systems]).astype(np.int64),
        positions=np.concatenate([system.positions for system in systems]),
        batch=np.repeat(np.arange(len(systems), dtype=np.int64), n_atoms),
        n_atoms=n_atoms,
        cells=np.stack([system.cell for system in systems]),
        pbc=np.stack([system.pbc for system in systems]),
        senders=np.concatenate(senders),
        receivers=np.concatenate(receivers),
        shifts=np.concatenate(shifts).reshape(-1, 3),
        n_edges=np.array(n_edges, dtype=np.int64),
        cutoff=float(cutoff),
    )
