"""Quotas of API keys: a request rate and a limit of unfinished jobs, per key.

:class:`LocalQuotas` counts in this process (one API replica, embedded mode); the Redis implementation
(:mod:`.transport.redis.quotas`) counts in Redis, so that every API replica of a fleet enforces the same limits.
Rates use fixed windows of one second (``1/rate`` seconds below one request per second): a key may burst up to
twice its rate across a window's edge, never more.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

#: A job holds its slot this long without being renewed (by the API replica running it) before the slot is freed:
#: a replica that dies does not hold its keys' slots for ever.
JOB_LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class Window:
    """The fixed window a rate is counted in: its length and the requests it allows."""

    seconds: float
    allowed: int

    @classmethod
    def of(cls, rate: float) -> Window:
        seconds = max(1.0, 1.0 / rate)
        return cls(seconds, max(1, math.floor(rate * seconds)))

    def index(self, now: float) -> int:
        return int(now // self.seconds)

    def retry_after(self, now: float) -> float:
        return (self.index(now) + 1) * self.seconds - now


class Quotas(Protocol):
    async def take_request(self, key: str, rate: float) -> float | None:
        """Count a request of ``key``; None when within ``rate``, else the seconds until the next is allowed."""

    async def start_job(self, key: str, job_id: str, limit: int) -> bool:
        """Take one of ``key``'s ``limit`` job slots for ``job_id``; False when all are taken."""

    async def renew_jobs(self, key: str, job_ids: list[str]) -> None:
        """Keep the slots of ``key``'s running jobs (called well within :data:`JOB_LEASE_SECONDS`)."""

    async def end_job(self, key: str, job_id: str) -> None:
        """Free ``job_id``'s slot."""


class LocalQuotas:
    """Quotas counted in this process."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}
        self._jobs: dict[str, set[str]] = {}

    async def take_request(self, key: str, rate: float) -> float | None:
        window, now = Window.of(rate), time.time()
        index, count = self._counts.get(key, (window.index(now), 0))
        if index != window.index(now):
            index, count = window.index(now), 0
        if count >= window.allowed:
            return window.retry_after(now)
        self._counts[key] = (index, count + 1)
        return None

    async def start_job(self, key: str, job_id: str, limit: int) -> bool:
        running = self._jobs.setdefault(key, set())
        if len(running) >= limit:
            return False
        running.add(job_id)
        return True

    async def renew_jobs(self, key: str, job_ids: list[str]) -> None:
        return None  # slots in this process live as long as it does

    async def end_job(self, key: str, job_id: str) -> None:
        self._jobs.get(key, set()).discard(job_id)
