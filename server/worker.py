"""The worker loop: collect a batch, run the potential, deliver the results; relaxations advance one step per batch.

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
from ..models.system import AtomicSystem
from .batching import AtomBudgetBatcher, BatchPolicy, TaskSource
from .relaxation import RelaxationSet
from .tasks import Task, TaskResult

log = logging.getLogger(__name__)


class Worker:
    """Evaluates batches of tasks from ``source`` with one :class:`Potential`; relaxes structures in flight."""

    def __init__(self, potential: Potential, source: TaskSource, policy: BatchPolicy | None = None):
        self.potential = potential
        self.source = source
        self.batcher = AtomBudgetBatcher(source, (policy or BatchPolicy()).for_device(potential.device.type))
        self.relaxations = RelaxationSet()
        #: Reported with every result: the potential's dtype and device.
        self.info = {"dtype": str(potential.dtype).removeprefix("torch."), "device": str(potential.device)}
        self.batches_run = 0
        self.structures_run = 0

    def run(self, stop: threading.Event) -> None:
        """Serve batches until ``stop`` is set."""
        while not stop.is_set():
            self.step()

    def step(self) -> int:
        """Run one round: new tasks and every relaxation's current geometry in one batch; return its size.

        Waits for tasks only when nothing is being relaxed; otherwise takes what is queued and goes on.
        """
        relaxing = len(self.relaxations) > 0
        room = self.batcher.max_atoms - self.relaxations.n_atoms
        batch = self.batcher.next_batch(relax_room=room, wait=not relaxing)
        if not batch and not relaxing:
            return 0
        finished, accepted = self._family_checks(batch)
        predict_tasks = [task for task in accepted if task.relax is None]
        for task in accepted:
            if task.relax is not None:
                self.relaxations.add(task.id, task.system, task.relax)
        geometries = [
            Task(id=key, model="", system=system, properties=_relax_properties(system))
            for key, system in self.relaxations.systems()
        ]
        outputs = self._predict(predict_tasks + geometries)
        finished += [_predict_result(task.id, outputs[task.id]) for task in predict_tasks]
        predictions = {key: output for key, output in outputs.items() if isinstance(output, Prediction)}
        for ended in self.relaxations.advance({task.id: predictions.get(task.id) for task in geometries}):
            finished.append(TaskResult(ended.key, prediction=ended.prediction, relaxation=ended.outcome))
        finished += [
            _failure(task.id, "model_error", outputs[task.id]) for task in geometries if task.id not in predictions
        ]
        for result in finished:
            result.worker = self.info
        if finished:
            self.source.deliver(finished)
        self.batches_run += 1
        self.structures_run += len(predict_tasks) + len(geometries)
        return len(predict_tasks) + len(geometries)

    def fail_pending(self, message: str) -> None:
        """Answer every task this worker holds or could fetch with an error, so no request waits forever."""
        pending = [task.id for task in self.batcher.drain()]
        pending += [key for key, _ in self.relaxations.systems()]
        self.relaxations = RelaxationSet()
        while batch := self.source.fetch(self.batcher.policy.max_structures, 0.0):
            pending.extend(task.id for task in batch)
        self.source.deliver([_failure(task_id, "worker_failed", message) for task_id in pending])

    def evaluate(self, tasks: Sequence[Task]) -> list[TaskResult]:
        """Run the family's own checks, then evaluate the accepted tasks as one batch (no relaxation)."""
        rejected, accepted = self._family_checks(tasks)
        outputs = self._predict(accepted)
        results = {result.task_id: result for result in rejected}
        results.update((task.id, _predict_result(task.id, outputs[task.id])) for task in accepted)
        for result in results.values():
            result.worker = self.info
        return [results[task.id] for task in tasks]

    def _family_checks(self, tasks: Sequence[Task]) -> tuple[list[TaskResult], list[Task]]:
        """The tasks the model family refuses (as error results), and those it accepts."""
        rejected, accepted = [], []
        for task in tasks:
            try:
                self.potential.check(task.system)
            except StructureRejected as rejection:
                rejected.append(_failure(task.id, rejection.code, rejection.message))
            else:
                accepted.append(task)
        return rejected, accepted

    def _predict(self, tasks: Sequence[Task]) -> dict[str, Prediction | str]:
        """Each task's prediction, or why the model failed on it; on failure, split and retry to isolate the culprit."""
        if not tasks:
            return {}
        properties = sorted({p for task in tasks for p in task.properties})
        try:
            predictions = self.potential.predict([task.system for task in tasks], properties)
        except Exception as error:
            if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(tasks) == 1:
                log.warning("task %s failed: %r", tasks[0].id, error)
                return {tasks[0].id: f"the model failed on this structure: {error!r}"}
            log.info("batch of %d failed (%r); splitting", len(tasks), error)
            middle = len(tasks) // 2
            return self._predict(tasks[:middle]) | self._predict(tasks[middle:])
        return {task.id: prediction for task, prediction in zip(tasks, predictions, strict=True)}


def _relax_properties(system: AtomicSystem) -> tuple[str, ...]:
    return ("energy", "forces", "stress") if system.pbc.all() else ("energy", "forces")


def _predict_result(task_id: str, output: Prediction | str) -> TaskResult:
    if isinstance(output, str):
        return _failure(task_id, "model_error", output)
    arrays = [np.asarray(output.energy)]
    arrays += [a for a in (output.forces, output.stress) if a is not None]
    if not all(np.isfinite(a).all() for a in arrays):
        return _failure(task_id, "non_finite_output", "the model returned NaN or infinite values for this structure")
    return TaskResult(task_id=task_id, prediction=output)


def _failure(task_id: str, code: str, message: str) -> TaskResult:
    return TaskResult(task_id=task_id, error_code=code, error_message=message)
