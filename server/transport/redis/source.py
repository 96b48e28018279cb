"""A worker's side of a model's task stream: fetch through the consumer group, deliver results, hand tasks back.

Tasks held by a worker that dies are reclaimed by the others (XAUTOCLAIM) once idle for ``claim_idle`` seconds; a
task delivered more than ``max_deliveries`` times goes to the dead-letter stream and its request gets an error
result. When Redis cannot be reached, the source keeps what it took: a fetch returns nothing (the error is raised
by the worker loop after the round), and results that cannot be delivered are kept for :meth:`flush`.

A running MD task reports frames, which go to its reply stream as progress messages, and checkpoints, of which the
latest is kept in a key of the task's own (``layout.checkpoint_key``): a worker that takes the task over (reclaimed
from a dead worker, or handed back by a draining one) resumes from it; delivering the result deletes it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import redis

from ....errors import ErrorCode
from ...config import RedisWorkerSettings
from ...dynamics.outcome import Progress
from ...engine.tasks import Task, TaskResult
from . import layout
from .codec import decode_checkpoint, decode_task, encode_checkpoint, encode_progress, encode_result
from .monitor import WorkerMetrics

log = logging.getLogger(__name__)

#: Seconds below which a blocking read is not trusted to time out on time (Redis's default cron runs at 10 Hz).
SHORTEST_REDIS_BLOCK = 0.1
#: Errors that mean Redis cannot be reached now (redis-py's LOADING error, while Redis replays its files, is one).
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


class RedisTaskSource:
    """A model's task stream, read through the consumer group (a :class:`~.batching.TaskSource`)."""

    def __init__(
        self, client: redis.Redis, settings: RedisWorkerSettings, consumer: str, metrics: WorkerMetrics | None = None
    ):
        self.redis = client
        self.settings = settings
        self.consumer = consumer
        self.metrics = metrics or WorkerMetrics()
        self.stream = layout.task_stream(settings.model)
        #: Tasks fetched and not yet acknowledged: task id -> (stream entry id, reply stream, encoded task).
        self.held: dict[str, tuple[bytes, str, bytes]] = {}
        #: Results finished but not yet written to Redis (it was unreachable); their tasks stay held.
        self.undelivered: list[TaskResult] = []
        #: Progress reported but not yet written to Redis (it was unreachable); written before any result.
        self.unreported: list[Progress] = []
        #: Why the last fetch could not reach Redis, until the worker loop takes it (:meth:`raise_if_unreachable`).
        self.unreachable: Exception | None = None
        #: Set by a drain: fetch nothing more.
        self.closed = False
        self._lock = threading.Lock()
        self._next_claim = 0.0

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, layout.GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def fetch(self, max_tasks: int, timeout: float) -> list[Task]:
        """Up to ``max_tasks`` tasks: reclaimed from dead workers first, else new ones.

        When Redis cannot be reached this returns nothing rather than raising: the batcher may be filling a batch
        with tasks it took before, which would otherwise be dropped while still held here (and kept alive by the
        heartbeat, so no other worker would ever take them). The worker loop raises the error after the round.
        """
        if self.closed:
            return []
        try:
            tasks = self._reclaim(max_tasks)
            if not tasks:
                tasks = self._read_new(max_tasks, timeout)
            return self._resumed([task for task in tasks if task is not None])
        except UNREACHABLE as error:
            self.unreachable = error
            return []
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
        with self._lock:
            mine = {entry_id for entry_id, _, _ in self.held.values()}
        tasks = []
        for entry_id, fields in claimed:
            if entry_id in mine:
                # Held here all along: it looked idle because Redis was away and the heartbeat could not keep it
                # fresh. Not a crashed worker's task: never dead-lettered, and not run a second time.
                continue
            if deliveries.get(entry_id, 1) > self.settings.max_deliveries:
                self._dead_letter(entry_id, fields, deliveries[entry_id])
            else:
                log.warning("reclaimed task %s from a worker that stopped answering", entry_id)
                self.metrics.reclaimed.inc()
                tasks.append(self._accept(entry_id, fields))
        return tasks

    def _resumed(self, tasks: list[Task]) -> list[Task]:
        """``tasks``, each MD run that a worker saved a checkpoint of carrying it (``MDSpec.resume``).

        The tasks are held here already: if Redis went away meanwhile they are run from their start (with the same
        seed, the same run, only longer) rather than lost.
        """
        runs = [i for i, task in enumerate(tasks) if task.md is not None]
        if not runs:
            return tasks
        pipe = self.redis.pipeline(transaction=False)
        for i in runs:
            pipe.get(layout.checkpoint_key(tasks[i].id))
        try:
            saved_checkpoints = pipe.execute()
        except UNREACHABLE as error:
            log.warning("could not read the checkpoints of %d MD task(s) (%s); they start afresh", len(runs), error)
            self.unreachable = error
            return tasks
        for i, saved in zip(runs, saved_checkpoints, strict=True):
            if saved is not None:
                task = tasks[i]
                assert task.md is not None
                log.info("task %s resumes from its checkpoint", task.id)
                tasks[i] = dataclasses.replace(task, md=dataclasses.replace(task.md, resume=decode_checkpoint(saved)))
        return tasks

    def defer_reclaim(self) -> None:
        """Take over no other worker's tasks for ``claim_idle`` seconds from now."""
        self._next_claim = time.monotonic() + self.settings.claim_idle

    def raise_if_unreachable(self) -> None:
        """Raise the error with which a fetch found Redis unreachable, once."""
        error, self.unreachable = self.unreachable, None
        if error is not None:
            raise error

    def _accept(self, entry_id: bytes, fields: dict) -> Task | None:
        if fields is None or b"m" not in fields:  # deleted meanwhile
            self.redis.xack(self.stream, layout.GROUP, entry_id)
            return None
        task, reply_to = decode_task(fields[b"m"])
        with self._lock:
            held = self.held.get(task.id)
            if held is None:
                self.held[task.id] = (entry_id, reply_to, fields[b"m"])
                return task
        if held[0] == entry_id:  # this very entry, taken again: it is already being run
            return None
        # Already held here under another entry: the task was queued twice (the server's client resent its XADDs
        # to a Redis that had applied them before the connection dropped). Running it again would answer it twice:
        # the second entry is acknowledged now, the held one when its result is delivered.
        log.warning("task %s is queued twice (entries %s and %s); dropping the second", task.id, held[0], entry_id)
        pipe = self.redis.pipeline()
        pipe.xack(self.stream, layout.GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()
        return None

    def _dead_letter(self, entry_id: bytes, fields: dict, deliveries: int) -> None:
        task, reply_to = decode_task(fields[b"m"])
        reason = f"the task was given to a worker {deliveries} times and no worker finished it (workers crashed)"
        log.error("dead-lettering task %s: %s", task.id, reason)
        result = TaskResult.failure(task.id, ErrorCode.WORKER_CRASHED, reason)
        pipe = self.redis.pipeline()
        pipe.xadd(layout.dead_letter_stream(self.settings.model), {"m": fields[b"m"], "reason": reason})
        self._queue_reply(pipe, reply_to, result)
        pipe.delete(layout.checkpoint_key(task.id))
        pipe.xack(self.stream, layout.GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()
        self.metrics.dead_lettered.inc()

    def deliver(self, results: list[TaskResult]) -> None:
        """Write the results to their reply streams, then ack and delete the tasks, in one transaction.

        If Redis is unreachable the results are kept (their tasks stay held, so the heartbeat keeps them from
        being taken over) and the error is raised; :meth:`flush` delivers them once Redis is back.
        """
        with self._lock:
            self.undelivered.extend(results)
        self.flush()

    def report(self, progress: list[Progress]) -> None:
        """Write frames to their tasks' reply streams and keep each task's latest checkpoint, in one transaction.

        Never raises for an unreachable Redis (the round's results must still reach :meth:`deliver`): the progress
        is kept for :meth:`flush`, and the worker loop raises the error after the round.
        """
        with self._lock:
            self.unreported.extend(progress)
        try:
            self.flush()
        except UNREACHABLE as error:
            self.unreachable = error

    def flush(self) -> None:
        """Write the progress and deliver the results kept while Redis was unreachable (and any just finished)."""
        with self._lock:
            progress = list(self.unreported)
            results = list(self.undelivered)
            entries = [self.held[result.task_id] for result in results]
            replies = {item.task_id: held[1] for item in progress if (held := self.held.get(item.task_id))}
        if not results and not progress:
            return
        pipe = self.redis.pipeline()
        self._queue_progress(pipe, progress, replies)
        for result, (_, reply_to, _) in zip(results, entries, strict=True):
            self._queue_reply(pipe, reply_to, result)
            pipe.delete(layout.checkpoint_key(result.task_id))
        if entries:
            entry_ids = [entry_id for entry_id, _, _ in entries]
            pipe.xack(self.stream, layout.GROUP, *entry_ids)
            pipe.xdel(self.stream, *entry_ids)
        pipe.execute()
        with self._lock:
            del self.unreported[: len(progress)]
            del self.undelivered[: len(results)]
            for result in results:
                del self.held[result.task_id]

    def _queue_progress(self, pipe: redis.client.Pipeline, progress: list[Progress], replies: dict[str, str]) -> None:
        """Frames to the reply streams in order; of each task's checkpoints only the last is written. Progress of
        a task no longer held here (handed back) is dropped: its next worker reports it."""
        checkpoints = {item.task_id: item.checkpoint for item in progress if item.checkpoint is not None}
        streams = set()
        for item in progress:
            if item.frame is not None and (reply_to := replies.get(item.task_id)) is not None:
                pipe.xadd(reply_to, {"p": encode_progress(Progress(item.task_id, frame=item.frame))})
                streams.add(reply_to)
        for reply_to in streams:
            pipe.expire(reply_to, int(self.settings.result_ttl))
        for task_id, checkpoint in checkpoints.items():
            if task_id in replies:
                pipe.set(layout.checkpoint_key(task_id), encode_checkpoint(checkpoint), ex=layout.CHECKPOINT_TTL)

    def _queue_reply(self, pipe: redis.client.Pipeline, reply_to: str, result: TaskResult) -> None:
        pipe.xadd(reply_to, {"m": encode_result(result)})
        pipe.expire(reply_to, int(self.settings.result_ttl))

    def hand_back(self, task_ids: list[str]) -> None:
        """Put unfinished tasks back at the end of the stream for other workers, acknowledging the originals.

        One transaction: a task is either still held here (and reclaimed if this worker dies) or queued anew.
        """
        if not task_ids:
            return
        with self._lock:
            entries = [self.held[task_id] for task_id in task_ids]
        pipe = self.redis.pipeline(transaction=True)
        for _, _, message in entries:
            pipe.xadd(self.stream, {"m": message})
        entry_ids = [entry_id for entry_id, _, _ in entries]
        pipe.xack(self.stream, layout.GROUP, *entry_ids)
        pipe.xdel(self.stream, *entry_ids)
        pipe.execute()
        with self._lock:
            for task_id in task_ids:
                del self.held[task_id]
        self.metrics.handed_back.inc(len(task_ids))

    def leave(self) -> None:
        """Leave the consumer group; only when nothing is held, since Redis forgets a departed consumer's tasks."""
        with self._lock:
            if self.held:
                return
        self.redis.xgroup_delconsumer(self.stream, layout.GROUP, self.consumer)

    def keep_alive(self) -> None:
        """Reset the idle time of held tasks, so a long batch is not taken for a dead worker's."""
        with self._lock:
            entry_ids = [entry_id for entry_id, _, _ in self.held.values()]
        if entry_ids:
            self.redis.xclaim(self.stream, layout.GROUP, self.consumer, 0, entry_ids, justid=True)
