"""``mlipserve status --redis URL``: the workers and queues of a fleet, read straight from its Redis.

It needs no API server, so it also answers while the front end is down or scaled away.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .tables import format_table
from .transport.redis.fleet import read_queues, read_workers, task_models


async def read_fleet(url: str) -> dict[str, Any]:
    """Every model with workers or a queue: its workers and its queue depth."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0)
    try:
        workers = await read_workers(client)
        names = sorted({*workers, *await task_models(client)})
        queues = await read_queues(client, names)
    finally:
        await client.aclose()
    return {
        "redis": url,
        "models": [
            {"name": name, **dataclasses.asdict(queues[name]), "workers": workers.get(name, [])} for name in names
        ],
    }


def status_command(args: argparse.Namespace) -> int:
    if not args.redis:
        print("mlipserve status needs --redis URL (or $MLIPSERVE_REDIS_URL)", file=sys.stderr)
        return 2
    try:
        fleet = asyncio.run(read_fleet(args.redis))
    except (RedisError, OSError) as error:
        print(f"mlipserve status: cannot read {args.redis}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(fleet, indent=2))
    else:
        print(render(fleet))
    return 0


def render(fleet: dict[str, Any]) -> str:
    """Two tables: the queue of each model, then each worker."""
    models = fleet["models"]
    if not models:
        return f"{fleet['redis']}: no workers and no queues (nothing was sent to this Redis yet)"
    queues = [("model", "workers", "queued", "pending", "dead-lettered", "oldest task")]
    queues += [
        (
            m["name"],
            str(len(m["workers"])),
            str(m["queued"]),
            str(m["pending"]),
            str(m["dead"]),
            "-" if m["oldest_age_s"] is None else f"{m['oldest_age_s']:g} s",
        )
        for m in models
    ]
    workers = [("worker", "model", "host", "device", "dtype", "heartbeat", "state")]
    workers += [
        (
            w["id"],
            m["name"],
            str(w["host"]),
            str(w["device"]),
            str(w["dtype"]),
            f"{w['heartbeat_age_s']:.1f} s ago",
            "draining" if w["draining"] else "serving",
        )
        for m in models
        for w in m["workers"]
    ]
    parts = [format_table(queues)]
    parts.append(format_table(workers) if len(workers) > 1 else "no live workers")
    return "\n\n".join(parts)
