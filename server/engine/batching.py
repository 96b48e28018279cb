"""Dynamic batching: gather queued tasks into batches bounded by an atom budget and a short maximum wait.

The batcher is independent of where tasks come from: any :class:`TaskSource` (the embedded in-process queue, or
Redis Streams) feeds it, so embedded and distributed workers batch the same way.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

from ..dynamics.outcome import Progress
from .tasks import Task, TaskResult


class TaskSource(Protocol):
    """Where a worker takes tasks from and hands results back to."""

    def fetch(self, max_tasks: int, timeout: float) -> list[Task]:
        """Up to ``max_tasks`` queued tasks, waiting at most ``timeout`` seconds for the first one."""

    def deliver(self, results: list[TaskResult]) -> None:
        """Return finished results to whoever submitted the tasks."""

    def report(self, progress: list[Progress]) -> None:
        """Pass on what running tasks report (MD frames) to their submitters, and keep their latest checkpoint:
        a task handed out again (its worker died) carries it (``MDSpec.resume``) until the task is delivered."""


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
    #: How long a batch's first task waits for company (s). Zero by default: a lone request runs at once, and
    #: tasks that come while a batch runs form the next one anyway (benchmarks/bench_latency.py).
    max_wait: float = 0.0
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
        #: Tasks taken from the source per call: about what one batch holds, so that a worker does not hold
        #: (in Redis, claim) many more tasks than it can run soon while other workers could take them.
        self._fetch_count = max(8, min(policy.max_structures, self.max_atoms // 4))

    def next_batch(self, relax_room: int | None = None, wait: bool = True) -> list[Task]:
        """Fill a batch from the queue; with ``wait``, block until a task comes (or the idle poll ends) first.

        Plain predictions and new relaxations have atom budgets of their own: ``max_atoms`` for predictions,
        ``relax_room`` for relaxations (default: ``max_atoms``; a worker relaxing structures passes what they leave
        free). Each kind keeps its order, but a prediction may pass a relaxation that waits for room, so
        predictions are never held up by relaxations. A task larger than its whole budget runs alone.
        Without ``wait``, only what is queued now is taken, at once.
        """
        policy = self.policy
        room = self.max_atoms if relax_room is None else relax_room
        if len(self._carry) < self._fetch_count:
            timeout = policy.idle_poll if wait and not self._carry else 0.0
            self._carry.extend(self.source.fetch(self._fetch_count - len(self._carry), timeout))
        if not self._carry:
            return []
        deadline = time.monotonic() + (policy.max_wait if wait else 0.0)
        batch: list[Task] = []
        atoms = {False: 0, True: 0}
        full = {False: False, True: room <= 0}
        while True:
            kept: deque[Task] = deque()
            for task in self._carry:
                relax = task.in_flight
                limit = room if relax else self.max_atoms
                alone = atoms[relax] == 0 and (not relax or room == self.max_atoms)
                if full[relax] or len(batch) >= policy.max_structures:
                    kept.append(task)
                elif atoms[relax] + task.n_atoms <= limit or alone:
                    batch.append(task)
                    atoms[relax] += task.n_atoms
                else:
                    kept.append(task)
                    full[relax] = True
            self._carry = kept
            remaining = deadline - time.monotonic()
            if (full[False] and full[True]) or len(batch) >= policy.max_structures or remaining <= 0:
                return batch
            # Never hold more than a fetch's worth unbatched: tasks waiting here are tasks other workers cannot take.
            wanted = min(self._fetch_count - len(self._carry), policy.max_structures - len(batch))
            if wanted <= 0:
                return batch
            fetched = self.source.fetch(wanted, remaining)
            if not fetched:
                return batch
            self._carry.extend(fetched)

    def __len__(self) -> int:
        """Tasks fetched and not yet batched."""
        return len(self._carry)

    def drain(self) -> list[Task]:
        """Hand back the tasks fetched but not yet batched."""
        tasks = list(self._carry)
        self._carry.clear()
        return tasks
