"""Cost per atom of two built-in models on the same batch: 7net-l3i5 against 7net-0 by default.

Each model is loaded as a worker loads it and evaluates one batch (energy, forces, stress) of rattled supercells
(Si 64 atoms, HfO2 96, NaCl 64) in process, with the same torch threads; one warm-up, then the median of
``--repeats`` runs. Both models run in this one process, so the ratio is what to read.

    python benchmarks/bench_models.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from ase.build import bulk
from mlipserve.models.loading import load_model
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem


def batch() -> list[AtomicSystem]:
    cells = [
        bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2)),
        bulk("HfO2", "fluorite", a=5.1, cubic=True).repeat((2, 2, 2)),
        bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2)),
    ]
    for seed, atoms in enumerate(cells):
        atoms.rattle(0.05, seed=seed)
    return [AtomicSystem.from_ase(atoms) for atoms in cells]


def seconds_per_batch(name: str, systems: list[AtomicSystem], repeats: int) -> list[float]:
    potential = load_model(ModelRegistry(tempfile.mkdtemp()), name, "cpu")
    potential.predict(systems)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        potential.predict(systems)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs=2, default=["7net-0", "7net-l3i5"], metavar="NAME")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    systems = batch()
    n_atoms = sum(system.n_atoms for system in systems)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {n_atoms} atoms, median of {args.repeats}")
    medians = {}
    for name in args.models:
        times = seconds_per_batch(name, systems, args.repeats)
        medians[name] = statistics.median(times)
        print(f"{name:12s} {medians[name]:.3f} s/batch = {1e3 * medians[name] / n_atoms:.2f} ms/atom")
    first, second = args.models
    print(f"{second} / {first} = {medians[second] / medians[first]:.2f}x")


if __name__ == "__main__":
    main()
