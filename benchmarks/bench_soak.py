"""Load and soak: a bounded loopback load on a served model, in embedded and Redis modes, for minutes.

``concurrency`` clients each send ``POST /v1/predict`` requests of 1-4 small crystals back to back for ``duration``
seconds. Reported per mode: requests and structures per second, p50/p99 latency, errors (anything but a 200 with
every structure answered: must be 0), and the resident memory of the API and worker processes every ten seconds,
with its ratio end over the first minute's (flat within 10% is the target). The baselines are in the same run: the
first minute of each soak for memory and throughput, and embedded mode for Redis mode.

    python benchmarks/bench_soak.py --duration 300 --concurrency 64 --out soak.json [--plot soak.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from ase.build import bulk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlipserve.clients.encoding import encode_structure
from serving import free_port, private_redis

#: Seconds of load before the first memory reading (the plot starts there).
FIRST_SAMPLE = 20.0
#: Seconds of load after which memory is taken as settled: the baseline of the end-over-start ratio (the first
#: batches grow the allocator's pools and torch's caches; what matters is that memory stops growing after).
SETTLED = 60.0
#: Seconds between memory readings.
SAMPLE_EVERY = 10.0


def crystals(count: int = 64, seed: int = 0) -> list[dict]:
    """Small rattled crystals of 2-8 atoms, as request structures."""
    rng = random.Random(seed)
    builders = [
        lambda: bulk("Si"),
        lambda: bulk("Cu", cubic=True),
        lambda: bulk("NaCl", "rocksalt", a=5.64),
        lambda: bulk("MgO", "rocksalt", a=4.21, cubic=True),
        lambda: bulk("Al", cubic=True),
    ]
    structures = []
    for index in range(count):
        atoms = rng.choice(builders)()
        atoms.rattle(0.03, seed=index)
        structures.append(encode_structure(atoms))
    return structures


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextmanager
def process(command: list[str]) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def deployment(mode: str, model: str, threads: int) -> Iterator[tuple[str, dict[str, int]]]:
    """The server (and, in Redis mode, one worker) on free ports; yields the URL and the processes' pids."""
    port = free_port()
    cli = [sys.executable, "-m", "mlipserve.server.cli"]
    common = ["--device", "cpu", "--threads", str(threads), "--log-level", "warning"]
    serve = [*cli, "serve", "--port", str(port), "--model", model, "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    if mode == "embedded":
        with process([*serve, "--device", "cpu", "--threads", str(threads)]) as api:
            yield url, {"api": api.pid}
        return
    with private_redis() as redis_url:
        worker = [*cli, "worker", "--model", model, "--redis", redis_url, *common]
        with process([*serve, "--redis", redis_url]) as api, process(worker) as work:
            yield url, {"api": api.pid, "worker": work.pid}


def wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready within {timeout} s")


async def soak(url: str, pids: dict[str, int], duration: float, concurrency: int, model: str) -> dict:
    structures = crystals()
    latencies: list[tuple[float, float]] = []  # (answered at, seconds since start; latency, seconds)
    answered = errors = 0
    memory: list[dict[str, float]] = []
    started = time.monotonic()
    end = started + duration

    async def client(index: int) -> None:
        nonlocal answered, errors
        rng = random.Random(index)
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while time.monotonic() < end:
                batch = rng.sample(structures, rng.randint(1, 4))
                sent = time.monotonic()
                try:
                    reply = await http.post("/v1/predict", json={"model": model, "structures": batch})
                    body = reply.json() if reply.status_code == 200 else {}
                    results = body.get("results", [])
                    ok = len(results) == len(batch) and not any("error" in r for r in results)
                except httpx.HTTPError:
                    ok = False
                if ok:
                    answered += len(batch)
                    done = time.monotonic()
                    latencies.append((done - started, done - sent))
                else:
                    errors += 1

    async def sample_memory() -> None:
        await asyncio.sleep(FIRST_SAMPLE)
        while time.monotonic() < end:
            memory.append({"t": time.monotonic() - started, **{name: rss_mib(pid) for name, pid in pids.items()}})
            await asyncio.sleep(SAMPLE_EVERY)

    sampler = asyncio.create_task(sample_memory())
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    memory.append({"t": time.monotonic() - started, **{name: rss_mib(pid) for name, pid in pids.items()}})
    sampler.cancel()
    elapsed = time.monotonic() - started
    seconds = sorted(s for _, s in latencies)
    minute = min(60.0, duration / 3)  # answers in the first and the last minute of the load
    first = sum(1 for t, _ in latencies if t < minute)
    last = sum(1 for t, _ in latencies if duration - minute <= t < duration)
    return {
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "structures": answered,
        "errors": errors,
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "structures_per_s": round(answered / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(seconds), 1),
        "p99_ms": round(1000 * seconds[int(0.99 * (len(seconds) - 1))], 1),
        "throughput_last_over_first_minute": round(last / first, 3) if first else None,
        "rss_mib": memory,
        "rss_end_over_start": {name: round(memory[-1][name] / memory[0][name], 3) for name in pids if len(memory) > 1},
    }


def rss_ratio(memory: list[dict[str, float]], pids: dict[str, int]) -> dict[str, float]:
    """Each process's resident memory at the end over its first reading after :data:`SETTLED` seconds."""
    settled = next((sample for sample in memory if sample["t"] >= SETTLED), memory[0])
    return {name: round(memory[-1][name] / settled[name], 3) for name in pids}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for mode, result in report["modes"].items():
        for name in ("api", "worker"):
            points = [(m["t"], m[name]) for m in result["rss_mib"] if name in m]
            if points:
                axis.plot(*zip(*points, strict=True), marker=".", label=f"{mode}: {name}")
    axis.set_xlabel("seconds of load")
    axis.set_ylabel("resident memory (MiB)")
    axis.set_title(f"mlipserve soak, concurrency {report['concurrency']}, {report['model']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="7net-0")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load per mode")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the model")
    parser.add_argument("--modes", default="embedded,redis")
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    parser.add_argument("--plot", type=Path, default=None, help="a PNG of resident memory over time")
    args = parser.parse_args()
    report = {"model": args.model, "concurrency": args.concurrency, "duration": args.duration, "modes": {}}
    for mode in args.modes.split(","):
        with deployment(mode, args.model, args.threads) as (url, pids):
            wait_ready(url)
            result = asyncio.run(soak(url, pids, args.duration, args.concurrency, args.model))
        report["modes"][mode] = result
        summary = {key: value for key, value in result.items() if key != "rss_mib"}
        print(f"{mode}: {json.dumps(summary)}", flush=True)
    if {"embedded", "redis"} <= report["modes"].keys():
        embedded, redis = report["modes"]["embedded"], report["modes"]["redis"]
        report["redis_over_embedded_structures_per_s"] = round(
            redis["structures_per_s"] / embedded["structures_per_s"], 3
        )
        print(f"Redis mode / embedded mode, structures per second: {report['redis_over_embedded_structures_per_s']}")
    args.out.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(report, args.plot)


if __name__ == "__main__":
    main()
