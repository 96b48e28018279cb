"""MACE through the server vs a loop over mace's own MACECalculator, on the same structures.

No MACE-MP file can be downloaded here, so the model is a random ``ScaleShiftMACE`` with the architecture of
MACE-MP-0 medium (128x0e + 128x1o, max_ell 3, correlation 3, two interactions, 89 elements, 6 Å cutoff); the speed
of a forward pass does not depend on the weights' values. Paths, energy + forces + stress in ``--dtype``:
(a) ``MACECalculator`` one structure at a time, in the MACE environment;
(b) ``.venv-mace/bin/mlipserve serve`` (embedded queue), through the Python client;
(c) ``mlipserve serve --redis`` in this environment with one ``.venv-mace/bin/mlipserve worker``, through the client.

    python benchmarks/bench_mace.py --count 128
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from ase.io import write
from mlipserve.clients import Client
from mlipserve.models.cards import file_sha256

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_redis import free_port, private_redis, processes
from structures import benchmark_structures

REPO = Path(__file__).resolve().parents[1]
MACE_BIN = REPO / ".venv-mace" / "bin"
HELPER = REPO / "tests" / "mace_env_helper.py"
MP_ELEMENTS = (REPO / "models" / "cards" / "mace-mp-0-medium.yaml").read_text().split("elements: ")[1].split()[:89]
MODEL = "bench-mace-medium"


def build_model(folder: Path, dtype: str) -> None:
    model = folder / "medium-shaped.model"
    build = [str(MACE_BIN / "python"), str(HELPER), "build", str(model), "--elements", *MP_ELEMENTS]
    subprocess.run([*build, "--cutoff", "6.0", "--hidden-irreps", "128x0e + 128x1o", "--max-ell", "3"], check=True)
    card = {
        "name": MODEL,
        "family": "mace",
        "version": "random",
        "checkpoint": model.name,
        "sha256": file_sha256(model),
        "license": "MIT",
        "elements": " ".join(MP_ELEMENTS),
        "cutoff": 6.0,
        "options": f"{{dtype: {dtype}}}",
    }
    (folder / f"{MODEL}.yaml").write_text("".join(f"{key}: {value}\n" for key, value in card.items()))


def calculator_loop(folder: Path, structures: list, dtype: str) -> float:
    frames = folder / "frames.extxyz"
    write(frames, structures, format="extxyz")
    command = [str(MACE_BIN / "python"), str(HELPER), "reference", str(folder / "medium-shaped.model"), str(frames)]
    output = subprocess.run([*command, str(folder / "out.npz"), "--dtype", dtype], capture_output=True, text=True)
    if output.returncode:
        raise RuntimeError(output.stderr[-2000:])
    return float(output.stdout.split("seconds")[-1])


def through_client(url: str, structures: list) -> float:
    with Client(url, model=MODEL, chunk_size=16, concurrency=8, progress=False) as client:
        client.wait_until_ready(timeout=600)
        client.predict(structures[:4])  # warm-up: e3nn's code generation and the first allocations
        start = time.perf_counter()
        client.predict(structures)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=128, help="structures (benchmarks/structures.py)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    structures = benchmark_structures(args.count)
    n_atoms = sum(len(atoms) for atoms in structures)
    folder = Path(tempfile.mkdtemp(prefix="bench-mace-"))
    build_model(folder, args.dtype)
    serve = ["serve", "--model", MODEL, "--model-dir", str(folder), "--device", "cpu", "--log-level", "warning"]

    timings = {"(a) MACECalculator loop": calculator_loop(folder, structures, args.dtype)}
    port = free_port()
    with processes([str(MACE_BIN / "mlipserve"), *serve, "--port", str(port)]):
        timings["(b) embedded server (MACE env)"] = through_client(f"http://127.0.0.1:{port}", structures)
    port = free_port()
    with private_redis() as redis_url:
        server = [sys.executable, "-m", "mlipserve.server.cli", *serve, "--port", str(port), "--redis", redis_url]
        worker = [str(MACE_BIN / "mlipserve"), "worker", "--model", MODEL, "--redis", redis_url]
        worker += ["--model-dir", str(folder), "--device", "cpu", "--log-level", "warning"]
        with processes(server, worker):
            timings["(c) server + Redis + MACE worker"] = through_client(f"http://127.0.0.1:{port}", structures)

    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.dtype}")
    print(f"{len(structures)} structures, {n_atoms} atoms")
    print("| path | seconds | structures/s | atoms/s |\n|---|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.2f} | {len(structures) / seconds:.1f} | {n_atoms / seconds:.0f} |")
    print(json.dumps({"timings": timings, "structures": len(structures), "atoms": n_atoms}))


if __name__ == "__main__":
    main()
