"""Schedule and update: what a worker evaluates each round, and what each round's outputs finish.

The :class:`Scheduler` owns everything a worker holds: the batcher's queue of fetched tasks and the relaxations
in flight. :meth:`Scheduler.schedule` admits new tasks within the atom budgets (predictions and relaxations have
budgets of their own, so predictions are never held up by relaxations) and lists the round's evaluations: the new
predictions and the current geometry of every relaxation. :meth:`Scheduler.update` turns the round's outputs into
finished results: predictions are done at once; each relaxation takes one optimizer step, and those that ended
leave, so that waiting ones join in the next round (in-flight batching).

With a potential whose tensor path is native (``Potential.tensor_native``), each set of relaxations is handed over
as one device batch (``Round.relaxations``) and its state never leaves the device; otherwise relaxation geometries
join the round's host evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import ErrorCode
from ...models.prediction import ALL_PROPERTIES, Prediction
from ...models.system import AtomicSystem
from ...models.tensor_batch import NeighborSource, TensorBatch, TensorPrediction
from ...protocol import StopReason
from ..dynamics.relaxation import Ended, RelaxationSet
from .batching import AtomBudgetBatcher
from .executor import Evaluation, Failure
from .tasks import Task, TaskResult
from .uncertainty_watch import UncertaintyWatch

#: What a relaxation reads at each geometry: stress only where a cell can relax.
RELAX_PERIODIC, RELAX_MOLECULE = ALL_PROPERTIES, ("energy", "forces")


@dataclass
class Round:
    """One round's work: what to evaluate, and the tasks already finished without an evaluation."""

    evaluations: list[Evaluation] = field(default_factory=list)
    #: Keys of the evaluations that are new predictions (the others are relaxation geometries).
    predictions: list[str] = field(default_factory=list)
    finished: list[TaskResult] = field(default_factory=list)
    #: Relaxation geometries as device batches, by optimizer (tensor path only).
    relaxations: dict[str, TensorBatch] = field(default_factory=dict)


#: A relaxation batch's outputs: the prediction, a mask of the systems it failed on, and their failures.
TensorOutput = tuple[TensorPrediction, torch.Tensor, dict[int, Failure]]


class Scheduler:
    """Admits tasks from the batcher, keeps relaxations in flight, and reports what each round finished.

    ``rejects`` is the model family's own check of a structure (None: accepted); a rejected task is finished
    with its reason without being evaluated. ``selector`` runs a selection task (``Task.select``) whole.
    With ``tensor_path``, relaxations stay on ``device`` and are evaluated as device batches, whose neighbours
    ``neighbors`` lists when given.
    """

    def __init__(
        self,
        batcher: AtomBudgetBatcher,
        rejects: Callable[[AtomicSystem], Failure | None],
        selector: Callable[[Task], TaskResult] | None = None,
        *,
        device: torch.device | str = "cpu",
        tensor_path: bool = False,
        neighbors: NeighborSource | None = None,
    ):
        self.batcher = batcher
        self.rejects = rejects
        self.selector = selector
        self.device = torch.device(device)
        self.tensor_path = tensor_path
        #: Lists the neighbours of the relaxations' device batches (None: the backends' own, on the host).
        self.neighbors = neighbors
        #: Each relaxation's largest uncertainty, and its max_grade (uncertainty_watch.py).
        self.watch = UncertaintyWatch()
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
            if task.select is not None:
                work.finished.append(_select(self.selector, task))
                continue
            failure = self.rejects(task.system)
            if failure is not None:
                work.finished.append(TaskResult.failure(task.id, failure.code, failure.message))
            elif task.relax is None:
                work.evaluations.append(Evaluation(task.id, task.system, task.properties))
                work.predictions.append(task.id)
            else:
                optimizer = task.relax.options.optimizer
                self.watch.start(task.id, task.relax.options.max_grade)
                group = self.relaxations.get(optimizer) or RelaxationSet(optimizer, self.device, self.neighbors)
                self.relaxations[optimizer] = group
                group.add(task.id, task.system, task.relax)
        for optimizer, group in self.relaxations.items():
            if self.tensor_path:
                work.relaxations[optimizer] = group.batch()
                continue
            work.evaluations += [Evaluation(key, system, _relax_properties(system)) for key, system in group.systems()]
        return work

    def update(
        self,
        work: Round,
        outputs: dict[str, Prediction | Failure],
        tensor_outputs: dict[str, TensorOutput] | None = None,
    ) -> list[TaskResult]:
        """The results finished by this round: its predictions, and the relaxations that ended or failed.

        ``tensor_outputs`` holds the outputs of ``work.relaxations`` (:meth:`Executor.execute_tensors`), by
        optimizer.
        """
        finished = list(work.finished)
        for key in work.predictions:
            finished.append(_prediction_result(key, outputs[key]))
        for optimizer, group in list(self.relaxations.items()):
            if optimizer in work.relaxations:
                batch = work.relaxations[optimizer]
                prediction, failed, failures = (tensor_outputs or {})[optimizer]
                failed_keys = {batch.keys[i]: failure for i, failure in failures.items()}
                watched = _watched(batch.keys, prediction, failed_keys)
                watch_finished, stop = self._watch(group, watched)
                dropped = [i for i, key in enumerate(batch.keys) if key not in watched and key not in failed_keys]
                if dropped:
                    failed = failed.clone()
                    failed[dropped] = True
                ended = group.advance_tensors(prediction, failed, stop)
            else:
                keys = group.keys()
                predictions = {key: output for key in keys if isinstance(output := outputs[key], Prediction)}
                failed_keys = {key: output for key in keys if isinstance(output := outputs[key], Failure)}
                watch_finished, stop = self._watch(group, predictions)
                ended = group.advance(predictions, stop)
            finished += watch_finished + [self._relaxed(result) for result in ended]
            finished += [TaskResult.failure(key, failure.code, failure.message) for key, failure in failed_keys.items()]
            for key in failed_keys:
                self.watch.finish(key)
            if not len(group):
                del self.relaxations[optimizer]
        return finished

    def _relaxed(self, ended: Ended) -> TaskResult:
        largest = self.watch.finish(ended.key)
        return TaskResult(ended.key, ended.prediction, relaxation=ended.outcome, uncertainty_max=largest)

    def drain(self) -> list[str]:
        """Hand back the ids of every task held (queued or in flight), forgetting them."""
        pending = [task.id for task in self.batcher.drain()]
        for group in self.relaxations.values():
            pending += group.keys()
        self.relaxations.clear()
        self.watch.clear()
        return pending

    def _watch(
        self, group: RelaxationSet, predictions: dict[str, Prediction]
    ) -> tuple[list[TaskResult], dict[str, StopReason]]:
        """Which relaxations' uncertainty left their ``max_grade``: they end with this geometry (the stops to hand
        to ``advance``); and fail those that asked for one from a model that reports none: they leave
        ``predictions``, so ``advance`` drops them."""
        finished, stop = [], {}
        for key, prediction in list(predictions.items()):
            verdict = self.watch.see(key, prediction)
            if verdict == "extrapolating":
                stop[key] = "extrapolating"
            elif verdict == "no_uncertainty":
                del predictions[key]
                self.watch.finish(key)
                message = "max_grade needs a model that reports an uncertainty (an active set, a committee)"
                finished.append(TaskResult.failure(key, ErrorCode.INVALID_REQUEST, message))
        return finished, stop


def _select(selector: Callable[[Task], TaskResult] | None, task: Task) -> TaskResult:
    if selector is None:
        return TaskResult.failure(task.id, ErrorCode.INVALID_REQUEST, "this worker cannot select structures")
    return selector(task)


#: What the uncertainty watch sees of a member whose model reports no uncertainty.
_NO_UNCERTAINTY = Prediction(energy=float("nan"))


def _watched(keys: list[str], prediction: TensorPrediction, failed: dict[str, Failure]) -> dict[str, Prediction]:
    """What the uncertainty watch reads of a device batch's members: host predictions holding their uncertainty
    (one copy of the energies, only for a model that reports one)."""
    if prediction.uncertainty is None:
        return {key: _NO_UNCERTAINTY for key in keys if key not in failed}
    energies = prediction.energy.cpu().tolist()
    return {
        key: Prediction(energy=energy, uncertainty=uncertainty)
        for key, energy, uncertainty in zip(keys, energies, prediction.uncertainty, strict=True)
        if key not in failed
    }


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
