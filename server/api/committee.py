"""Committees served by their members: the front end fans each prediction out to every member's queue and
combines the answers (the members' mean and spread, :func:`~mlipserve.models.committee.combine`).

A committee card (family ``committee``) names member models. Where no worker serves the committee itself, each
member is served as usual, possibly by different workers in different environments; :class:`CommitteeDirectory`
reports the committee as the combination of its members' states, and :class:`CommitteeBroker` turns one
committee task into one task per member, submitted together, and their results into one. Members are asked for
forces even when the request is not: the committee's figure is their force spread.

A relaxation needs the mean forces at every step, on one worker: a committee is relaxed only where a worker serves
the committee itself (``--model COMMITTEE``, which loads every member in-process when they share an environment);
a fanned-out committee refuses relaxations and selections with 422 (:meth:`CommitteeDirectory.check_can_step`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from ...errors import ErrorCode
from ...models.cards import ModelCard
from ...models.committee import combine, is_committee, members_of
from ...models.registry import ModelRegistry, UnknownModel
from ..engine.tasks import Task, TaskResult
from ..transport.base import Broker, ModelDirectory, ModelState, ModelStatus, ProgressHandler
from .errors import RequestError

#: The worse of two states wins when members' states are combined.
_SEVERITY = {ModelState.READY: 0, ModelState.LOADING: 1, ModelState.NO_WORKERS: 2, ModelState.FAILED: 3}


class CommitteeDirectory:
    """The served models of ``inner``, plus each committee whose members are served but which itself is not."""

    def __init__(self, inner: ModelDirectory, registry: ModelRegistry):
        self.inner = inner
        self.registry = registry

    def _committee(self, name: str) -> ModelCard | None:
        try:
            card = self.registry.card(name)
        except UnknownModel:
            return None
        return card if is_committee(card) else None

    async def fanned_out(self, name: str) -> tuple[str, ...] | None:
        """The members of ``name`` when it is a committee that the front end fans out, else None."""
        card = self._committee(name)
        if card is None or _serves_itself(await self.inner.status(name)):
            return None
        return members_of(card)

    async def status(self, name: str) -> ModelStatus | None:
        status = await self.inner.status(name)
        card = None if _serves_itself(status) else self._committee(name)
        if card is None:
            return status
        members = {member: await self.inner.status(member) for member in members_of(card)}
        return _combined(members)

    async def statuses(self, queues: bool = False) -> dict[str, ModelStatus]:
        statuses = await self.inner.statuses(queues)
        for card in self.registry.cards():
            members = members_of(card) if is_committee(card) else ()
            if members and not _serves_itself(statuses.get(card.name)) and all(m in statuses for m in members):
                statuses[card.name] = _combined({member: statuses[member] for member in members})
        return statuses

    async def check_can_step(self, card: ModelCard, action: str = "relax") -> None:
        """Refuse (422) to ``action`` ("relax", "run MD", "run NEB": work stepped by its forces) with a committee
        whose members are served apart (see the module docstring)."""
        if await self.fanned_out(card.name) is not None:
            message = (
                f"committee {card.name!r} is served by its members apart, so it cannot {action} (every step needs "
                f"the members' mean forces on one worker); serve the committee itself (--model {card.name}), which "
                f"loads its members in one worker, or {action} with one member"
            )
            raise RequestError(422, ErrorCode.INVALID_REQUEST, message)


def _serves_itself(status: ModelStatus | None) -> bool:
    """Whether a committee with this status is served itself: hosted here (embedded), or by a live worker (Redis,
    where a model nobody serves is ``no_workers``)."""
    return status is not None and status.state is not ModelState.NO_WORKERS


def _combined(members: dict[str, ModelStatus | None]) -> ModelStatus:
    """A committee's status from its members': the worst state, every member's workers (each naming its member)."""
    missing = [name for name, status in members.items() if status is None]
    if missing:
        return ModelStatus(ModelState.FAILED, f"member(s) {', '.join(missing)} not served here")
    present = {name: status for name, status in members.items() if status is not None}
    worst = max(present.values(), key=lambda status: _SEVERITY[status.state])
    errors = [f"{name}: {status.error}" for name, status in present.items() if status.error]
    workers = [worker | {"member": name} for name, status in present.items() for worker in status.workers]
    queued = [status.queued for status in present.values()]
    pending = [status.pending for status in present.values()]
    return ModelStatus(
        state=worst.state,
        error="; ".join(errors) or None,
        workers=workers,
        queued=None if None in queued else sum(q for q in queued if q is not None),
        pending=None if None in pending else sum(p for p in pending if p is not None),
    )


class CommitteeBroker(Broker):
    """``inner`` with committee tasks fanned out to their members and the members' results combined."""

    def __init__(self, inner: Broker, directory: CommitteeDirectory):
        super().__init__(inner.timeout)
        self.inner = inner
        self.directory = directory

    async def submit(self, tasks: Sequence[Task], on_progress: ProgressHandler | None = None) -> list[TaskResult]:
        fanned: dict[str, tuple[str, ...] | None] = {}
        plan: list[list[Task]] = []  # per task: the tasks that answer it (the task itself, or one per member)
        for task in tasks:
            if task.model not in fanned:
                fanned[task.model] = await self.directory.fanned_out(task.model)
            plan.append(_member_tasks(task, members) if (members := fanned[task.model]) else [task])
        results = iter(await self.inner.submit([sub for subs in plan for sub in subs], on_progress))
        answered = []
        for task, subs in zip(tasks, plan, strict=True):
            own = [next(results) for _ in subs]
            answered.append(own[0] if subs[0] is task else _combined_result(task, subs, own))
        return answered

    def waiting_for(self, task_id: str) -> bool:
        return self.inner.waiting_for(task_id)

    async def _enqueue(self, tasks: Sequence[Task]) -> None:  # pragma: no cover - submit goes through inner
        raise NotImplementedError("CommitteeBroker submits through its inner broker")

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()


def _member_tasks(task: Task, members: Sequence[str]) -> list[Task]:
    properties = tuple(dict.fromkeys((*task.properties, "forces")))
    return [dataclasses.replace(task, id=uuid.uuid4().hex, model=member, properties=properties) for member in members]


def _combined_result(task: Task, subs: Sequence[Task], results: Sequence[TaskResult]) -> TaskResult:
    """One committee result from its members': a member's failure fails the structure, naming the member."""
    for sub, result in zip(subs, results, strict=True):
        if result.prediction is None:
            code = result.error_code or ErrorCode.MODEL_ERROR
            return TaskResult.failure(task.id, code, f"committee member {sub.model!r}: {result.error_message}")
    prediction = combine([r.prediction for r in results if r.prediction is not None], task.n_atoms)
    if "forces" not in task.properties:
        prediction.forces = None
    return TaskResult(task.id, prediction=prediction, worker=results[0].worker)
