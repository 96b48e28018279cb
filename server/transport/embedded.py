"""Embedded mode: in-process queues, and worker threads in this process that load and serve the models.

Results reach the waiting request through asyncio futures, without polling, and frames (MD progress) its
handler through the event loop. A task whose request went away (timed out, cancelled, client gone) before a worker
took it is dropped from the queue instead of evaluated. The source keeps the tasks a worker holds and their latest
checkpoint, so that a task handed back unfinished resumes where it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import ErrorCode
from ...models.potential import Potential
from ...models.registry import ModelRegistry
from ..config import DeviceOptions
from ..dynamics.outcome import MDCheckpoint, Progress
from ..engine.batching import BatchPolicy
from ..engine.budget import DEFAULT_FRACTION, BatchBudget, budgeted_policy
from ..engine.device_options import load_with_options
from ..engine.loop import Worker
from ..engine.tasks import Task, TaskResult
from ..engine.tuning import tune_process
from .base import Broker, ModelState, ModelStatus, Unavailable

log = logging.getLogger(__name__)


class EmbeddedTaskSource:
    """One model's in-process queue, as seen by its worker thread (a :class:`~..engine.batching.TaskSource`)."""

    def __init__(self, broker: EmbeddedBroker, model: str):
        self.broker = broker
        self.model = model
        self.queue: queue.Queue[Task] = queue.Queue()
        #: Tasks handed to the worker and not yet delivered, by id, and the latest checkpoint of each (MD).
        self.held: dict[str, Task] = {}
        self.checkpoints: dict[str, MDCheckpoint] = {}
        self._lock = threading.Lock()

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
        taken = []
        with self._lock:
            for task in tasks:
                if not self.broker.waiting_for(task.id):
                    self.checkpoints.pop(task.id, None)
                    continue
                self.held[task.id] = task
                taken.append(_resumed(task, self.checkpoints.get(task.id)))
        return taken

    def deliver(self, results: list[TaskResult]) -> None:
        with self._lock:
            for result in results:
                self.held.pop(result.task_id, None)
                self.checkpoints.pop(result.task_id, None)
        self.broker._deliver(results)

    def report(self, progress: list[Progress]) -> None:
        """Keep each held task's latest checkpoint; pass the frames to the waiting requests (thread-safe)."""
        with self._lock:
            for item in progress:
                if item.checkpoint is not None and item.task_id in self.held:
                    self.checkpoints[item.task_id] = item.checkpoint
        self.broker._progress([item for item in progress if item.frame is not None])

    def hand_back(self, task_ids: list[str]) -> None:
        """Queue held tasks again (a worker released them unfinished); they resume from their latest checkpoint."""
        with self._lock:
            tasks = [self.held.pop(task_id) for task_id in task_ids if task_id in self.held]
        self.broker._requeued(len(tasks))
        for task in tasks:
            self.queue.put(task)


class EmbeddedBroker(Broker):
    """In-process queues, one per model, with a limit on the structures queued over all of them."""

    def __init__(self, queue_limit: int = 100_000, timeout: float = 3600.0):
        super().__init__(timeout)
        self.queue_limit = queue_limit
        self._sources: dict[str, EmbeddedTaskSource] = {}
        self._lock = threading.Lock()
        self._queued = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def source(self, model: str) -> EmbeddedTaskSource:
        """The queue of ``model``, created on first use; a worker thread reads from it."""
        with self._lock:
            if model not in self._sources:
                self._sources[model] = EmbeddedTaskSource(self, model)
            return self._sources[model]

    async def _enqueue(self, tasks: Sequence[Task]) -> None:
        self._loop = asyncio.get_running_loop()
        with self._lock:
            if self._queued + len(tasks) > self.queue_limit:
                message = f"the queue holds {self._queued} structures, at its limit"
                raise Unavailable(ErrorCode.QUEUE_FULL, message, retry_after=1.0)
            self._queued += len(tasks)
        for task in tasks:
            self.source(task.model).queue.put(task)

    def _dequeued(self, count: int) -> None:
        with self._lock:
            self._queued -= count

    def _requeued(self, count: int) -> None:
        """Tasks handed back count against the queue limit again (never refused: they were accepted before)."""
        with self._lock:
            self._queued += count

    def _deliver(self, results: list[TaskResult]) -> None:
        """Called from worker threads: resolve the waiting requests on the event loop."""
        if self._loop is not None:
            for result in results:
                self._loop.call_soon_threadsafe(self._resolve, result)

    def _progress(self, progress: list[Progress]) -> None:
        """Called from worker threads: hand frames to the waiting requests' handlers on the event loop, in order
        (before any result delivered after them)."""
        if self._loop is not None:
            for item in progress:
                self._loop.call_soon_threadsafe(self._report, item)


def _resumed(task: Task, checkpoint: MDCheckpoint | None) -> Task:
    """``task``, resuming from ``checkpoint`` when it is an MD run that saved one."""
    if checkpoint is None or task.md is None:
        return task
    return dataclasses.replace(task, md=dataclasses.replace(task.md, resume=checkpoint))


@dataclass
class HostedModel:
    name: str
    state: ModelState = ModelState.LOADING
    potential: Potential | None = None
    error: str | None = None
    worker: Worker | None = None
    budget: BatchBudget | None = None


class EmbeddedModelHost:
    """Loads models in a background thread, then runs one worker thread per model on the embedded broker.

    It is the embedded mode's :class:`~.base.ModelDirectory`.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        broker: EmbeddedBroker,
        models: tuple[str, ...],
        device: str,
        policy: BatchPolicy,
        torch_threads: int | None = None,
        device_options: DeviceOptions | None = None,
    ):
        self.registry = registry
        self.device_options = device_options or DeviceOptions()
        self.broker = broker
        self.device = device
        self.policy = policy
        self.torch_threads = torch_threads
        self.models = {name: HostedModel(name) for name in models}
        self.hostname = socket.gethostname()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        loader = threading.Thread(target=self._load_all, name="mlipserve-loader", daemon=True)
        loader.start()
        self._threads.append(loader)

    def _load_all(self) -> None:
        tune_process(self.torch_threads)
        for hosted in self.models.values():
            if self._stop.is_set():
                return
            try:
                hosted.potential = load_with_options(self.registry, hosted.name, self.device, self.device_options)
            except Exception as error:
                hosted.state, hosted.error = ModelState.FAILED, f"{type(error).__name__}: {error}"
                log.error("could not load %s: %s", hosted.name, hosted.error)
                continue
            # the models of this process share its device: each gets an equal share of the free memory
            share = DEFAULT_FRACTION / len(self.models)
            policy, hosted.budget = budgeted_policy(self.policy, hosted.potential, share)
            hosted.worker = Worker(hosted.potential, self.broker.source(hosted.name), policy, budget=hosted.budget)
            thread = threading.Thread(
                target=self._serve, args=(hosted,), name=f"mlipserve-worker-{hosted.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            hosted.state = ModelState.READY

    def _serve(self, hosted: HostedModel) -> None:
        tune_process(self.torch_threads)
        assert hosted.worker is not None
        try:
            hosted.worker.run(self._stop)
        except BaseException as error:  # the loop itself catches model errors; this is a bug
            hosted.state, hosted.error = ModelState.FAILED, f"worker stopped: {error!r}"
            log.exception("worker for %s stopped", hosted.name)
            hosted.worker.fail_pending(hosted.error)
            raise

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    async def status(self, name: str) -> ModelStatus | None:
        hosted = self.models.get(name)
        if hosted is None:
            return None
        worker = hosted.worker
        workers = [{"id": f"embedded-{name}", "host": self.hostname, **worker.info}] if worker else []
        budget = worker.budget if worker else None  # the worker's: it shrinks after an out-of-memory error
        if workers and budget is not None:
            workers[0]["batch_budget"] = budget.as_dict()
        return ModelStatus(
            state=hosted.state,
            error=hosted.error,
            workers=workers,
            queued=self.broker.source(name).queue.qsize(),
            pending=worker.scheduler.holding if worker else 0,
        )

    async def statuses(self, queues: bool = False) -> dict[str, ModelStatus]:
        """Every hosted model's status; its queue depth is read from memory, so ``queues`` changes nothing."""
        return {name: status for name in self.models if (status := await self.status(name))}
