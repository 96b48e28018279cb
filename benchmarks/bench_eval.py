"""Structures per minute of ``mlipserve eval discovery`` vs a plain script doing matbench-discovery's relaxation loop.

(a) the plain script matbench-discovery's relax scripts amount to: the model's own ASE calculator
(``SevenNetCalculator`` for 7net-0), one ``FIRE(FrechetCellFilter(atoms))`` per structure, fmax 0.05 eV/Å, 500 steps;
(b) ``mlipserve eval discovery --structures SET.extxyz`` (relaxation through server jobs, then formation energies,
hull, metrics, plots and report.html) and (c) ``mlipserve relax SET.extxyz -o OUT.extxyz``, each run as a command
against a warm ``mlipserve serve`` with the same defaults. Same structures, model, torch threads and allocator
settings, in one run; model loading is left out of all three. The set's reference energies (which discovery needs
for its hull) are (a)'s relaxed energies: this measures the pipeline's speed, not the model's accuracy.

    python benchmarks/bench_eval.py --model 7net-0 --count 30 --threads 1 [--out results.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from mlipserve.clients import Client
from mlipserve.server.engine.tuning import tune_process
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_relax import run_ase as plain_script  # (a): one FIRE(FrechetCellFilter) per structure
from serving import served

from tests.relax_structures import relaxation_structures

CLI = [sys.executable, "-m", "mlipserve.server.cli"]
#: A served path: its command line, and what reads each structure's outcome back from what it wrote.
ServedPath = tuple[list[str], Callable[[], list[dict]]]


def discovery_path(url: str, model: str, structures: Path, folder: Path) -> ServedPath:
    """(b): ``mlipserve eval discovery`` on the set, read back from its predictions.csv."""
    out = folder / "discovery"
    command = [*CLI, "eval", "discovery", "--structures", str(structures), "--model", model, "--server", url]
    return [*command, "--out", str(out), "--no-progress"], lambda: discovery_outcomes(out / "predictions.csv")


def relax_path(url: str, model: str, structures: Path, folder: Path) -> ServedPath:
    """(c): ``mlipserve relax`` on the set, read back from the extxyz it writes."""
    out = folder / "relaxed.extxyz"
    command = [*CLI, "relax", str(structures), "-o", str(out), "--server", url, "--model", model, "--no-progress"]
    return command, lambda: relax_outcomes(out)


def discovery_outcomes(predictions: Path) -> list[dict]:
    with predictions.open() as file:
        rows = sorted(csv.DictReader(file), key=lambda row: int(row["material_id"].split("-")[1]))
    return [
        {"energy": float(r["energy"]), "steps": int(float(r["steps"])), "converged": r["converged"] == "True"}
        for r in rows
    ]


def relax_outcomes(out: Path) -> list[dict]:
    return [
        {"energy": a.get_potential_energy(), "steps": int(a.info["steps"]), "converged": bool(a.info["converged"])}
        for a in read(out, index=":")
    ]


def served_paths(model: str, structures: list[Atoms], energies: list[float], threads: int) -> dict[str, dict]:
    """(b) and (c) against one warm server: seconds, outcomes and the command as run, for each."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "structures.extxyz"
        write(
            path,
            [labelled(atoms, i, energy) for i, (atoms, energy) in enumerate(zip(structures, energies, strict=True))],
        )
        with served(model, "--threads", str(threads)) as url, Client(url, model=model, progress=False) as client:
            client.wait_until_ready(300)
            client.relax(structures[:1], max_steps=2)  # warm-up
            for name, path_of in (("eval_discovery", discovery_path), ("mlipserve_relax", relax_path)):
                command, outcomes = path_of(url, model, path, folder)
                start = time.perf_counter()
                subprocess.run(command, check=True)
                seconds = time.perf_counter() - start
                shown = " ".join(["mlipserve", *command[len(CLI) :]]).replace(str(folder), "$TMP")
                runs[name] = {"seconds": seconds, "outcomes": outcomes(), "command": shown}
    return runs


def labelled(atoms: Atoms, index: int, energy: float) -> Atoms:
    """A frame of the set: its ``id`` and its reference total energy."""
    atoms = atoms.copy()
    atoms.info["id"] = f"bench-{index}"
    atoms.calc = SinglePointCalculator(atoms, energy=energy)
    return atoms


def figures(structures: list[Atoms], seconds: float, outcomes: list[dict]) -> dict:
    atom_steps = sum(len(a) * (o["steps"] + 1) for a, o in zip(structures, outcomes, strict=True))
    return {
        "seconds": round(seconds, 2),
        "structures_per_min": round(60 * len(structures) / seconds, 2),
        "us_per_atom_step": round(1e6 * seconds / atom_steps, 1),
        "total_steps": sum(o["steps"] for o in outcomes),
        "converged": sum(bool(o["converged"]) for o in outcomes),
    }


def agreement(structures: list[Atoms], plain: list[dict], command: list[dict]) -> dict:
    both = [i for i, (a, b) in enumerate(zip(plain, command, strict=True)) if a["converged"] and b["converged"]]
    de = [abs(plain[i]["energy"] - command[i]["energy"]) / len(structures[i]) for i in both]
    return {
        "both_converged": len(both),
        "same_converged_flags": sum(a["converged"] == b["converged"] for a, b in zip(plain, command, strict=True)),
        "same_steps": sum(a["steps"] == b["steps"] for a, b in zip(plain, command, strict=True)),
        "max_energy_difference_ev_per_atom": max(de, default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="7net-0")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--max-atoms", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, all paths (default 1: shared CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    structures = relaxation_structures(args.count, args.max_atoms)
    tune_process(args.threads)  # the server worker's torch threads and allocator settings, for the script too
    with threadpool_limits(1):
        plain_seconds, plain = plain_script(args.model, structures)
    served_runs = served_paths(args.model, structures, [o["energy"] for o in plain], args.threads)

    report = {
        "model": args.model,
        "structures": len(structures),
        "atoms": sum(len(a) for a in structures),
        "machine": f"{platform.node()} ({torch.get_num_threads()} torch threads, torch {torch.__version__})",
        "plain_script": figures(structures, plain_seconds, plain),
    }
    for name, run in served_runs.items():
        report[name] = {
            "command": run["command"],
            **figures(structures, run["seconds"], run["outcomes"]),
            "speedup_over_plain_script": round(plain_seconds / run["seconds"], 3),
            "agreement_with_plain_script": agreement(structures, plain, run["outcomes"]),
        }
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.out:
        args.out.write_text(text)
    times = ", ".join(f"{name} {run['seconds']:.1f} s" for name, run in served_runs.items())
    print(f"\nplain script {plain_seconds:.1f} s, {times}", file=sys.stderr)


if __name__ == "__main__":
    main()
