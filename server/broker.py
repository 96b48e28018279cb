"""Brokers carry tasks from the HTTP front end to the workers and results back.

:class:`Broker` is the interface the app uses. :class:`EmbeddedBroker` keeps one in-process queue per model,
served by worker threads in the same process; a Redis Streams broker implements the same interface for workers
in other processes and on other machines.
"""

from __future__ import annotations

import abc
import asyncio
import queue
import threading
from collections.abc import Sequence

from .errors import RequestError
from .tasks import Task, TaskResult


class Broker(abc.ABC):
    """Submit tasks and await their results, in order."""

    @abc.abstractmethod
    async def submit(self, tasks: Sequence[Task]) -> list[TaskResult]:
        """Queue ``tasks`` and return their results in the same order once all are done."""

    async def start(self) -> None:
        """Connect and start background readers; the default has none."""

    async def close(self) -> None:
        """Release connections; the default has none."""


class EmbeddedTaskSource:
    """One model's in-process queue, as seen by its worker thread (a :class:`~.batching.TaskSource`)."""

    def __init__(self, broker: EmbeddedBroker, model: str):
        self.broker = broker
        self.model = model
        self.queue: queue.Queue[Task] = queue.Queue()

    def fetch(self, max_tasks: int, timeout: float) -> list[Task]:
        try:
            tasks = [self.queue.get(timeout=max(timeout, 0.0))]
        except queue.Empty:
            return []
        while len(tasks) < max_tasks:
            try:
                tasks.append(self.queue.get_nowait())
            except queue.Empty:
                break
        self.broker._dequeued(len(tasks))
        return tasks

    def deliver(self, results: list[TaskResult]) -> None:
        self.broker._deliver(results)


class EmbeddedBroker(Broker):
    """In-process queues; results reach the waiting request through asyncio futures, without polling."""

    def __init__(self, queue_limit: int = 100_000):
        self.queue_limit = queue_limit
        self._sources: dict[str, EmbeddedTaskSource] = {}
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[TaskResult]]] = {}
        self._lock = threading.Lock()
        self._queued = 0

    def source(self, model: str) -> EmbeddedTaskSource:
        """The queue of ``model``, created on first use; a worker thread reads from it."""
        with self._lock:
            if model not in self._sources:
                self._sources[model] = EmbeddedTaskSource(self, model)
            return self._sources[model]

    @property
    def queued(self) -> int:
        """Structures accepted but not yet taken by a worker."""
        return self._queued

    async def submit(self, tasks: Sequence[Task]) -> list[TaskResult]:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._queued + len(tasks) > self.queue_limit:
                raise RequestError(
                    503, "queue_full", f"the queue holds {self._queued} structures, at its limit", retry_after=1.0
                )
            self._queued += len(tasks)
        futures = []
        for task in tasks:
            future: asyncio.Future[TaskResult] = loop.create_future()
            self._waiting[task.id] = (loop, future)
            futures.append(future)
        for task in tasks:
            self.source(task.model).queue.put(task)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for task in tasks:
                self._waiting.pop(task.id, None)

    def _dequeued(self, count: int) -> None:
        with self._lock:
            self._queued -= count

    def _deliver(self, results: list[TaskResult]) -> None:
        for result in results:
            waiting = self._waiting.get(result.task_id)
            if waiting is None:  # the request went away (client disconnected)
                continue
            loop, future = waiting
            loop.call_soon_threadsafe(_resolve, future, result)


def _resolve(future: asyncio.Future[TaskResult], result: TaskResult) -> None:
    if not future.done():
        future.set_result(result)
