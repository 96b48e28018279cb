"""Brokers carry tasks from the HTTP front end to the workers and results back; directories say who serves what.

:class:`Broker` is what the front end submits through. It owns the waiting: one future per task, resolved when
the task's result comes back, and the request timeout, the same in every mode; and the frames that long-running
tasks (MD) report while they run, handed to the request's ``on_progress`` handler.
:class:`~.embedded.EmbeddedBroker` keeps in-process queues served by worker threads;
:class:`~.redis.broker.RedisBroker` sends tasks to worker processes through Redis Streams.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...errors import ErrorCode
from ..dynamics.outcome import Progress
from ..engine.tasks import Task, TaskResult

log = logging.getLogger(__name__)

#: Called on the event loop with each frame a task of the request reports (a :class:`Progress` with a frame).
ProgressHandler = Callable[[Progress], object]


class BrokerError(Exception):
    """The broker cannot take, or could not finish, the work; ``code`` says why."""

    def __init__(self, code: ErrorCode, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Unavailable(BrokerError):
    """Not now: the queue is full, no worker serves the model, or the queue itself is unreachable."""


class TimedOut(BrokerError):
    """The results did not all come within the request timeout."""


class Broker(abc.ABC):
    """Submit tasks and await their results, in order, within ``timeout`` seconds."""

    def __init__(self, timeout: float = 3600.0):
        self.timeout = timeout
        self._waiting: dict[str, asyncio.Future[TaskResult]] = {}
        #: The waiting requests' progress handlers, and the last step each task's handler was given.
        self._handlers: dict[str, ProgressHandler] = {}
        self._last_step: dict[str, int] = {}

    async def submit(self, tasks: Sequence[Task], on_progress: ProgressHandler | None = None) -> list[TaskResult]:
        """Queue ``tasks`` and return their results in the same order once all are done.

        ``on_progress`` is called on the event loop with each frame the tasks report (MD), in the order they come,
        before the task's result; each step once and in increasing order (a run resumed from a checkpoint repeats
        the frames after it: they are dropped). Cancelling the caller (or the timeout) stops the waiting; a result
        or frame that comes later is dropped.
        """
        if not tasks:
            return []
        loop = asyncio.get_running_loop()
        futures = {task.id: loop.create_future() for task in tasks}
        self._waiting.update(futures)
        if on_progress is not None:
            self._handlers.update(dict.fromkeys(futures, on_progress))
        try:
            await self._enqueue(tasks)
            try:
                return list(await asyncio.wait_for(asyncio.gather(*futures.values()), self.timeout))
            except asyncio.TimeoutError:
                raise TimedOut(ErrorCode.TIMEOUT, f"no result within {self.timeout:g} s") from None
        finally:
            for task_id, future in futures.items():
                self._waiting.pop(task_id, None)
                self._handlers.pop(task_id, None)
                self._last_step.pop(task_id, None)
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: gather reports only the first failure
                else:
                    future.cancel()

    def waiting_for(self, task_id: str) -> bool:
        """Whether a request still waits for ``task_id``'s result."""
        return task_id in self._waiting

    def _resolve(self, result: TaskResult) -> None:
        """Hand ``result`` to its waiting request (on the event loop); a late or repeated result is dropped."""
        future = self._waiting.get(result.task_id)
        if future is not None and not future.done():
            future.set_result(result)

    def _report(self, progress: Progress) -> None:
        """Hand a frame to its request's handler (on the event loop); a checkpoint without a frame, a frame of a
        task nobody waits for, and a step already handed over (a resumed run's repeat) are dropped."""
        handler = self._handlers.get(progress.task_id)
        frame = progress.frame
        if handler is None or frame is None or frame.step <= self._last_step.get(progress.task_id, -1):
            return
        self._last_step[progress.task_id] = frame.step
        try:
            handler(progress)
        except Exception:  # the request's own bug: it must not stop the broker's reader
            log.exception("progress handler of task %s failed", progress.task_id)

    def _fail_waiting(self, error: BrokerError) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    @abc.abstractmethod
    async def _enqueue(self, tasks: Sequence[Task]) -> None:
        """Put ``tasks`` on their models' queues, or raise :class:`Unavailable`."""

    async def start(self) -> None:
        """Connect and start background readers; the default has none."""

    async def close(self) -> None:
        """Release connections; the default has none."""


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    NO_WORKERS = "no_workers"


@dataclass
class ModelStatus:
    """Whether a served model can take requests now, and the workers that serve it."""

    state: ModelState
    error: str | None = None
    #: One entry per worker: ``device``, ``dtype`` and, for remote workers, ``host``, ``id``, ``heartbeat_age_s``
    #: and ``draining``.
    workers: list[dict[str, Any]] = field(default_factory=list)
    #: Tasks waiting for a worker, and tasks a worker holds but has not finished (None: not read, or unknown).
    queued: int | None = None
    pending: int | None = None


class ModelDirectory(Protocol):
    """Which models this server serves, and their state (embedded host, or Redis workers' heartbeats)."""

    async def status(self, name: str) -> ModelStatus | None:
        """The model's status, or None when this server does not serve it."""

    async def statuses(self, queues: bool = False) -> dict[str, ModelStatus]:
        """Every served model's status; with ``queues``, with its queue depth too (where reading it costs more)."""
