"""A batch of atomic systems as device tensors, and what a potential returns for it as device tensors.

The tensor path of the Potential contract (:meth:`~.potential.Potential.predict_tensors`): the relaxation engine
keeps its state on the model's device, hands the model one :class:`TensorBatch` per round and reads one
:class:`TensorPrediction` back, so positions and forces do not travel to the host every step. Geometry is float64
whatever the model's dtype (the optimizer's arithmetic must match ASE's); a model casts what it needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .graph import neighbor_list
from .prediction import FORCES, STRESS, Prediction, Uncertainty
from .system import AtomicSystem

__all__ = ["EdgeList", "NeighborSource", "TensorBatch", "TensorPrediction", "host_neighbor_list"]

#: Cells below this volume (Å³) count as no cell (as ``potential.MIN_VOLUME``).
_MIN_VOLUME = 1e-6


@dataclass
class EdgeList:
    """A full neighbour list of a batch: both directions, global atom indices, integer cell shifts.

    The vector of edge ``k`` is ``positions[receivers[k]] - positions[senders[k]] + shifts[k] @ cells[s]`` with
    ``s`` the system of its sender. A list reused with a skin may hold edges longer than the cutoff; the
    backends keep ``r < cutoff`` themselves.
    """

    senders: torch.Tensor  # (E,) int64
    receivers: torch.Tensor  # (E,) int64
    shifts: torch.Tensor  # (E, 3) float64


class NeighborSource(Protocol):
    """Something that lists a batch's neighbours (e.g. a device list reused across steps with a skin)."""

    def __call__(self, batch: TensorBatch, cutoff: float) -> EdgeList: ...


@dataclass
class TensorBatch:
    """Systems back to back: atoms of system ``b`` are rows ``atom_offsets[b]:atom_offsets[b + 1]``."""

    positions: torch.Tensor  # (N, 3) float64, Å
    cells: torch.Tensor  # (B, 3, 3) float64, rows are lattice vectors (zeros for a molecule)
    numbers: torch.Tensor  # (N,) int64
    batch: torch.Tensor  # (N,) int64: system of each atom
    pbc: torch.Tensor  # (B, 3) bool
    n_atoms: torch.Tensor  # (B,) int64
    #: Lists the neighbours; None: vesin on the host (:func:`host_neighbor_list`).
    neighbors: NeighborSource | None = None
    #: Stable names of the systems (a relaxation's member keys), for caches kept per system; may be empty.
    keys: list[str] = field(default_factory=list)

    @classmethod
    def from_systems(
        cls, systems: Sequence[AtomicSystem], device: torch.device | str = "cpu", keys: Sequence[str] = ()
    ) -> TensorBatch:
        """The batch of ``systems`` on ``device``."""
        n_atoms = torch.tensor([system.n_atoms for system in systems], dtype=torch.int64)
        positions = np.concatenate([system.positions for system in systems]) if systems else np.zeros((0, 3))
        numbers = np.concatenate([system.numbers for system in systems]) if systems else np.zeros(0)
        cells = np.stack([system.cell for system in systems]) if systems else np.zeros((0, 3, 3))
        pbc = np.stack([system.pbc for system in systems]) if systems else np.zeros((0, 3), dtype=bool)
        return cls(
            positions=torch.as_tensor(positions, dtype=torch.float64).to(device),
            cells=torch.as_tensor(cells, dtype=torch.float64).to(device),
            numbers=torch.as_tensor(numbers, dtype=torch.int64).to(device),
            batch=torch.repeat_interleave(torch.arange(len(systems)), n_atoms).to(device),
            pbc=torch.as_tensor(pbc, dtype=torch.bool).to(device),
            n_atoms=n_atoms.to(device),
            keys=list(keys),
        )

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def n_systems(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def atom_offsets(self) -> torch.Tensor:
        """Index of each system's first atom, (B + 1,) with the total at the end."""
        return torch.cat([self.n_atoms.new_zeros(1), torch.cumsum(self.n_atoms, 0)])

    def volumes(self) -> torch.Tensor:
        """(B,) cell volumes; 0 where a system is not periodic or its cell has no volume."""
        volume = torch.linalg.det(self.cells).abs()
        return torch.where(self.pbc.any(dim=1) & (volume >= _MIN_VOLUME), volume, torch.zeros_like(volume))

    def neighbor_list(self, cutoff: float) -> EdgeList:
        """All pairs closer than ``cutoff`` Å (or a superset of them, from a skin list)."""
        if self.neighbors is not None:
            return self.neighbors(self, cutoff)
        return host_neighbor_list(self, cutoff)

    def edge_vectors(self, edges: EdgeList) -> torch.Tensor:
        """(E, 3) float64 vectors from each sender to its receiver's image."""
        offsets = torch.einsum("ek,ekl->el", edges.shifts, self.cells[self.batch[edges.senders]])
        return self.positions[edges.receivers] - self.positions[edges.senders] + offsets

    def to_systems(self) -> list[AtomicSystem]:
        """Host copies of the systems (one device-to-host copy of the batch)."""
        positions, numbers = self.positions.cpu().numpy(), self.numbers.cpu().numpy()
        cells, pbc = self.cells.cpu().numpy(), self.pbc.cpu().numpy()
        offsets = self.atom_offsets.cpu().numpy()
        return [
            AtomicSystem(numbers[start:stop].copy(), positions[start:stop].copy(), cells[b].copy(), pbc[b].copy())
            for b, (start, stop) in enumerate(itertools.pairwise(offsets))
        ]

    def select(self, systems: torch.Tensor) -> TensorBatch:
        """The sub-batch of the systems at indices ``systems`` (int64, increasing), renumbered from 0."""
        systems = systems.to(self.device)
        atoms = torch.isin(self.batch, systems)
        renumber = torch.full((self.n_systems,), -1, dtype=torch.int64, device=self.device)
        renumber[systems] = torch.arange(systems.shape[0], device=self.device)
        chosen = systems.cpu().tolist()
        return TensorBatch(
            positions=self.positions[atoms],
            cells=self.cells[systems],
            numbers=self.numbers[atoms],
            batch=renumber[self.batch[atoms]],
            pbc=self.pbc[systems],
            n_atoms=self.n_atoms[systems],
            neighbors=self.neighbors,
            keys=[self.keys[i] for i in chosen] if self.keys else [],
        )


@dataclass
class TensorPrediction:
    """A batch's results on the batch's device, float64, ASE units and signs.

    ``stress`` is zero for a system without a cell volume. ``uncertainty`` (host objects, one per system) is set
    by potentials that measure their own (``Potential.uncertainty_kind``).
    """

    energy: torch.Tensor  # (B,) eV
    forces: torch.Tensor | None = None  # (N, 3) eV/Å
    stress: torch.Tensor | None = None  # (B, 3, 3) eV/Å³
    uncertainty: list[Uncertainty | None] | None = None

    @classmethod
    def from_predictions(
        cls, predictions: Sequence[Prediction], batch: TensorBatch, properties: Sequence[str]
    ) -> TensorPrediction:
        """Stack host predictions of ``batch``'s systems onto its device."""
        device, n_systems = batch.device, batch.n_systems
        energy = torch.tensor([p.energy for p in predictions], dtype=torch.float64)
        forces = stress = None
        if FORCES in properties:
            parts = [np.zeros((0, 3))] + [np.asarray(p.forces, dtype=np.float64) for p in predictions]
            forces = torch.as_tensor(np.concatenate(parts)).to(device)
        if STRESS in properties:
            stress_np = np.zeros((n_systems, 3, 3))
            for b, p in enumerate(predictions):
                if p.stress is not None:
                    stress_np[b] = p.stress
            stress = torch.as_tensor(stress_np).to(device)
        uncertainty = [p.uncertainty for p in predictions]
        has_uncertainty = any(u is not None for u in uncertainty)
        return cls(energy.to(device), forces, stress, uncertainty if has_uncertainty else None)

    def to_predictions(self, batch: TensorBatch, properties: Sequence[str]) -> list[Prediction]:
        """One host :class:`Prediction` per system (stress only for systems with a cell volume)."""
        return [self.prediction(batch, b, properties) for b in range(batch.n_systems)]

    def prediction(self, batch: TensorBatch, index: int, properties: Sequence[str]) -> Prediction:
        """System ``index``'s host :class:`Prediction`."""
        offsets = batch.atom_offsets
        start, stop = int(offsets[index]), int(offsets[index + 1])
        prediction = Prediction(energy=float(self.energy[index]))
        if FORCES in properties and self.forces is not None:
            prediction.forces = self.forces[start:stop].detach().cpu().numpy().copy()
        if STRESS in properties and self.stress is not None and float(batch.volumes()[index]) > 0:
            prediction.stress = self.stress[index].detach().cpu().numpy().copy()
        if self.uncertainty is not None:
            prediction.uncertainty = self.uncertainty[index]
        return prediction


def host_neighbor_list(batch: TensorBatch, cutoff: float) -> EdgeList:
    """The batch's neighbour list from vesin on the host, one call per system (as ``graph.build_graph``)."""
    senders, receivers, shifts = [], [], []
    for offset, system in zip(batch.atom_offsets[:-1].tolist(), batch.to_systems(), strict=True):
        i, j, shift = neighbor_list(system, cutoff)
        senders.append(i + offset)
        receivers.append(j + offset)
        shifts.append(shift)
    device = batch.device
    if not senders:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return EdgeList(empty, empty, torch.zeros((0, 3), dtype=torch.float64, device=device))
    return EdgeList(
        senders=torch.as_tensor(np.concatenate(senders)).to(device),
        receivers=torch.as_tensor(np.concatenate(receivers)).to(device),
        shifts=torch.as_tensor(np.concatenate(shifts).reshape(-1, 3)).to(device),
    )
