"""FIRE for many structures at once, with ASE's update rule, as torch tensors on the model's device.

Every structure has its own time step, mixing parameter and step counter, exactly as one ``ase.optimize.FIRE``
per structure would, but the update runs as a few tensor operations over the rows of all structures together.
Written here rather than taken from a library because the batch changes every step (structures that converged
leave, waiting ones join), which neither ASE (one optimizer per structure) nor torch-sim's state objects allow
without copying; the tests check it step by step against ASE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FireParameters:
    """ASE's FIRE defaults (``ase.optimize.FIRE``); ``maxstep`` bounds the norm of one structure's whole step."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


class BatchedFire:
    """FIRE state of a changing set of structures, each owning a contiguous block of rows (degrees of freedom).

    ``owner[r]`` is the structure of row ``r``; structures are numbered 0..k-1 in the order they were added,
    renumbered when some are removed. All state is float64 on ``device``.
    """

    def __init__(self, parameters: FireParameters | None = None, device: torch.device | str = "cpu"):
        self.parameters = parameters or FireParameters()
        self.device = torch.device(device)
        self.velocity = torch.zeros((0, 3), dtype=torch.float64, device=self.device)
        self.owner = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.dt = torch.zeros(0, dtype=torch.float64, device=self.device)
        self.alpha = torch.zeros(0, dtype=torch.float64, device=self.device)
        self.n_positive = torch.zeros(0, dtype=torch.int64, device=self.device)
        #: Whether a structure has taken its first step (ASE starts from zero velocity without mixing).
        self.started = torch.zeros(0, dtype=torch.bool, device=self.device)

    @property
    def n_structures(self) -> int:
        return int(self.dt.shape[0])

    def add(self, n_rows: Sequence[int]) -> None:
        """Add structures with ``n_rows[i]`` degrees of freedom (rows of 3) each, at rest."""
        p, k, device = self.parameters, len(n_rows), self.device
        counts = torch.tensor(list(n_rows), dtype=torch.int64)
        owner = torch.repeat_interleave(torch.arange(self.n_structures, self.n_structures + k), counts)
        self.velocity = torch.cat([self.velocity, self.velocity.new_zeros((int(counts.sum()), 3))])
        self.owner = torch.cat([self.owner, owner.to(device)])
        self.dt = torch.cat([self.dt, torch.full((k,), p.dt, dtype=torch.float64, device=device)])
        self.alpha = torch.cat([self.alpha, torch.full((k,), p.astart, dtype=torch.float64, device=device)])
        self.n_positive = torch.cat([self.n_positive, self.n_positive.new_zeros(k)])
        self.started = torch.cat([self.started, self.started.new_zeros(k)])

    def remove(self, keep: torch.Tensor) -> None:
        """Keep only the structures where the boolean mask ``keep`` is True."""
        rows = keep[self.owner]
        renumber = torch.cumsum(keep.to(torch.int64), 0) - 1
        self.velocity = self.velocity[rows]
        self.owner = renumber[self.owner[rows]]
        self.dt, self.alpha = self.dt[keep], self.alpha[keep]
        self.n_positive, self.started = self.n_positive[keep], self.started[keep]

    def step(self, forces: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """The displacement of every row for generalised ``forces`` (rows, 3); rows of inactive structures stay 0.

        ``active`` (a boolean mask over structures) selects the structures that take a step now; the others keep
        their state untouched.
        """
        p = self.parameters
        k, owner = self.n_structures, self.owner
        active = torch.ones(k, dtype=torch.bool, device=self.device) if active is None else active
        row_active = active[owner]
        forces = torch.where(row_active[:, None], forces, 0.0)
        v = self.velocity

        vf = _per_structure((forces * v).sum(dim=1), owner, k)
        ff = _per_structure((forces * forces).sum(dim=1), owner, k)
        vv = _per_structure((v * v).sum(dim=1), owner, k)

        downhill = active & self.started & (vf > 0.0)
        uphill = active & self.started & ~(vf > 0.0)
        scale = torch.where(downhill, self.alpha * torch.sqrt(vv) / torch.sqrt(ff), 0.0)
        mixed = (1.0 - self.alpha[owner])[:, None] * v + scale[owner][:, None] * forces
        v = torch.where(downhill[owner][:, None], mixed, v)
        speed_up = downhill & (self.n_positive > p.n_min)
        self.dt = torch.where(speed_up, torch.clamp(self.dt * p.finc, max=p.dtmax), self.dt)
        self.alpha = torch.where(speed_up, self.alpha * p.fa, self.alpha)
        self.n_positive = torch.where(downhill, self.n_positive + 1, self.n_positive)

        v = torch.where(uphill[owner][:, None], 0.0, v)
        self.alpha = torch.where(uphill, p.astart, self.alpha)
        self.dt = torch.where(uphill, self.dt * p.fdec, self.dt)
        self.n_positive = torch.where(uphill, 0, self.n_positive)

        dt_rows = torch.where(row_active, self.dt[owner], 0.0)[:, None]
        v = v + dt_rows * forces
        displacement = dt_rows * v
        norm = torch.sqrt(_per_structure((displacement * displacement).sum(dim=1), owner, k))
        limit = torch.where(norm > p.maxstep, p.maxstep / torch.where(norm > 0, norm, 1.0), 1.0)
        self.velocity = v
        self.started = self.started | active
        return displacement * limit[owner][:, None]


def _per_structure(values: torch.Tensor, owner: torch.Tensor, k: int) -> torch.Tensor:
    return values.new_zeros(k).index_add_(0, owner, values)
