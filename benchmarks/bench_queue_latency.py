"""Round-trip time of the Redis queue alone: one small task at a time, evaluated by an instant toy model.

A worker loop (the real ``Worker`` over a ``RedisTaskSource``) runs in a thread with the Lennard-Jones toy model
of the tests, so nearly all of the measured time is the queue: submit, fetch, the batch's maximum wait, deliver,
and the server side's blocking read of the result. A private redis-server is started on a free port.

    python benchmarks/bench_queue_latency.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np
import redis
from ase.build import bulk
from mlipserve.models.system import AtomicSystem
from mlipserve.server.config import RedisWorkerSettings
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.loop import Worker
from mlipserve.server.engine.tasks import Task
from mlipserve.server.transport.redis.broker import RedisBroker
from mlipserve.server.transport.redis.source import RedisTaskSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_redis import private_redis

from tests.toy_potential import LennardJonesPotential


async def round_trips(url: str, system: AtomicSystem, count: int) -> np.ndarray:
    broker = RedisBroker(url)
    await broker.start()
    try:
        times = []
        for index in range(count):
            start = time.perf_counter()
            await broker.submit([Task(f"probe-{index}", "toy-lj", system, ("energy", "forces"))])
            times.append(time.perf_counter() - start)
        return np.array(times) * 1000
    finally:
        await broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    system = AtomicSystem.from_ase(bulk("Ar", "fcc", a=1.6, cubic=True))
    with private_redis() as url:
        source = RedisTaskSource(redis.Redis.from_url(url), RedisWorkerSettings(redis_url=url, model="toy-lj"), "probe")
        source.ensure_group()
        policy = BatchPolicy()
        worker = Worker(LennardJonesPotential(), source, policy)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        times = asyncio.run(round_trips(url, system, args.count))
        stop.set()
        thread.join(5)
    print(f"{args.count} round trips, batch max wait {policy.max_wait * 1000:g} ms:")
    print(f"p50 {np.percentile(times, 50):.1f} ms, p99 {np.percentile(times, 99):.1f} ms")


if __name__ == "__main__":
    main()
