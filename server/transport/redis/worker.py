"""A standalone worker: takes tasks for one model from Redis, runs them in batches, writes results, then acks.

The worker needs mlipserve's core, redis-py and its own model family's package, nothing of the HTTP server, so it
can run in another virtualenv or container than the server. Tasks held by a worker that dies are reclaimed by the
others (XAUTOCLAIM) once idle for ``claim_idle`` seconds; a task delivered more than ``max_deliveries`` times goes to
the dead-letter stream and its request gets an error result.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .... import __version__
from ....errors import ErrorCode
from ....models.loading import load_model
from ....models.registry import ModelRegistry
from ...config import RedisWorkerSettings
from ...engine.loop import Worker
from ...engine.tasks import Task, TaskResult
from ...engine.tuning import tune_process
from . import layout
from .codec import decode_task, encode_result

log = logging.getLogger(__name__)

#: Seconds below which a blocking read is not trusted to time out on time (Redis's default cron runs at 10 Hz).
SHORTEST_REDIS_BLOCK = 0.1


class RedisTaskSource:
    """A model's task stream, read through the consumer group (a :class:`~.batching.TaskSource`)."""

    def __init__(self, client: redis.Redis, settings: RedisWorkerSettings, consumer: str):
        self.redis = client
        self.settings = settings
        self.consumer = consumer
        self.stream = layout.task_stream(settings.model)
        #: Tasks fetched and not yet acknowledged: task id -> (stream entry id, reply stream).
        self.held: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._next_claim = 0.0

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, layout.GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def fetch(self, max_tasks: int, timeout: float) -> list[Task]:
        try:
            tasks = self._reclaim(max_tasks)
            if not tasks:
                tasks = self._read_new(max_tasks, timeout)
            return [task for task in tasks if task is not None]
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            log.warning("task stream %s has no consumer group (Redis restarted?); recreating it", self.stream)
            self.ensure_group()
            return []

    def _read_new(self, max_tasks: int, timeout: float) -> list[Task | None]:
        """Up to ``max_tasks`` new tasks, waiting at most ``timeout`` s for the first.

        Redis wakes a blocked reader as soon as a task arrives, but times a BLOCK out only on its server cron
        (10 Hz by default), so a short wait (a batch's few milliseconds) is slept here and the read does not block.
        """
        block: int | None = int(timeout * 1000)
        if timeout < SHORTEST_REDIS_BLOCK:
            time.sleep(max(timeout, 0.0))
            block = None
        reply = self.redis.xreadgroup(layout.GROUP, self.consumer, {self.stream: ">"}, count=max_tasks, block=block)
        return [self._accept(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]

    def _reclaim(self, max_tasks: int) -> list[Task | None]:
        """Take over tasks left idle by dead workers; dead-letter those delivered too often."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + min(self.settings.claim_idle / 2, 5.0)
        idle_ms = int(self.settings.claim_idle * 1000)
        _, claimed, _ = self.redis.xautoclaim(
            self.stream, layout.GROUP, self.consumer, min_idle_time=idle_ms, start_id="0-0", count=max_tasks
        )
        if not claimed:
            return []
        pending = self.redis.xpending_range(
            self.stream, layout.GROUP, min=claimed[0][0], max=claimed[-1][0], count=len(claimed) + 100
        )
        deliveries = {entry["message_id"]: entry["times_delivered"] for entry in pending}
        tasks = []
        for entry_id, fields in claimed:
            if deliveries.get(entry_id, 1) > self.settings.max_deliveries:
                self._dead_letter(entry_id, fields, deliveries[entry_id])
            else:
                log.warning("reclaimed task %s from a worker that stopped answering", entry_id)
                tasks.append(self._accept(entry_id, fields))
        return tasks

    def _accept(self, entry_id: bytes, fields: dict) -> Task | None:
        if fields is None or b"m" not in fields:  # deleted meanwhile
            self.redis.xack(self.stream, layout.GROUP, entry_id)
            return None
        task, reply_to = decode_task(fields[b"m"])
        with self._lock:
            self.held[task.id] = (entry_id, reply_to)
        return task

    def _dead_letter(self, entry_id: bytes, fields: dict, deliveries: int) -> None:
        task, reply_to = decode_task(fields[b"m"])
        reason = f"the task was given to a worker {deliveries} times and no worker finished it (workers crashed)"
        log.error("dead-lettering task %s: %s", task.id, reason)
        result = TaskResult.failure(task.id, ErrorCode.WORKER_CRASHED, reason)
        pipe = self.redis.pipeline()
        pipe.xadd(layout.dead_letter_stream(self.settings.model), {"m": fields[b"m"], "reason": reason})
        self._queue_reply(pipe, reply_to, result)
        pipe.xack(self.stream, layout.GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()

    def deliver(self, results: list[TaskResult]) -> None:
        """Write the results to their reply streams, then ack and delete the tasks, in one transaction."""
        if not results:
            return
        pipe = self.redis.pipeline()
        entry_ids = []
        with self._lock:
            for result in results:
                entry_id, reply_to = self.held.pop(result.task_id)
                entry_ids.append(entry_id)
                self._queue_reply(pipe, reply_to, result)
        pipe.xack(self.stream, layout.GROUP, *entry_ids)
        pipe.xdel(self.stream, *entry_ids)
        pipe.execute()

    def _queue_reply(self, pipe: redis.client.Pipeline, reply_to: str, result: TaskResult) -> None:
        pipe.xadd(reply_to, {"m": encode_result(result)})
        pipe.expire(reply_to, int(self.settings.result_ttl))

    def keep_alive(self) -> None:
        """Reset the idle time of held tasks, so a long batch is not taken for a dead worker's."""
        with self._lock:
            entry_ids = [entry_id for entry_id, _ in self.held.values()]
        if entry_ids:
            self.redis.xclaim(self.stream, layout.GROUP, self.consumer, 0, entry_ids, justid=True)


class RedisWorker:
    """One worker process: load the model, announce it, serve batches until stopped."""

    def __init__(self, settings: RedisWorkerSettings, registry: ModelRegistry):
        self.settings = settings
        self.registry = registry
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis = redis.Redis.from_url(
            settings.redis_url,
            socket_keepalive=True,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.stop = threading.Event()

    def run(self) -> None:
        tune_process(self.settings.torch_threads)
        card = self.registry.card(self.settings.model)
        potential = load_model(
            self.registry, card.name, None if self.settings.device == "auto" else self.settings.device
        )
        source = RedisTaskSource(self.redis, self.settings, consumer=self.id)
        worker = Worker(potential, source, self.settings.batch)
        self.announcement = {
            "id": self.id,
            "model": card.name,
            "version": card.version,
            "sha256": card.sha256,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **worker.info,
            "mlipserve": __version__,
        }
        heartbeat = threading.Thread(target=self._beat, args=(source,), name="mlipserve-heartbeat", daemon=True)
        heartbeat.start()
        log.info("worker %s serving %s on %s from %s", self.id, card.name, potential.device, self.settings.redis_url)
        backoff = 0.5
        while not self.stop.is_set():
            try:
                source.ensure_group()
                while not self.stop.is_set():
                    worker.step()
                backoff = 0.5
            except redis.ConnectionError as error:
                log.warning("Redis unreachable (%s); retrying in %.1f s", error, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self.redis.delete(layout.heartbeat_key(card.name, self.id))
        log.info("worker %s stopped", self.id)

    def _beat(self, source: RedisTaskSource) -> None:
        key = layout.heartbeat_key(self.settings.model, self.id)
        while not self.stop.is_set():
            try:
                beat = self.announcement | {"time": time.time()}
                self.redis.set(key, json.dumps(beat), px=int(self.settings.heartbeat_ttl * 1000))
                source.keep_alive()
            except redis.RedisError as error:
                log.debug("heartbeat failed: %s", error)
            # Often enough that held tasks never look idle for claim_idle, which would hand them to another worker.
            self.stop.wait(min(self.settings.heartbeat_interval, self.settings.claim_idle / 3))


def run_worker(settings: RedisWorkerSettings, registry: ModelRegistry) -> None:
    """Run a worker until SIGINT or SIGTERM; the batch in progress is finished and delivered first."""
    worker = RedisWorker(settings, registry)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: worker.stop.set())
    worker.run()
