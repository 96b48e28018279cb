"""Throughput and latency through Redis: HTTP + Redis workers vs the embedded server vs the worker's in-process limit.

Paths, on the same structures (energy, forces, stress) and with the same thread and allocator settings:
(1) the Potential in-process, batched as a worker batches (its CPU atom budget): the worker's limit;
(2) ``mlipserve serve`` in embedded mode, through the Python client;
(3) ``mlipserve serve --redis`` with one ``mlipserve worker`` process, through the Python client.
Then the latency of a single 8-atom request at low load (one request at a time), for (2) and (3).
A private redis-server is started on a free port unless ``--redis URL`` is given.

    python benchmarks/bench_redis.py --model 7net-0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from mlipserve.clients import Client
from mlipserve.models import AtomicSystem, ModelRegistry
from mlipserve.models.loading import load_model
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.tuning import tune_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import free_port, private_redis
from structures import benchmark_structures

CLI = [sys.executable, "-m", "mlipserve.server.cli"]


@contextmanager
def processes(*commands: list[str]):
    started = [subprocess.Popen(command) for command in commands]
    try:
        yield started
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(30)


def in_process(model: str, systems: list[AtomicSystem]) -> float:
    potential = load_model(ModelRegistry(), model, "cpu")
    budget = BatchPolicy().for_device("cpu").max_atoms
    potential.predict(systems[:4])
    start = time.perf_counter()
    batch: list[AtomicSystem] = []
    for system in systems:
        if batch and sum(s.n_atoms for s in batch) + system.n_atoms > budget:
            potential.predict(batch)
            batch = []
        batch.append(system)
    potential.predict(batch)
    return time.perf_counter() - start


def through_http(url: str, model: str, structures: list, latency_requests: int) -> tuple[float, np.ndarray]:
    with Client(url, model=model, chunk_size=16, concurrency=8, progress=False) as client:
        client.wait_until_ready(300)
        client.predict(structures[:8])  # warm-up
        start = time.perf_counter()
        client.predict(structures)
        seconds = time.perf_counter() - start
        single = bulk("Si", cubic=True)
        latencies = []
        for _ in range(latency_requests):
            begin = time.perf_counter()
            client.predict(single)
            latencies.append(time.perf_counter() - begin)
    return seconds, np.array(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7net-0")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--redis", help="use this Redis instead of a private one")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    tune_process()
    structures = benchmark_structures(args.count)
    n_atoms = sum(len(a) for a in structures)
    seconds = {"in_process": in_process(args.model, [AtomicSystem.from_ase(a) for a in structures])}
    latency = {}

    port = free_port()
    embedded = [*CLI, "serve", "--port", str(port), "--model", args.model, "--device", "cpu", "--log-level", "warning"]
    with processes(embedded):
        seconds["http_embedded"], latency["http_embedded"] = through_http(
            f"http://127.0.0.1:{port}", args.model, structures, args.latency_requests
        )

    with private_redis() if args.redis is None else _given(args.redis) as redis_url:
        port = free_port()
        server = [*CLI, "serve", "--port", str(port), "--redis", redis_url, "--model", args.model]
        worker = [*CLI, "worker", "--model", args.model, "--redis", redis_url, "--device", "cpu"]
        with processes([*server, "--log-level", "warning"], [*worker, "--log-level", "warning"]):
            seconds["http_redis"], latency["http_redis"] = through_http(
                f"http://127.0.0.1:{port}", args.model, structures, args.latency_requests
            )

    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"model {args.model}: {len(structures)} structures, {n_atoms} atoms; {machine}")
    print("| path | seconds | structures/s | atoms/s |\n|---|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {len(structures) / value:.1f} | {n_atoms / value:.0f} |")
    ratio = seconds["in_process"] / seconds["http_redis"]
    print(
        f"throughput (HTTP + Redis) / in-process = {ratio:.2f}; embedded / in-process = "
        f"{seconds['in_process'] / seconds['http_embedded']:.2f}"
    )
    print("| path | single 8-atom request p50 (ms) | p99 (ms) |\n|---|---|---|")
    for name, values in latency.items():
        print(f"| {name} | {np.percentile(values, 50):.1f} | {np.percentile(values, 99):.1f} |")
    if args.output:
        record = {"model": args.model, "machine": machine, "seconds": seconds, "ratio_redis_in_process": ratio}
        record["latency_ms"] = {
            name: {"p50": np.percentile(values, 50), "p99": np.percentile(values, 99)}
            for name, values in latency.items()
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2))


@contextmanager
def _given(url: str):
    yield url


if __name__ == "__main__":
    main()
