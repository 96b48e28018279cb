"""How the CPU time of a fixed set of structures depends on the batch size, with and without allocator tuning.

Evaluates 16 structures of 30-40 atoms (energy, forces, stress) in batches of 1, 4 and 16, twice each, and
reports seconds, minor page faults and peak memory. This is what sets the CPU atom budget (128 atoms).

    python benchmarks/bench_batch_size.py --model 7net-0             # server settings (tuned allocator)
    python benchmarks/bench_batch_size.py --model 7net-0 --no-tune   # glibc's default allocator
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from mlipserve.models import AtomicSystem, ModelRegistry
from mlipserve.models.loading import load_model
from mlipserve.server.engine.tuning import configure_threads, tune_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structures import benchmark_structures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7net-0")
    parser.add_argument("--no-tune", action="store_true", help="keep glibc's allocator defaults")
    args = parser.parse_args()
    configure_threads() if args.no_tune else tune_process()

    structures = [atoms for atoms in benchmark_structures(256) if 30 <= len(atoms) <= 40][:16]
    systems = [AtomicSystem.from_ase(atoms) for atoms in structures]
    potential = load_model(ModelRegistry(), args.model, "cpu")
    potential.predict(systems[:2])  # warm-up
    print(f"{args.model}, {len(systems)} structures, {sum(s.n_atoms for s in systems)} atoms, tuned={not args.no_tune}")
    print("| batch size | seconds | minor page faults | peak RSS (MB) |\n|---|---|---|---|")
    for size in (1, 4, 16, 1, 4, 16):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for first in range(0, len(systems), size):
            potential.predict(systems[first : first + size])
        seconds = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"| {size} | {seconds:.2f} | {usage.ru_minflt - faults} | {usage.ru_maxrss // 1024} |")


if __name__ == "__main__":
    main()
