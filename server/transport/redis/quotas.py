"""Quotas counted in Redis, shared by every API replica of a fleet (a :class:`~...quotas.Quotas`).

- ``mlipserve:rate:<key>:<window>``: requests of a key in one fixed window (INCR, expiring after two windows).
- ``mlipserve:jobs:<key>``: a sorted set of the key's unfinished jobs, each scored with the time its lease ends;
  the replica running a job renews it, so the slots of a replica that died free themselves.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import redis.asyncio as aioredis

from ...quotas import JOB_LEASE_SECONDS, Window
from . import layout
from .broker import UNAVAILABLE, redis_unavailable

#: Drop expired leases, then add the job if fewer than the limit remain; atomic, so replicas cannot both take the
#: last slot. KEYS[1]: the set; ARGV: now, lease end, limit, job id, the set's expiry in ms.
START_JOB = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisQuotas:
    def __init__(self, client: aioredis.Redis):
        self.redis = client
        self._start_job = client.register_script(START_JOB)

    async def take_request(self, key: str, rate: float) -> float | None:
        window, now = Window.of(rate), time.time()
        counter = f"{layout.PREFIX}:rate:{key}:{window.index(now)}"
        with _reachable():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(counter)
                pipe.pexpire(counter, int(2000 * window.seconds))
                count, _ = await pipe.execute()
        return None if count <= window.allowed else window.retry_after(now)

    async def start_job(self, key: str, job_id: str, limit: int) -> bool:
        now = time.time()
        lease_ms = int(2000 * JOB_LEASE_SECONDS)
        with _reachable():
            taken = await self._start_job(
                keys=[_jobs_key(key)], args=[now, now + JOB_LEASE_SECONDS, limit, job_id, lease_ms]
            )
        return bool(taken)

    async def renew_jobs(self, key: str, job_ids: list[str]) -> None:
        if job_ids:
            until = time.time() + JOB_LEASE_SECONDS
            with _reachable():
                await self.redis.zadd(_jobs_key(key), dict.fromkeys(job_ids, until), xx=True)
                await self.redis.pexpire(_jobs_key(key), int(2000 * JOB_LEASE_SECONDS))

    async def end_job(self, key: str, job_id: str) -> None:
        with _reachable():
            await self.redis.zrem(_jobs_key(key), job_id)


def _jobs_key(key: str) -> str:
    return f"{layout.PREFIX}:jobs:{key}"


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Redis being away is a 503 (``redis_unavailable``), as for any other request in Redis mode."""
    try:
        yield
    except UNAVAILABLE as error:
        raise redis_unavailable(error) from None
