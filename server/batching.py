"""Dynamic batching: gather queued tasks into batches bounded by an atom budget and a short maximum wait.

The batcher is independent of where tasks come from: any :class:`TaskSource` (the embedded in-process queue, or
Redis Streams) feeds it, so embedded and distributed workers batch the same way.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

from .tasks import Task, TaskResult


class TaskSource(Protocol):
    """Where a worker takes tasks from and hands results back to."""

    def fetch(self, max_tasks: int, timeout: float) -> list[Task]:
        """Up to ``max_tasks`` queued tasks, waiting at most ``timeout`` seconds for the first one."""

    def deliver(self, results: list[TaskResult]) -> None:
        """Return finished results to whoever submitted the tasks."""


#: Default atom budget of a batch per device type. On the CPU a batch much larger than a few structures runs
#: slower per atom than small ones (its tensors fall out of cache; benchmarks/README.md); GPUs want large batches.
DEFAULT_ATOM_BUDGET = {"cpu": 128, "cuda": 8192}


@dataclass(frozen=True)
class BatchPolicy:
    """How big a batch may grow and how long the first task of a batch may wait for company.

    ``max_atoms=None`` takes the device's default from :data:`DEFAULT_ATOM_BUDGET` (see :meth:`for_device`).
    """

    max_atoms: int | None = None
    max_structures: int = 512
    max_wait: float = 0.005
    #: How long an idle worker blocks waiting for work before checking whether it should stop.
    idle_poll: float = 0.5

    def for_device(self, device: str) -> BatchPolicy:
        """This policy with its atom budget resolved for ``device`` (e.g. "cpu", "cuda:0")."""
        if self.max_atoms is not None:
            return self
        kind = device.split(":")[0]
        return replace(self, max_atoms=DEFAULT_ATOM_BUDGET.get(kind, DEFAULT_ATOM_BUDGET["cpu"]))


class AtomBudgetBatcher:
    """Form batches of at most ``policy.max_atoms`` atoms; a task larger than the budget runs alone.

    A task that would overflow the current batch is kept for the next one, so arrival order is preserved.
    """

    def __init__(self, source: TaskSource, policy: BatchPolicy):
        if policy.max_atoms is None:
            raise ValueError("resolve the atom budget first: policy.for_device(device)")
        self.source = source
        self.policy = policy
        self.max_atoms: int = policy.max_atoms
        self._carry: deque[Task] = deque()

    def next_batch(self) -> list[Task]:
        """Block until at least one task is available (or the idle poll ends), then fill the batch."""
        policy = self.policy
        if not self._carry:
            self._carry.extend(self.source.fetch(policy.max_structures, policy.idle_poll))
            if not self._carry:
                return []
        deadline = time.monotonic() + policy.max_wait
        batch: list[Task] = []
        atoms = 0
        while True:
            while self._carry and len(batch) < policy.max_structures:
                task = self._carry[0]
                if batch and atoms + task.n_atoms > self.max_atoms:
                    return batch
                batch.append(self._carry.popleft())
                atoms += task.n_atoms
            remaining = deadline - time.monotonic()
            if atoms >= self.max_atoms or len(batch) >= policy.max_structures or remaining <= 0:
                return batch
            self._carry.extend(self.source.fetch(policy.max_structures - len(batch), remaining))
            if not self._carry:
                return batch

    def drain(self) -> list[Task]:
        """Hand back the tasks fetched but not yet batched."""
        tasks = list(self._carry)
        self._carry.clear()
        return tasks
