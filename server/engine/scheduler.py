"""Schedule and update: what a worker evaluates each round, and what each round's outputs finish.

The :class:`Scheduler` owns everything a worker holds: the batcher's queue of fetched tasks and the relaxations
in flight. :meth:`Scheduler.schedule` admits new tasks within the atom budgets (predictions and relaxations have
budgets of their own, so predictions are never held up by relaxations) and lists the round's evaluations: the new
predictions and the current geometry of every relaxation. :meth:`Scheduler.update` turns the round's outputs into
finished results: predictions are done at once; each relaxation takes one optimizer step, and those that ended
leave, so that waiting ones join in the next round (in-flight batching).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...errors import ErrorCode
from ...models.prediction import ALL_PROPERTIES, Prediction
from ...models.system import AtomicSystem
from ..dynamics.relaxation import RelaxationSet
from .batching import AtomBudgetBatcher
from .executor import Evaluation, Failure
from .tasks import TaskResult

#: What a relaxation reads at each geometry: stress only where a cell can relax.
RELAX_PERIODIC, RELAX_MOLECULE = ALL_PROPERTIES, ("energy", "forces")


@dataclass
class Round:
    """One round's work: what to evaluate, and the tasks already finished without an evaluation."""

    evaluations: list[Evaluation] = field(default_factory=list)
    #: Keys of the evaluations that are new predictions (the others are relaxation geometries).
    predictions: list[str] = field(default_factory=list)
    finished: list[TaskResult] = field(default_factory=list)


class Scheduler:
    """Admits tasks from the batcher, keeps relaxations in flight, and reports what each round finished.

    ``rejects`` is the model family's own check of a structure (None: accepted); a rejected task is finished
    with its reason without being evaluated.
    """

    def __init__(self, batcher: AtomBudgetBatcher, rejects: Callable[[AtomicSystem], Failure | None]):
        self.batcher = batcher
        self.rejects = rejects
        #: Relaxations in flight, one set per optimizer.
        self.relaxations: dict[str, RelaxationSet] = {}

    @property
    def relaxing(self) -> int:
        return sum(len(group) for group in self.relaxations.values())

    @property
    def holding(self) -> int:
        """Tasks taken from the source and not yet finished: fetched, or being relaxed."""
        return len(self.batcher) + self.relaxing

    @property
    def relaxing_atoms(self) -> int:
        return sum(group.n_atoms for group in self.relaxations.values())

    def schedule(self) -> Round | None:
        """The next round, or None when there is nothing to do (after waiting a little for tasks when idle)."""
        relaxing = self.relaxing > 0
        room = self.batcher.max_atoms - self.relaxing_atoms
        tasks = self.batcher.next_batch(relax_room=room, wait=not relaxing)
        if not tasks and not relaxing:
            return None
        work = Round()
        for task in tasks:
            failure = self.rejects(task.system)
            if failure is not None:
                work.finished.append(TaskResult.failure(task.id, failure.code, failure.message))
            elif task.relax is None:
                work.evaluations.append(Evaluation(task.id, task.system, task.properties))
                work.predictions.append(task.id)
            else:
                optimizer = task.relax.options.optimizer
                self.relaxations.setdefault(optimizer, RelaxationSet(optimizer)).add(task.id, task.system, task.relax)
        for group in self.relaxations.values():
            work.evaluations += [Evaluation(key, system, _relax_properties(system)) for key, system in group.systems()]
        return work

    def update(self, work: Round, outputs: dict[str, Prediction | Failure]) -> list[TaskResult]:
        """The results finished by this round: its predictions, and the relaxations that ended or failed."""
        finished = list(work.finished)
        for key in work.predictions:
            finished.append(_prediction_result(key, outputs[key]))
        for optimizer, group in list(self.relaxations.items()):
            keys = group.keys()
            predictions = {key: output for key in keys if isinstance(output := outputs[key], Prediction)}
            for ended in group.advance(predictions):
                finished.append(TaskResult(ended.key, prediction=ended.prediction, relaxation=ended.outcome))
            failures = [(key, output) for key in keys if isinstance(output := outputs[key], Failure)]
            finished += [TaskResult.failure(key, failure.code, failure.message) for key, failure in failures]
            if not len(group):
                del self.relaxations[optimizer]
        return finished

    def drain(self) -> list[str]:
        """Hand back the ids of every task held (queued or in flight), forgetting them."""
        pending = [task.id for task in self.batcher.drain()]
        for group in self.relaxations.values():
            pending += group.keys()
        self.relaxations.clear()
        return pending


def _relax_properties(system: AtomicSystem) -> tuple[str, ...]:
    return RELAX_PERIODIC if system.pbc.all() else RELAX_MOLECULE


def _prediction_result(key: str, output: Prediction | Failure) -> TaskResult:
    """A prediction's result: its failure, or a failure when it holds NaN or infinite values."""
    if isinstance(output, Failure):
        return TaskResult.failure(key, output.code, output.message)
    arrays = [np.asarray(output.energy)] + [a for a in (output.forces, output.stress) if a is not None]
    if not all(np.isfinite(a).all() for a in arrays):
        message = "the model returned NaN or infinite values for this structure"
        return TaskResult.failure(key, ErrorCode.NON_FINITE_OUTPUT, message)
    return TaskResult(key, prediction=output)
