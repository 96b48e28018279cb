"""FIRE for many structures at once, with ASE's update rule.

Every structure has its own time step, mixing parameter and step counter, exactly as one ``ase.optimize.FIRE``
per structure would, but the update runs as a few array operations over the rows of all structures together.
Written here rather than taken from a library because the batch changes every step (structures that converged
leave, waiting ones join), which neither ASE (one optimizer per structure) nor torch-sim's state objects allow
without copying; the tests check it step by step against ASE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    renumbered when some are removed.
    """

    def __init__(self, parameters: FireParameters | None = None):
        self.parameters = parameters or FireParameters()
        self.velocity = np.zeros((0, 3))
        self.owner = np.zeros(0, dtype=np.int64)
        self.dt = np.zeros(0)
        self.alpha = np.zeros(0)
        self.n_positive = np.zeros(0, dtype=np.int64)
        #: Whether a structure has taken its first step (ASE starts from zero velocity without mixing).
        self.started = np.zeros(0, dtype=bool)

    @property
    def n_structures(self) -> int:
        return len(self.dt)

    def add(self, n_rows: int) -> None:
        """Add one structure with ``n_rows`` degrees of freedom (rows of 3), at rest."""
        p = self.parameters
        index = self.n_structures
        self.velocity = np.concatenate([self.velocity, np.zeros((n_rows, 3))])
        self.owner = np.concatenate([self.owner, np.full(n_rows, index, dtype=np.int64)])
        self.dt = np.append(self.dt, p.dt)
        self.alpha = np.append(self.alpha, p.astart)
        self.n_positive = np.append(self.n_positive, 0)
        self.started = np.append(self.started, False)

    def remove(self, keep: np.ndarray) -> None:
        """Keep only the structures where the boolean mask ``keep`` is True."""
        rows = keep[self.owner]
        renumber = np.cumsum(keep) - 1
        self.velocity = self.velocity[rows]
        self.owner = renumber[self.owner[rows]]
        self.dt, self.alpha = self.dt[keep], self.alpha[keep]
        self.n_positive, self.started = self.n_positive[keep], self.started[keep]

    def step(self, forces: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """The displacement of every row for generalised ``forces`` (rows, 3); rows of inactive structures stay 0.

        ``active`` (a boolean mask over structures) selects the structures that take a step now; the others keep
        their state untouched.
        """
        p = self.parameters
        k = self.n_structures
        active = np.ones(k, dtype=bool) if active is None else active
        owner = self.owner
        row_active = active[owner]
        forces = np.where(row_active[:, None], forces, 0.0)
        v = self.velocity

        vf = _per_structure(np.einsum("ij,ij->i", forces, v), owner, k)
        ff = _per_structure(np.einsum("ij,ij->i", forces, forces), owner, k)
        vv = _per_structure(np.einsum("ij,ij->i", v, v), owner, k)

        downhill = active & self.started & (vf > 0.0)
        uphill = active & self.started & ~(vf > 0.0)
        mix = downhill[owner]
        scale = np.zeros(k)
        scale[downhill] = self.alpha[downhill] * np.sqrt(vv[downhill]) / np.sqrt(ff[downhill])
        v = np.where(mix[:, None], (1.0 - self.alpha[owner])[:, None] * v + scale[owner][:, None] * forces, v)
        speed_up = downhill & (self.n_positive > p.n_min)
        self.dt = np.where(speed_up, np.minimum(self.dt * p.finc, p.dtmax), self.dt)
        self.alpha = np.where(speed_up, self.alpha * p.fa, self.alpha)
        self.n_positive = np.where(downhill, self.n_positive + 1, self.n_positive)

        v = np.where(uphill[owner][:, None], 0.0, v)
        self.alpha = np.where(uphill, p.astart, self.alpha)
        self.dt = np.where(uphill, self.dt * p.fdec, self.dt)
        self.n_positive = np.where(uphill, 0, self.n_positive)

        dt_rows = np.where(row_active, self.dt[owner], 0.0)[:, None]
        v = v + dt_rows * forces
        displacement = dt_rows * v
        norm = np.sqrt(_per_structure(np.einsum("ij,ij->i", displacement, displacement), owner, k))
        limit = np.where(norm > p.maxstep, p.maxstep / np.where(norm > 0, norm, 1.0), 1.0)
        self.velocity = v
        self.started = self.started | active
        return displacement * limit[owner][:, None]


def _per_structure(values: np.ndarray, owner: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(owner, weights=values, minlength=k)
