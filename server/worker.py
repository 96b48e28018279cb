"""The worker loop: collect a batch, run the potential, deliver the results.

A failing batch is split in halves and retried, so one structure that makes the model raise gets an error result
of its own while the rest of its batch succeeds; an out-of-memory error is handled the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import torch

from ..models.potential import Potential, Prediction, StructureRejected
from .batching import AtomBudgetBatcher, BatchPolicy, TaskSource
from .tasks import Task, TaskResult

log = logging.getLogger(__name__)


class Worker:
    """Evaluates batches of tasks from ``source`` with one :class:`Potential`."""

    def __init__(self, potential: Potential, source: TaskSource, policy: BatchPolicy | None = None):
        self.potential = potential
        self.source = source
        self.batcher = AtomBudgetBatcher(source, (policy or BatchPolicy()).for_device(potential.device.type))
        #: Reported with every result: the potential's dtype and device.
        self.info = {"dtype": str(potential.dtype).removeprefix("torch."), "device": str(potential.device)}
        self.batches_run = 0
        self.structures_run = 0

    def run(self, stop: threading.Event) -> None:
        """Serve batches until ``stop`` is set."""
        while not stop.is_set():
            self.step()

    def step(self) -> int:
        """Run one batch, if any task is waiting; return how many tasks were run."""
        batch = self.batcher.next_batch()
        if not batch:
            return 0
        results = self.evaluate(batch)
        self.source.deliver(results)
        self.batches_run += 1
        self.structures_run += len(batch)
        return len(batch)

    def fail_pending(self, message: str) -> None:
        """Answer every task this worker holds or could fetch with an error, so no request waits forever."""
        pending = self.batcher.drain()
        while batch := self.source.fetch(self.batcher.policy.max_structures, 0.0):
            pending.extend(batch)
        self.source.deliver([_failure(task, "worker_failed", message) for task in pending])

    def evaluate(self, tasks: Sequence[Task]) -> list[TaskResult]:
        """Run the family's own checks, then evaluate the accepted tasks as one batch."""
        results: dict[str, TaskResult] = {}
        accepted = []
        for task in tasks:
            try:
                self.potential.check(task.system)
            except StructureRejected as rejection:
                results[task.id] = _failure(task, rejection.code, rejection.message)
            else:
                accepted.append(task)
        if accepted:
            results.update((result.task_id, result) for result in self._evaluate_batch(accepted))
        for result in results.values():
            result.worker = self.info
        return [results[task.id] for task in tasks]

    def _evaluate_batch(self, tasks: Sequence[Task]) -> list[TaskResult]:
        """Evaluate ``tasks`` as one batch; on failure, split and retry to isolate the culprit."""
        properties = sorted({p for task in tasks for p in task.properties})
        try:
            predictions = self.potential.predict([task.system for task in tasks], properties)
        except Exception as error:
            if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(tasks) == 1:
                log.warning("task %s failed: %r", tasks[0].id, error)
                return [_failure(tasks[0], "model_error", f"the model failed on this structure: {error!r}")]
            log.info("batch of %d failed (%r); splitting", len(tasks), error)
            middle = len(tasks) // 2
            return self._evaluate_batch(tasks[:middle]) + self._evaluate_batch(tasks[middle:])
        return [_checked(task, prediction) for task, prediction in zip(tasks, predictions, strict=True)]


def _checked(task: Task, prediction: Prediction) -> TaskResult:
    arrays = [np.asarray(prediction.energy)]
    arrays += [a for a in (prediction.forces, prediction.stress) if a is not None]
    if not all(np.isfinite(a).all() for a in arrays):
        return _failure(task, "non_finite_output", "the model returned NaN or infinite values for this structure")
    return TaskResult(task_id=task.id, prediction=prediction)


def _failure(task: Task, code: str, message: str) -> TaskResult:
    return TaskResult(task_id=task.id, error_code=code, error_message=message)
