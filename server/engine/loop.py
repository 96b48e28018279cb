"""The worker loop: schedule → execute → update, then deliver what finished.

One :class:`Worker` serves one model from one task source (the embedded in-process queue or a Redis stream).
Each round the :class:`~.scheduler.Scheduler` says what to evaluate (new predictions and the current geometry of
every relaxation in flight), the :class:`~.executor.Executor` runs the potential on it, and the scheduler turns
the outputs into finished results, which go back through the source.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from ...errors import ErrorCode
from ...models.neighbors import SkinNeighborList
from ...models.potential import Potential
from .batching import AtomBudgetBatcher, BatchPolicy, TaskSource
from .budget import BatchBudget
from .executor import Executor
from .scheduler import Scheduler
from .selecting import run_selection
from .tasks import TaskResult


@dataclass(frozen=True)
class RoundStats:
    """What one round evaluated, how long the model took, and what it finished."""

    structures: int
    atoms: int
    seconds: float
    finished: int
    #: Optimizer steps of the relaxations that ended this round.
    relax_steps: int


class Worker:
    """Evaluates batches of tasks from ``source`` with one :class:`Potential`; relaxes structures, runs MD and NEB
    paths in flight.

    ``observe``, when given, is called with each round's :class:`RoundStats` (a worker's metrics).
    """

    def __init__(
        self,
        potential: Potential,
        source: TaskSource,
        policy: BatchPolicy | None = None,
        observe: Callable[[RoundStats], None] | None = None,
        budget: BatchBudget | None = None,
    ):
        self.source = source
        #: The batch budget and how it was chosen; it shrinks after an out-of-memory error (:meth:`_out_of_memory`).
        self.budget = budget
        self.executor = Executor(potential, on_out_of_memory=self._out_of_memory)
        batcher = AtomBudgetBatcher(source, (policy or BatchPolicy()).for_device(potential.device.type))
        self.scheduler = Scheduler(
            batcher,
            self.executor.rejects,
            partial(run_selection, potential),
            device=potential.device,
            tensor_path=potential.tensor_native,
            # relaxations reuse each structure's neighbour list from step to step (the edges a fresh list would give)
            neighbors=SkinNeighborList() if potential.tensor_native else None,
        )
        self.observe = observe
        self.batches_run = 0
        self.structures_run = 0
        self.tasks_finished = 0

    @property
    def info(self) -> dict[str, str]:
        """The potential's dtype and device, reported with every result."""
        return self.executor.info

    def run(self, stop: threading.Event) -> None:
        """Serve rounds until ``stop`` is set."""
        while not stop.is_set():
            self.step()

    def step(self) -> int:
        """Run one round and deliver what it finished; return how many structures it evaluated.

        Waits a little for tasks only when nothing is being relaxed; otherwise takes what is queued and goes on.
        """
        work = self.scheduler.schedule()
        if work is None:
            return 0
        started = time.perf_counter()
        outputs = self.executor.execute(work.evaluations)
        tensor_outputs = {
            name: self.executor.execute_tensors(batch, self.scheduler.groups[name].properties())
            for name, batch in work.groups.items()
        }
        seconds = time.perf_counter() - started
        finished = self.scheduler.update(work, outputs, tensor_outputs)
        if self.scheduler.reports:
            self.source.report(self.scheduler.reports)
        self._deliver(finished)
        structures = len(work.evaluations) + sum(batch.n_systems for batch in work.groups.values())
        self.batches_run += 1
        self.structures_run += structures
        if self.observe is not None:
            atoms = sum(evaluation.system.n_atoms for evaluation in work.evaluations)
            atoms += sum(int(batch.positions.shape[0]) for batch in work.groups.values())
            steps = sum(result.relaxation.steps for result in finished if result.relaxation is not None)
            self.observe(RoundStats(structures, atoms, seconds, len(finished), steps))
        return structures

    def _out_of_memory(self, failed_atoms: int) -> None:
        """Shrink the batch budget below a batch that ran out of device memory."""
        if self.budget is None:
            return
        self.budget = self.budget.after_out_of_memory(failed_atoms)
        self.scheduler.batcher.max_atoms = self.budget.max_atoms

    @property
    def holding(self) -> int:
        """Tasks taken from the source and not yet finished."""
        return self.scheduler.holding

    def release(self) -> list[str]:
        """Forget every task held (fetched or in flight) and return their ids, for the source to take back."""
        return self.scheduler.drain()

    def fail_pending(self, message: str) -> None:
        """Answer every task this worker holds or could fetch with an error, so no request waits forever."""
        pending = self.scheduler.drain()
        while batch := self.source.fetch(self.scheduler.batcher.policy.max_structures, 0.0):
            pending.extend(task.id for task in batch)
        self._deliver([TaskResult.failure(key, ErrorCode.WORKER_FAILED, message) for key in pending])

    def _deliver(self, results: list[TaskResult]) -> None:
        for result in results:
            result.worker = self.info
        if results:
            self.source.deliver(results)
            self.tasks_finished += len(results)
