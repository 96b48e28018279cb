"""Batched relaxation through the server vs a sequential ASE loop, on the same structures and model.

(a) ASE: ``FIRE(FrechetCellFilter(atoms))`` with the model's own ASE calculator, one structure after another, as
users do today; (b) ``client.relax`` against ``mlipserve serve`` (embedded worker, in-flight batching). Both use the
matbench-discovery protocol (fmax 0.05 eV/Å, 500 steps) and the same thread settings. Reports structures/min,
µs per atom-step and how the two agree (the acceptance criteria of the relaxation issue).

    python benchmarks/bench_relax.py --model 7net-0 --count 30 [--batch-atoms 128] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from mlipserve.clients import Client
from mlipserve.server.engine.tuning import tune_process
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import served

from tests.relax_structures import relaxation_structures


def ase_calculator(model: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model.startswith("7net"):
            from sevenn.calculator import SevenNetCalculator

            return SevenNetCalculator(model, device="cpu")
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False), use_device="cpu")


def run_ase(model: str, structures: list) -> tuple[float, list[dict]]:
    calculator = ase_calculator(model)
    outcomes = []
    start = time.perf_counter()
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged = bool(optimizer.run(fmax=0.05, steps=500))
        outcomes.append({"energy": atoms.get_potential_energy(), "steps": optimizer.nsteps, "converged": converged})
    return time.perf_counter() - start, outcomes


def run_server(model: str, structures: list, batch_atoms: int | None, threads: int) -> tuple[float, list[dict]]:
    options = ["--threads", str(threads)] + (["--batch-atoms", str(batch_atoms)] if batch_atoms else [])
    with served(model, *options) as url, Client(url, model=model, progress=False) as client:
        client.wait_until_ready(300)
        client.relax(structures[:1], max_steps=2)  # warm-up
        start = time.perf_counter()
        results = client.relax(structures)
        elapsed = time.perf_counter() - start
    return elapsed, [{"energy": r.energy, "steps": r.steps, "converged": r.converged} for r in results]


def agreement(structures: list, ase: list[dict], served: list[dict]) -> dict:
    both = [i for i in range(len(structures)) if ase[i]["converged"] and served[i]["converged"]]
    de = [abs(ase[i]["energy"] - served[i]["energy"]) / len(structures[i]) for i in both]
    step_ratio = [served[i]["steps"] / max(ase[i]["steps"], 1) for i in range(len(structures))]
    return {
        "both_converged": len(both),
        "same_converged_flags": sum(a["converged"] == s["converged"] for a, s in zip(ase, served, strict=True)),
        "max_energy_difference_ev_per_atom": max(de, default=0.0),
        "step_ratio_min": min(step_ratio),
        "step_ratio_max": max(step_ratio),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="7net-0")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--max-atoms", type=int, default=32)
    parser.add_argument("--batch-atoms", type=int, default=None, help="server's atom budget (default: its own)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    structures = relaxation_structures(args.count, args.max_atoms)
    tune_process(args.threads)  # the same torch threads and allocator settings as the server's worker
    with threadpool_limits(1):  # BLAS threads would compete with torch's
        ase_seconds, ase = run_ase(args.model, structures)
    served_seconds, served = run_server(args.model, structures, args.batch_atoms, args.threads)

    report = {
        "model": args.model,
        "structures": len(structures),
        "atoms": sum(len(a) for a in structures),
        "machine": f"{platform.node()} ({torch.get_num_threads()} torch threads, torch {torch.__version__})",
    }
    for name, seconds, outcomes in (("ase_loop", ase_seconds, ase), ("server", served_seconds, served)):
        atom_steps = sum(len(a) * (o["steps"] + 1) for a, o in zip(structures, outcomes, strict=True))
        report[name] = {
            "seconds": round(seconds, 2),
            "structures_per_min": round(60 * len(structures) / seconds, 2),
            "us_per_atom_step": round(1e6 * seconds / atom_steps, 1),
            "total_steps": sum(o["steps"] for o in outcomes),
            "converged": sum(o["converged"] for o in outcomes),
        }
    report["speedup"] = round(ase_seconds / served_seconds, 3)
    report["agreement"] = agreement(structures, ase, served)
    report["per_structure"] = [
        {"formula": a.get_chemical_formula(), "ase": x, "server": y}
        for a, x, y in zip(structures, ase, served, strict=True)
    ]
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.out:
        args.out.write_text(text)
    print(
        f"\nASE loop {ase_seconds:.1f} s, server {served_seconds:.1f} s: {report['speedup']:.2f}x; "
        f"{report['agreement']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
