"""How a relaxation ended, as plain data: free of torch, so the HTTP front end and the Redis codec can use it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...models.system import AtomicSystem
from ...protocol import StopReason

__all__ = ["Frame", "RelaxOutcome"]


@dataclass
class Frame:
    step: int
    energy: float
    positions: np.ndarray
    cell: np.ndarray


@dataclass
class RelaxOutcome:
    """How a relaxation ended: the final geometry, how it got there and why it stopped."""

    system: AtomicSystem
    steps: int
    converged: bool
    stop_reason: StopReason
    #: The largest generalised force (atoms and cell rows) at the final geometry, eV/Å.
    fmax: float
    trajectory: list[Frame] = field(default_factory=list)
