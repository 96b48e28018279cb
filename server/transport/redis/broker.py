"""The Redis broker (server side): tasks go out on per-model streams, results come back on this server's stream.

Results are read by one task blocking on XREAD, so waiting requests cost no polling. When Redis goes away, waiting
requests fail with 503 at once and new ones get 503 until it is back; the broker reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ....errors import ErrorCode
from ...engine.tasks import Task
from ..base import Broker, ModelState, ModelStatus, Unavailable
from . import layout
from .codec import decode_progress, decode_result, encode_task
from .fleet import QueueDepth, read_queues, read_workers, task_models

log = logging.getLogger(__name__)

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
#: First and longest wait between attempts to read results again while Redis is unreachable, seconds. Short: work
#: submitted once Redis is back waits for this reader, and one attempt a second costs Redis nothing.
READ_RETRY_FIRST_DELAY, READ_RETRY_MAX_DELAY = 0.2, 1.0


def redis_unavailable(error: Exception) -> Unavailable:
    return Unavailable(ErrorCode.REDIS_UNAVAILABLE, f"the queue (Redis) is unreachable: {error}", retry_after=2.0)


class RedisBroker(Broker):
    """Submit tasks to Redis Streams and await their results."""

    def __init__(self, url: str, queue_limit: int = 100_000, timeout: float = 3600.0):
        super().__init__(timeout)
        self.redis = aioredis.Redis.from_url(
            url,
            socket_keepalive=True,
            socket_connect_timeout=2.0,
            retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.queue_limit = queue_limit
        self.server_id = uuid.uuid4().hex[:12]
        self.replies = layout.reply_stream(self.server_id)
        self._groups: set[str] = set()
        self._reader: asyncio.Task | None = None
        self._closing = False

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_results(), name="mlipserve-results")

    async def close(self) -> None:
        self._closing = True
        if self._reader:
            self._reader.cancel()
            # redis-py may hold a cancelled blocking read until its socket returns; do not wait on it for long
            await asyncio.wait({self._reader}, timeout=2.0)
        with contextlib.suppress(RedisError):
            await self.redis.delete(self.replies)
        await self.redis.aclose()

    async def _enqueue(self, tasks: Sequence[Task]) -> None:
        try:
            await self._add_to_streams(tasks)
        except UNAVAILABLE as error:
            raise redis_unavailable(error) from None

    async def _add_to_streams(self, tasks: Sequence[Task]) -> None:
        by_model: dict[str, list[Task]] = {}
        for task in tasks:
            by_model.setdefault(task.model, []).append(task)
        for model, model_tasks in by_model.items():
            stream = layout.task_stream(model)
            await self._ensure_group(stream)
            queued = await self.redis.xlen(stream)
            if queued + len(model_tasks) > self.queue_limit:
                message = f"{queued} structures are queued for {model}, at the limit"
                raise Unavailable(ErrorCode.QUEUE_FULL, message, retry_after=5.0)
            async with self.redis.pipeline(transaction=False) as pipe:
                for task in model_tasks:
                    pipe.xadd(stream, {"m": encode_task(task, self.replies)})
                await pipe.execute()

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self.redis.xgroup_create(stream, layout.GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._groups.add(stream)

    async def _read_results(self) -> None:
        """Resolve waiting requests from this server's result stream, and hand its progress messages (field ``p``,
        MD frames) to their handlers; on connection loss, fail the waiting requests (503)."""
        last_id = "0-0"
        backoff = READ_RETRY_FIRST_DELAY
        while not self._closing:
            try:
                reply = await self.redis.xread({self.replies: last_id}, count=1024, block=1000)
                backoff = READ_RETRY_FIRST_DELAY
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as error:
                self._groups.clear()  # a restarted Redis has lost them
                self._fail_waiting(redis_unavailable(error))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, READ_RETRY_MAX_DELAY)
                continue
            done = []
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    done.append(entry_id)
                    if b"p" in fields:
                        self._report(decode_progress(fields[b"p"]))
                    else:
                        self._resolve(decode_result(fields[b"m"]))  # a reclaimed task may answer twice: dropped
            if done:
                with contextlib.suppress(UNAVAILABLE):
                    await self.redis.xdel(self.replies, *done)


class RedisWorkerDirectory:
    """The models served by live workers, read from their heartbeats (a :class:`~..base.ModelDirectory`).

    Every registered model is routable in Redis mode; one without a live worker is reported as ``no_workers``.
    """

    def __init__(self, broker: RedisBroker, expected: Sequence[str] = (), cache_seconds: float = 1.0):
        self.redis = broker.redis
        self.expected = tuple(expected)
        self.cache_seconds = cache_seconds
        self._cache: tuple[float, dict[str, list[dict]]] | None = None

    async def _workers(self, fresh: bool = False) -> dict[str, list[dict]]:
        if not fresh and self._cache and time.monotonic() - self._cache[0] < self.cache_seconds:
            return self._cache[1]
        try:
            workers = await read_workers(self.redis)
        except UNAVAILABLE as error:
            self._cache = None
            raise redis_unavailable(error) from None
        self._cache = (time.monotonic(), workers)
        return workers

    async def status(self, name: str) -> ModelStatus:
        """The model's status from heartbeats at most ``cache_seconds`` old (this runs for every request)."""
        return _status((await self._workers()).get(name, []))

    async def statuses(self, queues: bool = False) -> dict[str, ModelStatus]:
        """Every model expected or served by a live worker, read afresh; with ``queues``, also every model with
        unfinished work, and each one's queue depth (a few more round trips: for /v1/status and /metrics)."""
        workers = await self._workers(fresh=True)
        if not queues:
            return {name: _status(workers.get(name, [])) for name in dict.fromkeys([*self.expected, *workers])}
        try:
            names = list(dict.fromkeys([*self.expected, *workers, *await task_models(self.redis)]))
            depths = await read_queues(self.redis, names)
        except UNAVAILABLE as error:
            raise redis_unavailable(error) from None
        return {
            name: _status(workers.get(name, []), depths[name])
            for name in names
            if name in self.expected or name in workers or depths[name].queued or depths[name].pending
        }


def _status(workers: list[dict], depth: QueueDepth | None = None) -> ModelStatus:
    state = ModelState.READY if workers else ModelState.NO_WORKERS
    if depth is None:
        return ModelStatus(state=state, workers=workers)
    return ModelStatus(state=state, workers=workers, queued=depth.queued, pending=depth.pending)
