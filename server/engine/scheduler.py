"""Schedule and update: what a worker evaluates each round, and what each round's outputs finish.

The :class:`Scheduler` owns everything a worker holds: the batcher's queue of fetched tasks and the tasks in
flight, advanced one step per round: relaxations, MD runs and nudged-elastic-band paths, each kind in an
:class:`~..dynamics.groups.InFlight` group. :meth:`Scheduler.schedule` admits new tasks within the atom budgets
(predictions and in-flight tasks have budgets of their own, so predictions are never held up by relaxations or MD)
and lists the round's evaluations: the new predictions and the current geometries of every group.
:meth:`Scheduler.update` turns the round's outputs into finished results: predictions are done at once; each
group takes one step, and the tasks that ended leave, so that waiting ones join in the next round (in-flight
batching). What running tasks report on the way (MD frames, checkpoints) is collected in
:attr:`Scheduler.reports` for the worker to pass on.

With a potential whose tensor path is native (``Potential.tensor_native``), each group is handed over as one device
batch (``Round.groups``) and its state never leaves the device; otherwise its geometries join the round's host
evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import ErrorCode
from ...models.prediction import Prediction
from ...models.system import AtomicSystem
from ...models.tensor_batch import NeighborSource, TensorBatch, TensorPrediction
from ...protocol import StopReason
from ..dynamics.groups import Ended, InFlight
from ..dynamics.md import MDSet
from ..dynamics.neb import NEBSet
from ..dynamics.outcome import MDOutcome, NEBOutcome, Progress
from ..dynamics.relaxation import RelaxationSet
from .batching import AtomBudgetBatcher
from .executor import Evaluation, Failure
from .tasks import Task, TaskResult
from .uncertainty_watch import UncertaintyWatch


@dataclass
class Round:
    """One round's work: what to evaluate, and the tasks already finished without an evaluation."""

    evaluations: list[Evaluation] = field(default_factory=list)
    #: Keys of the evaluations that are new predictions (the others are relaxation geometries).
    predictions: list[str] = field(default_factory=list)
    finished: list[TaskResult] = field(default_factory=list)
    #: In-flight groups' geometries as device batches, by group name (tensor path only).
    groups: dict[str, TensorBatch] = field(default_factory=dict)
    #: The evaluation keys of each group's geometries among ``evaluations`` (host path only).
    group_keys: dict[str, list[str]] = field(default_factory=dict)


#: A group batch's outputs: the prediction, a mask of the systems it failed on, and their failures.
TensorOutput = tuple[TensorPrediction, torch.Tensor, dict[int, Failure]]


class Scheduler:
    """Admits tasks from the batcher, keeps relaxations, MD runs and NEB paths in flight, and reports what each
    round finished.

    ``rejects`` is the model family's own check of a structure (None: accepted); a rejected task is finished
    with its reason without being evaluated. ``selector`` runs a selection task (``Task.select``) whole.
    With ``tensor_path``, in-flight tasks stay on ``device`` and are evaluated as device batches, whose neighbours
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
        #: Each watched task's largest uncertainty, and its max_grade (uncertainty_watch.py).
        self.watch = UncertaintyWatch()
        #: Tasks in flight, one group per kind: "relax:<optimizer>", "md", "neb".
        self.groups: dict[str, InFlight] = {}
        #: What running tasks reported in the last update (MD frames and checkpoints), for the source.
        self.reports: list[Progress] = []

    @property
    def relaxing(self) -> int:
        """Tasks in flight (relaxations, MD runs, NEB paths)."""
        return sum(len(group) for group in self.groups.values())

    @property
    def holding(self) -> int:
        """Tasks taken from the source and not yet finished: fetched, or in flight."""
        return len(self.batcher) + self.relaxing

    @property
    def relaxing_atoms(self) -> int:
        return sum(group.n_atoms for group in self.groups.values())

    def _group(self, task: Task) -> tuple[InFlight, Any]:
        """The group that runs in-flight ``task`` (made on first use), and the task's spec for it."""
        if task.md is not None:
            name, spec, make = "md", task.md, lambda: MDSet(self.device, self.neighbors)
        elif task.neb is not None:
            name, spec, make = "neb", task.neb, lambda: NEBSet(self.device, self.neighbors)
        else:
            assert task.relax is not None
            optimizer = task.relax.options.optimizer
            name, spec = f"relax:{optimizer}", task.relax
            make = lambda: RelaxationSet(optimizer, self.device, self.neighbors)  # noqa: E731
        if name not in self.groups:
            self.groups[name] = make()
        return self.groups[name], spec

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
            elif not task.in_flight:
                work.evaluations.append(Evaluation(task.id, task.system, task.properties))
                work.predictions.append(task.id)
            else:
                group, spec = self._group(task)
                try:
                    group.add(task.id, task.system, spec)
                except ValueError as refusal:  # what the front end could not check without the engine
                    work.finished.append(TaskResult.failure(task.id, ErrorCode.INVALID_REQUEST, str(refusal)))
                    continue
                if group.watched:
                    self.watch.start(task.id, getattr(spec.options, "max_grade", None))
        for name, group in self.groups.items():
            if self.tensor_path:
                work.groups[name] = group.batch()
                continue
            properties, systems = group.properties(), group.systems()
            work.group_keys[name] = [key for key, _ in systems]
            work.evaluations += [Evaluation(key, system, _for(properties, system)) for key, system in systems]
        return work

    def update(
        self,
        work: Round,
        outputs: dict[str, Prediction | Failure],
        tensor_outputs: dict[str, TensorOutput] | None = None,
    ) -> list[TaskResult]:
        """The results finished by this round: its predictions, and the in-flight tasks that ended or failed.

        ``tensor_outputs`` holds the outputs of ``work.groups`` (:meth:`Executor.execute_tensors`), by group name.
        What the groups reported on the way is left in :attr:`reports`.
        """
        finished = list(work.finished)
        self.reports = []
        for key in work.predictions:
            finished.append(_prediction_result(key, outputs[key]))
        for name, group in list(self.groups.items()):
            if name in work.groups:
                batch = work.groups[name]
                prediction, failed, failures = (tensor_outputs or {})[name]
                failed_keys = _by_task(group, {batch.keys[i]: failure for i, failure in failures.items()})
                watched = _watched(batch.keys, prediction, failed_keys) if group.watched else {}
                watch_finished, stop = self._watch(group, watched)
                # the watch's "no uncertainty" verdict took some out of ``watched``: they leave without an outcome
                kept = watched.keys() | failed_keys.keys()
                dropped = [i for i, key in enumerate(batch.keys) if key not in kept] if group.watched else []
                if dropped:
                    failed = failed.clone()
                    failed[dropped] = True
                ended = group.advance_tensors(prediction, failed, stop)
            else:
                evaluated = {key: outputs[key] for key in work.group_keys.get(name, [])}
                predictions = {key: output for key, output in evaluated.items() if isinstance(output, Prediction)}
                failed_keys = _by_task(group, {k: o for k, o in evaluated.items() if isinstance(o, Failure)})
                watch_finished, stop = self._watch(group, predictions) if group.watched else ([], {})
                ended = group.advance({key: predictions.get(key) for key in evaluated}, stop)
            finished += watch_finished + [self._ended(result) for result in ended]
            finished += [TaskResult.failure(key, failure.code, failure.message) for key, failure in failed_keys.items()]
            for key in failed_keys:
                self.watch.finish(key)
            self.reports += group.progress()
            if not len(group):
                del self.groups[name]
        return finished

    def _ended(self, ended: Ended) -> TaskResult:
        """The result of a task that left its group."""
        largest = self.watch.finish(ended.key)
        outcome = ended.outcome
        result = TaskResult(ended.key, ended.prediction, uncertainty_max=largest)
        if isinstance(outcome, MDOutcome):
            result.md = outcome
        elif isinstance(outcome, NEBOutcome):
            result.neb = outcome
        else:
            result.relaxation = outcome
        return result

    def drain(self) -> list[str]:
        """Hand back the ids of every task held (queued or in flight), forgetting them."""
        pending = [task.id for task in self.batcher.drain()]
        for group in self.groups.values():
            pending += group.keys()
        self.groups.clear()
        self.watch.clear()
        return pending

    def _watch(
        self, group: InFlight, predictions: dict[str, Prediction]
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


def _for(properties: tuple[str, ...], system: AtomicSystem) -> tuple[str, ...]:
    """What to ask the model for at one of a group's geometries: stress only for a structure periodic in 3D."""
    return properties if system.pbc.all() else tuple(p for p in properties if p != "stress")


def _by_task(group: InFlight, failures: dict[str, Failure]) -> dict[str, Failure]:
    """Failures by task id (an NEB path fails with the first of its images that failed)."""
    by_task: dict[str, Failure] = {}
    for key, failure in failures.items():
        by_task.setdefault(group.owner(key), failure)
    return by_task


def _prediction_result(key: str, output: Prediction | Failure) -> TaskResult:
    """A prediction's result: its failure, or a failure when it holds NaN or infinite values."""
    if isinstance(output, Failure):
        return TaskResult.failure(key, output.code, output.message)
    arrays = [np.asarray(output.energy)] + [a for a in (output.forces, output.stress) if a is not None]
    if not all(np.isfinite(a).all() for a in arrays):
        message = "the model returned NaN or infinite values for this structure"
        return TaskResult.failure(key, ErrorCode.NON_FINITE_OUTPUT, message)
    return TaskResult(key, prediction=output)
