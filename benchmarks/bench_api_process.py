"""The API process in Redis mode: resident memory, start-up time and whether torch is loaded, against a baseline.

``mlipserve serve --redis URL`` only validates and forwards; it should load neither torch nor a model. This starts
the current tree's server and, with ``--baseline-tree DIR`` (an older checkout, e.g. from ``git worktree add``),
that tree's server, each several times against a private redis-server, and reports the median time from process
start to the first ``200`` of ``/v1/models`` (a route that reads the registry and Redis), the resident set size
then, and whether ``libtorch`` is mapped into the process.

    git worktree add /tmp/before HEAD~1
    python benchmarks/bench_api_process.py --baseline-tree /tmp/before
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import free_port, private_redis

REPO = Path(__file__).resolve().parents[1]


def package_layout(tree: Path, into: Path) -> Path:
    """A folder holding ``tree``'s package as installed (mlipserve/, mlipserve/models, ...), to put on sys.path."""
    package = into / "mlipserve"
    shutil.copytree(tree / "mlipserve", package)
    for name in ("models", "server", "clients"):
        shutil.copytree(tree / name, package / name)
    return into


def measure(path_entry: Path, redis_url: str) -> tuple[float, float, bool]:
    """Seconds to the first answer of /v1/models, RSS in MiB then, and whether libtorch is mapped."""
    port = free_port()
    command = [sys.executable, "-m", "mlipserve.server.cli", "serve", "--redis", redis_url, "--port", str(port)]
    env = os.environ | {"PYTHONPATH": str(path_entry), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.perf_counter()
    process = subprocess.Popen([*command, "--log-level", "warning"], env=env, cwd=tempfile.gettempdir())
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
        torch_loaded = "libtorch" in Path(f"/proc/{process.pid}/maps").read_text()
        return elapsed, rss, torch_loaded
    finally:
        process.terminate()
        process.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-tree", type=Path, help="an older checkout to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, private_redis() as redis_url:
        trees = {"this tree": REPO} | ({"baseline": args.baseline_tree} if args.baseline_tree else {})
        layouts = {name: package_layout(tree, Path(folder) / name.replace(" ", "-")) for name, tree in trees.items()}
        rows = {name: [] for name in layouts}
        for _ in range(args.repeats):  # interleaved, so that load on the host hits both alike
            for name, layout in layouts.items():
                rows[name].append(measure(layout, redis_url))
    print(f"{'tree':<10} {'start-up s':>11} {'RSS MiB':>8}  torch loaded")
    medians = {}
    for name, runs in rows.items():
        medians[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"{name:<10} {medians[name][0]:>11.2f} {medians[name][1]:>8.0f}  {any(r[2] for r in runs)}")
    if "baseline" in medians:
        (t1, m1), (t0, m0) = medians["this tree"], medians["baseline"]
        print(f"ratio this/baseline: start-up {t1 / t0:.2f}, RSS {m1 / m0:.2f}")


if __name__ == "__main__":
    main()
