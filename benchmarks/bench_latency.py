"""Latency of one small request: HTTP ``/v1/predict`` of a single structure against the same prediction in process.

For each model, in the same run and with the same torch threads: (a) ``Potential.predict`` of one 8-atom structure
in this process, (b) ``POST /v1/predict`` of that structure to ``mlipserve serve`` (embedded queue, a subprocess on
a free port), one request at a time over a kept-alive connection; (a) and (b) alternate, so both see the same load
on the machine. p50 and p95 of each, and the server's overhead: the difference of the medians. Also the CPU time
per structure (this process's for (a), the server process's for (b), read from /proc): on a machine shared with
other work, wall times include waits for a CPU, CPU times do not. Models: SevenNet-0 (an 8-atom Si cell) and the
`pair` family's Lennard-Jones argon (an 8-atom fcc cell), whose own cost is near zero, so what it measures is the
server alone.

    python benchmarks/bench_latency.py                              # 7net-0 and lj-argon, 200 requests each
    python benchmarks/bench_latency.py --models lj-argon --count 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from mlipserve.models.loading import load_model
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.server.engine.tuning import tune_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pair import install_lj_argon
from serving import free_port

PROPERTIES = ["energy", "forces", "stress"]


def structure_of(model: str) -> Atoms:
    """The 8-atom structure each model is timed on: diamond Si for SevenNet-0, fcc argon for Lennard-Jones."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 1, 1) if model == "lj-argon" else bulk("Si", a=5.43, cubic=True)
    atoms.rattle(0.03, seed=1)
    return atoms


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """p50 and p95 in ms."""
    p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
    return float(p50), float(p95)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(model: str, model_dir: Path, threads: int) -> Iterator[tuple[str, int]]:
    """``mlipserve serve`` of ``model`` on the CPU, on a free port; yields its URL and process id."""
    port = free_port()
    command = [sys.executable, "-m", "mlipserve.server.cli", "serve", "--port", str(port), "--model", model]
    options = ["--model-dir", str(model_dir), "--threads", str(threads), "--device", "cpu", "--log-level", "warning"]
    process = subprocess.Popen([*command, *options])
    try:
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(30)


@dataclass
class Timings:
    """Wall seconds of each call, and CPU seconds spent (by this process, or by the server)."""

    wall: list[float] = field(default_factory=list)
    cpu: float = 0.0


def measure(model: str, model_dir: Path, atoms: Atoms, count: int, threads: int) -> tuple[Timings, Timings]:
    """In process and over HTTP, alternately (one of each per round, so both see the same load on the machine)."""
    potential = load_model(ModelRegistry(model_dir), model, "cpu")
    system = AtomicSystem.from_ase(atoms)
    body = {
        "model": model,
        "properties": PROPERTIES,
        "structures": [
            {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
             "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}
        ],
    }  # fmt: skip
    with server(model, model_dir, threads) as (url, pid), httpx.Client() as http:
        deadline = time.monotonic() + 300
        while not ready(http, url):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after 300 s")
            time.sleep(0.5)

        def local() -> None:
            potential.predict([system], PROPERTIES)

        def remote() -> None:
            reply = http.post(f"{url}/v1/predict", json=body)
            reply.raise_for_status()
            assert "error" not in reply.json()["results"][0], reply.text

        for _ in range(10):  # warm-up
            local(), remote()
        timings = Timings(), Timings()
        for _ in range(count):
            for call, timing, clock in (
                (local, timings[0], time.process_time),
                (remote, timings[1], partial(cpu_seconds, pid)),
            ):
                cpu, start = clock(), time.perf_counter()
                call()
                timing.wall.append(time.perf_counter() - start)
                timing.cpu += clock() - cpu
        return timings


def ready(http: httpx.Client, url: str) -> bool:
    try:
        return http.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["7net-0", "lj-argon"])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in process and in the server")
    args = parser.parse_args()
    tune_process(args.threads)
    print(
        json.dumps(
            {"requests": args.count, "torch": torch.__version__, "threads": torch.get_num_threads(),
             "machine": platform.machine(), "python": platform.python_version()}
        )
    )  # fmt: skip
    print("| model | in process p50 / p95 (ms) | HTTP p50 / p95 (ms) | overhead at p50 (ms) | CPU ms: local / server |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(folder)
        install_lj_argon(model_dir)
        for model in args.models:
            atoms = structure_of(model)
            local, remote = measure(model, model_dir, atoms, args.count, args.threads)
            (local_p50, local_p95), (remote_p50, remote_p95) = percentiles(local.wall), percentiles(remote.wall)
            local_cpu, remote_cpu = local.cpu / args.count * 1000, remote.cpu / args.count * 1000
            print(
                f"| {model} ({len(atoms)} atoms) | {local_p50:.1f} / {local_p95:.1f} "
                f"| {remote_p50:.1f} / {remote_p95:.1f} | {remote_p50 - local_p50:.1f} "
                f"| {local_cpu:.1f} / {remote_cpu:.1f} |"
            )


if __name__ == "__main__":
    main()
