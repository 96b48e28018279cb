"""The batched optimizers, looked up by name: a relaxation request names one, the worker builds its state here.

An optimizer keeps the state of a changing set of structures, each owning a contiguous block of rows (degrees
of freedom, 3 columns each) as torch tensors on the model's device; :class:`~.relaxation.RelaxationSet` adds and
removes structures and asks for steps.
FIRE (the matbench-discovery protocol) and BFGS (ASE's, as quasi-Newton protocols use) are the entries; the MD
integrators have a registry of their own beside this one (``integrators.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from .bfgs import BatchedBFGS
from .fire import BatchedFire


class BatchedOptimizer(Protocol):
    """The state of one optimizer over many structures."""

    #: ``owner[r]`` is the structure of row ``r`` (structures numbered in the order they were added).
    owner: torch.Tensor

    def add(self, n_rows: Sequence[int]) -> None:
        """Add structures with ``n_rows[i]`` rows each, at rest."""

    def remove(self, keep: torch.Tensor) -> None:
        """Keep only the structures where the boolean mask ``keep`` is True."""

    def step(self, forces: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """The displacement of every row for the generalised ``forces``; inactive structures stay put."""


OPTIMIZERS: dict[str, Callable[..., BatchedOptimizer]] = {"fire": BatchedFire, "bfgs": BatchedBFGS}


def make_optimizer(name: str, device: torch.device | str = "cpu") -> BatchedOptimizer:
    """A fresh optimizer state for ``name`` on ``device``; a ValueError names the known optimizers."""
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(sorted(OPTIMIZERS))}") from None
    return factory(device=device)
