"""Throughput of single-point predictions: ASE calculator loop vs batched Potential vs the HTTP server.

Prints structures/s and atoms/s for (a) a sequential loop over the family's own ASE calculator, (b) mlipserve's
Potential batched in-process, (c) the same structures through ``mlipserve serve`` over HTTP (embedded queue),
and the ratios c/b and c/a. All three compute energy, forces and stress, with the same thread settings.

    python benchmarks/bench_predict.py --model 7net-0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from mlipserve.models import AtomicSystem, ModelRegistry
from mlipserve.models.loading import load_model
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.tuning import tune_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import served
from structures import benchmark_structures
from timing import time_batched, time_served


def ase_calculator(model: str):
    if model.startswith("7net"):
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(model, device="cpu")
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False), use_device="cpu")


def run_ase_loop(model: str, structures: list) -> float:
    calculator = ase_calculator(model)
    start = time.perf_counter()
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    return time.perf_counter() - start


def run_batched(model: str, structures: list, policy: BatchPolicy) -> float:
    potential = load_model(ModelRegistry(), model, "cpu")
    return time_batched(potential, [AtomicSystem.from_ase(atoms) for atoms in structures], policy.max_atoms)


def run_http(model: str, structures: list, policy: BatchPolicy) -> float:
    with served(model, "--batch-atoms", str(policy.max_atoms)) as url:
        return time_served(url, model, structures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7net-0")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--batch-atoms", type=int, default=None, help="default: the server's CPU default")
    parser.add_argument("--skip-ase", action="store_true", help="skip the (slow) ASE loop")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    tune_process()  # the same thread and allocator settings as the server's workers, for every path
    structures = benchmark_structures(args.count)
    n_atoms = sum(len(atoms) for atoms in structures)
    policy = BatchPolicy(max_atoms=args.batch_atoms).for_device("cpu")
    timings = {}
    if not args.skip_ase:
        timings["a_ase_loop"] = run_ase_loop(args.model, structures)
    timings["b_batched_in_process"] = run_batched(args.model, structures, policy)
    timings["c_http_server"] = run_http(args.model, structures, policy)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}"
    print(f"model {args.model}: {len(structures)} structures, {n_atoms} atoms (2-64 each); {machine}")
    print("| path | seconds | structures/s | atoms/s |\n|---|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.2f} | {len(structures) / seconds:.1f} | {n_atoms / seconds:.0f} |")
    ratios = {"c/b": timings["b_batched_in_process"] / timings["c_http_server"]}
    if "a_ase_loop" in timings:
        ratios["c/a"] = timings["a_ase_loop"] / timings["c_http_server"]
    print("throughput ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": args.model, "structures": len(structures), "atoms": n_atoms, "machine": machine}
        args.output.write_text(json.dumps(record | {"seconds": timings, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
