"""The batched optimizers, looked up by name: a relaxation request names one, the worker builds its state here.

An optimizer keeps the state of a changing set of structures, each owning a contiguous block of rows (degrees
of freedom, 3 columns each); :class:`~.relaxation.RelaxationSet` adds and removes structures and asks for steps.
FIRE is the only entry now; BFGS-like optimizers and MD integrators join by adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from .fire import BatchedFire


class BatchedOptimizer(Protocol):
    """The state of one optimizer over many structures."""

    #: ``owner[r]`` is the structure of row ``r`` (structures numbered in the order they were added).
    owner: np.ndarray

    def add(self, n_rows: int) -> None:
        """Add one structure with ``n_rows`` rows, at rest."""

    def remove(self, keep: np.ndarray) -> None:
        """Keep only the structures where the boolean mask ``keep`` is True."""

    def step(self, forces: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """The displacement of every row for the generalised ``forces``; inactive structures stay put."""


OPTIMIZERS: dict[str, Callable[[], BatchedOptimizer]] = {"fire": BatchedFire}


def make_optimizer(name: str) -> BatchedOptimizer:
    """A fresh optimizer state for ``name``; a ValueError names the known optimizers."""
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(sorted(OPTIMIZERS))}") from None
    return factory()
