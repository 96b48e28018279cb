"""What Redis says about the fleet: the live workers (from their heartbeats) and each model's queue.

Read by the API's model directory and by ``mlipserve status``. Tasks are deleted from a stream once acknowledged,
so a stream's length is the work not yet finished: ``queued`` (no worker has it yet) plus ``pending`` (delivered
to a worker, not yet acknowledged).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from . import layout

#: The heartbeat fields a model's status lists for each worker.
WORKER_FIELDS = ("id", "host", "device", "dtype", "version", "draining", "batch_budget")


@dataclass(frozen=True)
class QueueDepth:
    #: Tasks no worker has taken yet (the consumer group's lag).
    queued: int
    #: Tasks delivered to a worker and not yet acknowledged.
    pending: int
    #: Tasks that failed on every worker that took them (dead-letter stream).
    dead: int = 0
    #: Seconds since the oldest unfinished task was queued (None: no unfinished task).
    oldest_age_s: float | None = None


async def read_workers(client: aioredis.Redis) -> dict[str, list[dict[str, Any]]]:
    """Each model's live workers: their heartbeat fields, with ``heartbeat_age_s`` from the heartbeat's time."""
    keys = [key async for key in client.scan_iter(match=layout.heartbeat_pattern(), count=500)]
    beats = await client.mget(keys) if keys else []
    now = time.time()
    workers: dict[str, list[dict[str, Any]]] = {}
    for key, beat in zip(keys, beats, strict=True):
        if beat is None:  # expired between SCAN and MGET
            continue
        fields = json.loads(beat)
        entry = {name: fields.get(name) for name in WORKER_FIELDS}
        entry["draining"] = bool(entry["draining"])
        entry["heartbeat_age_s"] = round(max(now - fields.get("time", now), 0.0), 2)
        model = key.decode() if isinstance(key, bytes) else key
        workers.setdefault(layout.model_of_heartbeat(model), []).append(entry)
    return workers


async def task_models(client: aioredis.Redis) -> list[str]:
    """Every model with a task stream (work was sent to it at some point since Redis last lost its data)."""
    prefix = layout.task_stream("")
    names = [key async for key in client.scan_iter(match=f"{prefix}*", count=500, _type="stream")]
    return sorted((name.decode() if isinstance(name, bytes) else name)[len(prefix) :] for name in names)


async def read_queues(client: aioredis.Redis, models: Iterable[str]) -> dict[str, QueueDepth]:
    """Each model's queue depth, read in one round trip."""
    models = list(models)
    async with client.pipeline(transaction=False) as pipe:
        for model in models:
            pipe.xlen(layout.task_stream(model))
            pipe.xpending(layout.task_stream(model), layout.GROUP)
            pipe.xlen(layout.dead_letter_stream(model))
            pipe.xrange(layout.task_stream(model), count=1)
        replies = await pipe.execute(raise_on_error=False)
    depths = {}
    now_ms = time.time() * 1000
    for index, model in enumerate(models):
        length, pending, dead, oldest = replies[4 * index : 4 * index + 4]
        held = pending["pending"] if isinstance(pending, dict) else 0  # no group yet: nothing delivered
        age = None
        if oldest and not isinstance(oldest, Exception):  # a stream entry's id starts with its time in ms
            age = round(max(now_ms - int(oldest[0][0].split(b"-")[0]), 0) / 1000, 1)
        depths[model] = QueueDepth(queued=max(int(length) - held, 0), pending=held, dead=int(dead), oldest_age_s=age)
    return depths
