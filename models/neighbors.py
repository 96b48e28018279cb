"""Neighbour lists built on the model's device and reused across relaxation steps with a skin.

A relaxation moves atoms a little each step, so the list of a step is nearly the last one's. :class:`SkinNeighborList`
builds each member's list once with ``cutoff + skin`` (vesin's torch interface, on the device of the positions, when
``vesin-torch`` is installed; vesin's numpy interface on the host otherwise) and then, every step, only keeps the
pairs closer than ``cutoff``: the same edges as a fresh list, so the same energies.

When to rebuild: the cached list holds every pair (i, j, S) that was closer than ``cutoff + skin`` at build time.
Map the current positions into the reference cell, ``u = r H⁻¹ H₀`` (row vectors; ``H`` the cell now, ``H₀`` at
build). A pair's vector is then ``d = (u_j - u_i + S H₀) M`` with ``M = H₀⁻¹ H``, so ``|d| >= σ_min(M) (|d₀| - 2δ)``
where ``δ`` is the largest ``|u - r₀|``. A pair missing from the list had ``|d₀| >= cutoff + skin``, so none can have
come inside the cutoff while ``σ_min(M) (cutoff + skin - 2δ) > cutoff``; a member is rebuilt when that fails. With
the cell fixed this is the usual Verlet rule (no atom moved more than half the skin); a strained cell spends the
skin faster. Systems that are not periodic in all three directions use Cartesian displacements and are rebuilt
whenever their cell changes. The check is a handful of batched tensor operations and one small copy to the host.

Written here rather than taken from vesin's own ``skin`` option: that caches the list of one system per calculator
object and is documented for atom displacements only, while the engine's batch holds many members whose cells a
cell filter changes every step.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import vesin

from .tensor_batch import EdgeList, TensorBatch

try:  # vesin's torch build (vesin-torch); optional: without it lists are built on the host and copied over
    from vesin_torch import NeighborList as TorchNeighborList
except ImportError:
    TorchNeighborList = None

#: Skin (Å) when none is given: FIRE moves atoms ≲ 0.1 Å a step, so lists last many steps, while a 5 Å cutoff's
#: cached list holds (6/5)³ ≈ 1.7 times the edges it keeps.
DEFAULT_SKIN = 1.0


def device_lists_available() -> bool:
    """Whether lists are built by vesin-torch on the positions' device (else by vesin on the host)."""
    return TorchNeighborList is not None


def system_pairs(
    positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full list ``(i, j, shifts)`` of one system within ``cutoff`` Å, on the device and in the dtype of ``positions``.

    ``shifts`` are integer cell shifts stored as floats; the pair vector is ``r_j - r_i + shifts @ cell``.
    """
    periodic = bool(pbc.any())
    box = cell if periodic else torch.zeros_like(cell)
    if TorchNeighborList is not None:
        calculator = TorchNeighborList(cutoff=float(cutoff), full_list=True)
        i, j, shifts = calculator.compute(
            points=positions.detach(),
            box=box.detach().to(positions.dtype),
            periodic=pbc.to(torch.bool),
            quantities="ijS",
        )
    else:
        calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
        i, j, shifts = (
            torch.from_numpy(np.asarray(values))
            for values in calculator.compute(
                points=positions.detach().double().cpu().numpy(),
                box=box.detach().double().cpu().numpy(),
                periodic=pbc.cpu().tolist(),
                quantities="ijS",
            )
        )
    device = positions.device
    return i.to(device, torch.int64), j.to(device, torch.int64), shifts.to(device, positions.dtype)


def fresh_edges(batch: TensorBatch, cutoff: float) -> EdgeList:
    """Every system's full list within ``cutoff``, built now, with global atom indices."""
    offsets = batch.atom_offsets.tolist()
    parts = [
        system_pairs(batch.positions[start:end], batch.cells[b], batch.pbc[b], cutoff)
        for b, (start, end) in enumerate(itertools.pairwise(offsets))
    ]
    return _concatenate(parts, offsets[:-1], batch.positions)


@dataclass
class _Entry:
    """One member's list of pairs within ``cutoff + skin`` and the geometry it was built at."""

    senders: torch.Tensor  # (E,) local atom indices
    receivers: torch.Tensor
    shifts: torch.Tensor  # (E, 3)
    positions: torch.Tensor  # (n, 3) at build
    cell: torch.Tensor  # (3, 3) at build
    last_used: int


@dataclass
class _Assembled:
    """The entries of one ordered set of keys, concatenated, with global atom indices."""

    keys: tuple[str, ...]
    edges: EdgeList
    edge_systems: torch.Tensor  # (E,) system of each edge
    reference_positions: torch.Tensor  # (N, 3)
    reference_cells: torch.Tensor  # (B, 3, 3)


class SkinNeighborList:
    """A neighbour source (``TensorBatch.neighbors``) that keeps each member's list while the skin allows.

    Entries are keyed by ``batch.keys`` (stable per relaxation member); a batch without keys gets fresh lists. An
    entry not used for ``keep_calls`` calls is dropped, so members that left stop holding memory. ``builds`` and
    ``reuses`` count members whose list was built and reused, for benchmarks and tests.
    """

    def __init__(self, skin: float = DEFAULT_SKIN, keep_calls: int = 4):
        if skin <= 0:
            raise ValueError(f"skin must be positive, not {skin}")
        self.skin = float(skin)
        self.keep_calls = keep_calls
        self.builds = 0
        self.reuses = 0
        self._cutoff: float | None = None
        self._entries: dict[str, _Entry] = {}
        self._assembled: _Assembled | None = None
        self._calls = 0

    def __call__(self, batch: TensorBatch, cutoff: float) -> EdgeList:
        """The pairs of ``batch`` closer than ``cutoff``: the same set as :func:`fresh_edges`, in another order."""
        keys = getattr(batch, "keys", None)
        if not keys:
            return fresh_edges(batch, cutoff)
        if cutoff != self._cutoff:  # another model: nothing cached applies
            self.clear()
            self._cutoff = float(cutoff)
        self._calls += 1
        keys, offsets = tuple(keys), batch.atom_offsets.tolist()
        new = [b for b, key in enumerate(keys) if not self._fits(key, offsets[b + 1] - offsets[b])]
        self._rebuild(batch, keys, offsets, new, cutoff)
        if self._assembled is None or self._assembled.keys != keys:
            self._assembled = self._assemble(keys, offsets, batch.positions)
        stale = self._stale(batch, self._assembled, cutoff)
        if stale:
            self._rebuild(batch, keys, offsets, stale, cutoff)
            self._assembled = self._assemble(keys, offsets, batch.positions)
        for key in keys:
            self._entries[key].last_used = self._calls
        self.reuses += len(keys) - len(new) - len(stale)
        self._forget_unused()
        return self._within(batch, self._assembled, cutoff)

    def clear(self) -> None:
        """Forget every cached list."""
        self._entries.clear()
        self._assembled = None

    def _fits(self, key: str, n_atoms: int) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.positions.shape[0] == n_atoms

    def _rebuild(self, batch: TensorBatch, keys: tuple[str, ...], offsets: list[int], which, cutoff: float) -> None:
        """Build the lists of systems ``which`` (indices into the batch) at their current geometry."""
        for b in which:
            start, end = offsets[b], offsets[b + 1]
            positions, cell = batch.positions[start:end].detach(), batch.cells[b].detach()
            i, j, shifts = system_pairs(positions, cell, batch.pbc[b], cutoff + self.skin)
            self._entries[keys[b]] = _Entry(i, j, shifts, positions.clone(), cell.clone(), self._calls)
            self.builds += 1
            self._assembled = None

    def _stale(self, batch: TensorBatch, assembled: _Assembled, cutoff: float) -> list[int]:
        """Indices of the systems whose cached list may miss a pair now (see the module docstring)."""
        positions, cells = batch.positions.detach(), batch.cells.detach()
        reference, reference_cells = assembled.reference_positions, assembled.reference_cells
        periodic = batch.pbc.all(dim=1)
        # Fully periodic: M = H0^-1 H, and positions mapped into the reference cell are r H^-1 H0 = r M^-1.
        eye = torch.eye(3, dtype=cells.dtype, device=cells.device).expand_as(cells)
        strain = torch.linalg.solve(
            torch.where(periodic[:, None, None], reference_cells, eye), torch.where(periodic[:, None, None], cells, eye)
        )
        mapped = torch.bmm(positions[:, None, :], torch.linalg.inv(strain)[batch.batch])[:, 0]
        moved = torch.linalg.vector_norm(mapped - reference, dim=1)
        largest = torch.zeros(len(assembled.keys), dtype=moved.dtype, device=moved.device)
        largest = largest.scatter_reduce(0, batch.batch, moved, reduce="amax", include_self=True)
        smallest_stretch = torch.linalg.svdvals(strain)[:, -1]
        safe = smallest_stretch * (cutoff + self.skin - 2 * largest) > cutoff
        # Not fully periodic: the cell must not have changed at all.
        safe = safe & (periodic | (cells == reference_cells).flatten(1).all(dim=1))
        return torch.nonzero(~safe).flatten().tolist()

    def _assemble(self, keys: tuple[str, ...], offsets: list[int], like: torch.Tensor) -> _Assembled:
        """The entries of ``keys`` concatenated, with global atom indices."""
        entries = [self._entries[key] for key in keys]
        edges = _concatenate([(e.senders, e.receivers, e.shifts) for e in entries], offsets[:-1], like)
        counts = torch.tensor([e.senders.shape[0] for e in entries], device=like.device)
        return _Assembled(
            keys=keys,
            edges=edges,
            edge_systems=torch.repeat_interleave(torch.arange(len(entries), device=like.device), counts),
            reference_positions=torch.cat([e.positions for e in entries]),
            reference_cells=torch.stack([e.cell for e in entries]),
        )

    @staticmethod
    def _within(batch: TensorBatch, assembled: _Assembled, cutoff: float) -> EdgeList:
        """The assembled edges shorter than ``cutoff`` at the current geometry."""
        positions, edges = batch.positions.detach(), assembled.edges
        vectors = positions.index_select(0, edges.receivers) - positions.index_select(0, edges.senders)
        cells = batch.cells.detach().index_select(0, assembled.edge_systems)
        vectors = vectors + torch.einsum("ek,ekl->el", edges.shifts, cells)
        keep = torch.nonzero((vectors * vectors).sum(dim=1) < cutoff * cutoff).flatten()
        return EdgeList(edges.senders[keep], edges.receivers[keep], edges.shifts[keep])

    def _forget_unused(self) -> None:
        oldest = self._calls - self.keep_calls
        for key in [key for key, entry in self._entries.items() if entry.last_used < oldest]:
            del self._entries[key]


def _concatenate(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], offsets: Sequence[int], like: torch.Tensor
) -> EdgeList:
    """One edge list from per-system ``(i, j, shifts)`` with local indices, shifted by each system's first atom."""
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64, device=like.device)
        return EdgeList(empty, empty, torch.zeros((0, 3), dtype=like.dtype, device=like.device))
    senders = torch.cat([i + offset for (i, _, _), offset in zip(parts, offsets, strict=True)])
    receivers = torch.cat([j + offset for (_, j, _), offset in zip(parts, offsets, strict=True)])
    return EdgeList(senders, receivers, torch.cat([shifts for _, _, shifts in parts]).reshape(-1, 3))
