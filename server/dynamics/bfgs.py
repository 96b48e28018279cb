"""BFGS for many structures at once, with ASE's update rule and defaults (``ase.optimize.BFGS``).

Each structure keeps its own Hessian estimate (``alpha`` times the identity at first, updated with
the BFGS formula from the last step and the change of the forces) and steps along ``H⁻¹ f`` through an
eigendecomposition, as ASE does, scaled down so that no row moves more than ``maxstep``. The structures are
stepped one after the other on the model's device: their Hessians differ in size, and one eigendecomposition of
a (3n+9)² matrix costs little next to a model call for small cells. Written here for the same reason as
:mod:`.fire`: the set of structures changes every round. The tests check it step for step against ASE's
``BFGS(FrechetCellFilter(atoms))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BFGSParameters:
    """ASE's BFGS defaults: the largest step of one row (Å) and the initial Hessian (eV/Å²)."""

    maxstep: float = 0.2
    alpha: float = 70.0


class BatchedBFGS:
    """BFGS state of a changing set of structures, each owning a contiguous block of rows (degrees of freedom).

    ``owner[r]`` is the structure of row ``r``; structures are numbered 0..k-1 in the order they were added,
    renumbered when some are removed. All state is float64 on ``device``.
    """

    def __init__(self, parameters: BFGSParameters | None = None, device: torch.device | str = "cpu"):
        self.parameters = parameters or BFGSParameters()
        self.device = torch.device(device)
        self.owner = torch.zeros(0, dtype=torch.int64, device=self.device)
        #: Per structure: its Hessian estimate (None before its first step), last forces and last step.
        self.hessians: list[torch.Tensor | None] = []
        self.last_forces: list[torch.Tensor | None] = []
        self.last_step: list[torch.Tensor | None] = []
        self._sizes: list[int] = []

    def add(self, n_rows: Sequence[int]) -> None:
        """Add structures with ``n_rows[i]`` degrees of freedom (rows of 3) each, with no history."""
        start = len(self._sizes)
        counts = torch.tensor(list(n_rows), dtype=torch.int64)
        owner = torch.repeat_interleave(torch.arange(start, start + len(n_rows)), counts)
        self.owner = torch.cat([self.owner, owner.to(self.device)])
        self._sizes += list(n_rows)
        self.hessians += [None] * len(n_rows)
        self.last_forces += [None] * len(n_rows)
        self.last_step += [None] * len(n_rows)

    def remove(self, keep: torch.Tensor) -> None:
        """Keep only the structures where the boolean mask ``keep`` is True."""
        kept = keep.cpu().tolist()
        renumber = torch.cumsum(keep.to(torch.int64), 0) - 1
        self.owner = renumber[self.owner[keep[self.owner]]]
        for name in ("_sizes", "hessians", "last_forces", "last_step"):
            setattr(self, name, [value for value, stays in zip(getattr(self, name), kept, strict=True) if stays])

    def step(self, forces: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """The displacement of every row for generalised ``forces`` (rows, 3); rows of inactive structures stay 0.

        The caller applies the whole displacement: the next call's update uses it as the change of positions.
        """
        displacement = torch.zeros_like(forces)
        active_host = [True] * len(self._sizes) if active is None else active.cpu().tolist()
        start = 0
        for i, size in enumerate(self._sizes):
            rows = slice(start, start + size)
            start += size
            if active_host[i]:
                displacement[rows] = self._step_one(i, forces[rows].reshape(-1)).reshape(-1, 3)
        return displacement

    def _step_one(self, i: int, force: torch.Tensor) -> torch.Tensor:
        """One structure's step (ASE's ``BFGS.step``): update its Hessian, then step along H⁻¹ f."""
        p = self.parameters
        hessian, last_force, last_step = self.hessians[i], self.last_forces[i], self.last_step[i]
        if hessian is None:
            hessian = p.alpha * torch.eye(force.shape[0], dtype=torch.float64, device=self.device)
        elif last_step is not None and last_force is not None and float(last_step.abs().max()) >= 1e-7:
            gradient_change = last_force - force  # the gradient is minus the force
            a = last_step @ gradient_change
            dg = hessian @ last_step
            b = last_step @ dg
            hessian = hessian + torch.outer(gradient_change, gradient_change) / a - torch.outer(dg, dg) / b
        omega, vectors = torch.linalg.eigh(hessian)
        step = vectors @ ((force @ vectors) / omega.abs())
        longest = step.reshape(-1, 3).norm(dim=1).max()
        if float(longest) >= p.maxstep:
            step = step * (p.maxstep / longest)
        self.hessians[i], self.last_forces[i], self.last_step[i] = hessian, force.clone(), step
        return step
