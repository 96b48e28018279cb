"""µs per atom per step of the engine's batched relaxation against the single-structure ASE loop, same model, same run.

Many small cells (8-64 atoms, rattled and strained crystals of benchmarks/structures.py) are relaxed with FIRE and
the Frechet cell filter (matbench-discovery's protocol: fmax 0.05 eV/Å; ``--max-steps`` caps the steps):

(a) the engine: ``relax_all`` (server/dynamics/batched.py), in-flight batching within the worker's batch budget
    (measured on a GPU, server/engine/budget.py), state on the model's device, neighbour lists reused with a skin
    (models/neighbors.py); with ``--fresh-lists`` once more with a fresh host list every step;
(b) ASE: ``FIRE(FrechetCellFilter(atoms))`` with the model's own ASE calculator, one structure after another, on
    the first ``--ase-count`` cells.

µs/atom/step is seconds over atoms evaluated (the engine: the atoms of every round; ASE: atoms x force calls).
``steady`` counts only the rounds whose batch holds at least half the largest round's atoms (the tail of a run,
where a few slow relaxations are left, leaves the device idle). Models: ``7net-0`` (SevenNet-0), or ``--mace-shaped``:
a ``ScaleShiftMACE`` with random weights and MACE-MP-0 medium's architecture (needs mace-torch: run it with
``.venv-mace/bin/python``), as in bench_mace.py; its forces are tiny, so give it ``--fmax 1e-9``: every cell then
runs ``--max-steps`` steps.

    python benchmarks/bench_engine.py --model 7net-0 --cells 40 --max-atoms 32 --ase-count 8
    python benchmarks/bench_engine.py --model 7net-0 --cells 1000 --device cuda --fresh-lists --out engine.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from mlipserve.models.cards import file_sha256
from mlipserve.models.loading import load_model
from mlipserve.models.neighbors import SkinNeighborList, device_lists_available
from mlipserve.models.potential import Potential
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.batched import relax_all
from mlipserve.server.dynamics.options import RelaxOptions, RelaxSpec
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.budget import plan_budget
from mlipserve.server.engine.tuning import tune_process

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from structures import benchmark_structures  # noqa: E402

MACE_NAME = "mace-mp-0-medium-shaped"
#: NVIDIA's batched relaxation service, MACE-MP-0b2-L on an H100 (issue 15), for the report.
REFERENCE_US_PER_ATOM_STEP = 3.02


def small_cells(count: int, min_atoms: int, max_atoms: int, seed: int = 0) -> list[Atoms]:
    """``count`` rattled, strained crystals of ``min_atoms`` to ``max_atoms`` atoms, reproducible."""
    cells: list[Atoms] = []
    draw = count
    while len(cells) < count:
        draw *= 2
        cells = [a for a in benchmark_structures(draw, max_atoms, seed) if len(a) >= min_atoms][:count]
    return cells


def mace_shaped(folder: Path, device: str) -> tuple[Potential, object]:
    """A random MACE-MP-0-medium-shaped model saved in ``folder``: its Potential and mace's own ASE calculator."""
    from mace.calculators import MACECalculator

    from tests.mace_env_helper import build

    elements = (REPO / "models" / "cards" / "mace-mp-0-medium.yaml").read_text().split("elements: ")[1].split()[:89]
    model = folder / "medium-shaped.model"
    build(str(model), elements, seed=0, cutoff=6.0, hidden_irreps="128x0e + 128x1o", max_ell=3)
    torch.set_default_dtype(torch.float32)  # build() leaves float64 as the default
    card = {
        "name": MACE_NAME,
        "family": "mace",
        "version": "random",
        "checkpoint": model.name,
        "sha256": file_sha256(model),
        "license": "MIT",
        "elements": " ".join(elements),
        "cutoff": 6.0,
        "options": "{dtype: float32, cueq: 'false'}",
    }
    (folder / f"{MACE_NAME}.yaml").write_text("".join(f"{key}: {value}\n" for key, value in card.items()))
    potential = load_model(ModelRegistry(folder), MACE_NAME, device)
    return potential, MACECalculator(model_paths=str(model), device=potential.device.type, default_dtype="float32")


def sevennet_calculator(model: str, device: torch.device):
    from sevenn.calculator import SevenNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SevenNetCalculator(model, device=str(device))


def run_engine(potential: Potential, cells: list[Atoms], options: RelaxOptions, max_atoms: int, skin: bool) -> dict:
    """Relax ``cells`` with the engine; its timings and outcomes."""
    systems = [AtomicSystem.from_ase(a) for a in cells]
    neighbors = SkinNeighborList() if skin else None
    rounds: list[tuple[int, int, float]] = []  # (members, atoms, seconds) of each round
    start = last = time.perf_counter()

    def observe(members: int, atoms: int) -> None:
        nonlocal last
        now = time.perf_counter()
        rounds.append((members, atoms, now - last))
        last = now
        if len(rounds) % 50 == 0:  # progress, so that a run cut short still says how far it got
            print(f"  round {len(rounds)}: {members} members, {atoms} atoms, {now - start:.1f} s", flush=True)

    relax_all(potential, systems[:4], RelaxSpec(RelaxOptions(max_steps=3)), max_atoms, neighbors)  # warm-up
    synchronize(potential)
    start = last = time.perf_counter()
    ended = relax_all(potential, systems, RelaxSpec(options), max_atoms, neighbors, observe=observe)
    synchronize(potential)
    seconds = time.perf_counter() - start
    atoms = np.array([r[1] for r in rounds], dtype=float)
    times = np.array([r[2] for r in rounds])
    steady = atoms >= 0.5 * atoms.max()
    report = {
        "seconds": round(seconds, 3),
        "rounds": len(rounds),
        "largest_round_atoms": int(atoms.max()),
        "us_per_atom_step": round(1e6 * seconds / atoms.sum(), 3),
        "steady_us_per_atom_step": round(1e6 * times[steady].sum() / atoms[steady].sum(), 3),
        "steady_rounds": int(steady.sum()),
        "structures_per_min": round(60 * len(cells) / seconds, 1),
        "converged": sum(e.outcome.converged for e in ended),
        "total_steps": sum(e.outcome.steps for e in ended),
        "neighbor_lists": "skin (vesin-torch on the device)"
        if skin and device_lists_available()
        else ("skin (host vesin)" if skin else "fresh host vesin every step"),
    }
    if neighbors is not None:
        report |= {"list_builds": neighbors.builds, "list_reuses": neighbors.reuses}
    report["outcomes"] = [
        {"energy": e.prediction.energy, "steps": e.outcome.steps, "converged": e.outcome.converged} for e in ended
    ]
    return report


def run_ase(calculator, cells: list[Atoms], options: RelaxOptions, potential: Potential, time_limit: float) -> dict:
    """Relax ``cells`` one after another through ASE, stopping after the cell that passes ``time_limit`` seconds."""
    warm = cells[0].copy()
    warm.calc = calculator
    FIRE(FrechetCellFilter(warm), logfile=None).run(fmax=options.fmax, steps=3)
    synchronize(potential)
    outcomes, atom_steps = [], 0
    start = time.perf_counter()
    for atoms in cells:
        atoms = atoms.copy()
        atoms.calc = calculator
        optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged = bool(optimizer.run(fmax=options.fmax, steps=options.max_steps))
        outcomes.append({"energy": atoms.get_potential_energy(), "steps": optimizer.nsteps, "converged": converged})
        atom_steps += len(atoms) * (optimizer.nsteps + 1)
        if time.perf_counter() - start > time_limit:
            break
    seconds = time.perf_counter() - start
    return {
        "structures": len(outcomes),
        "seconds": round(seconds, 3),
        "us_per_atom_step": round(1e6 * seconds / atom_steps, 3),
        "structures_per_min": round(60 * len(outcomes) / seconds, 2),
        "converged": sum(o["converged"] for o in outcomes),
        "total_steps": sum(o["steps"] for o in outcomes),
        "outcomes": outcomes,
    }


def agreement(cells: list[Atoms], engine: list[dict], ase: list[dict]) -> dict:
    """How the engine's relaxations of the cells ASE also relaxed compare with ASE's."""
    pairs = list(zip(cells, engine, ase, strict=False))
    same = [(a, e, s) for a, e, s in pairs if e["steps"] == s["steps"]]
    differences = [abs(e["energy"] - s["energy"]) / len(a) for a, e, s in same]
    return {
        "compared": len(pairs),
        "same_converged": sum(e["converged"] == s["converged"] for _, e, s in pairs),
        "same_steps": len(same),
        # after as many steps, the two should stand at the same geometry
        "max_energy_difference_ev_per_atom": max(differences, default=None),
    }


def synchronize(potential: Potential) -> None:
    if potential.device.type == "cuda":
        torch.cuda.synchronize(potential.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="7net-0", help="a registered model (default 7net-0)")
    parser.add_argument("--mace-shaped", action="store_true", help="a random MACE-MP-0-medium-shaped model instead")
    parser.add_argument("--cells", type=int, default=40)
    parser.add_argument("--min-atoms", type=int, default=8)
    parser.add_argument("--max-atoms", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument(
        "--fmax", type=float, default=0.05, help="eV/Å; a random model's forces are tiny: give 1e-9 to run max-steps"
    )
    parser.add_argument("--ase-count", type=int, default=8, help="cells the ASE loop relaxes (the first ones)")
    parser.add_argument("--ase-seconds", type=float, default=120.0, help="stop the ASE loop after this long")
    parser.add_argument("--batch-atoms", type=int, default=None, help="the engine's budget (default: the worker's)")
    parser.add_argument("--fresh-lists", action="store_true", help="also run the engine with fresh lists each step")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    tune_process(args.threads)
    cells = small_cells(args.cells, args.min_atoms, args.max_atoms)
    options = RelaxOptions(fmax=args.fmax, max_steps=args.max_steps)
    device = None if args.device == "auto" else args.device
    with tempfile.TemporaryDirectory() as folder:
        if args.mace_shaped:
            potential, calculator = mace_shaped(Path(folder), args.device)
        else:
            potential = load_model(ModelRegistry(), args.model, device)
            calculator = sevennet_calculator(args.model, potential.device)
        budget = plan_budget(BatchPolicy(max_atoms=args.batch_atoms), potential)
        report: dict = {
            "model": potential.card.name,
            "device": str(potential.device),
            "gpu": torch.cuda.get_device_name(potential.device) if potential.device.type == "cuda" else None,
            "machine": f"{platform.node()} ({torch.get_num_threads()} torch threads, torch {torch.__version__})",
            "cells": len(cells),
            "atoms": sum(len(a) for a in cells),
            "atoms_per_cell": [min(len(a) for a in cells), max(len(a) for a in cells)],
            "max_steps": args.max_steps,
            "fmax": args.fmax,
            "batch_budget": budget.as_dict(),
            "reference_h100_us_per_atom_step": REFERENCE_US_PER_ATOM_STEP,
        }
        print(f"{report['model']} on {report['device']}: budget {report['batch_budget']}", flush=True)
        report["engine"] = run_engine(potential, cells, options, budget.max_atoms, skin=True)
        save(report, args.out, "engine")
        subset = cells[: args.ase_count]
        report["ase_loop"] = run_ase(calculator, subset, options, potential, args.ase_seconds)
        save(report, args.out, "ase_loop")
        if args.fresh_lists:
            report["engine_fresh_lists"] = run_engine(potential, cells, options, budget.max_atoms, skin=False)
            save(report, args.out, "engine_fresh_lists")
    report["agreement_with_ase"] = agreement(subset, report["engine"]["outcomes"], report["ase_loop"]["outcomes"])
    report["speedup_per_atom_step"] = round(
        report["ase_loop"]["us_per_atom_step"] / report["engine"]["us_per_atom_step"], 2
    )
    text = json.dumps(report, indent=1, default=float)
    if args.out:
        args.out.write_text(text)
    print(json.dumps({k: v for k, v in report.items() if k not in ("engine", "ase_loop", "engine_fresh_lists")}))
    print(f"agreement with ASE: {report['agreement_with_ase']}", file=sys.stderr)


def save(report: dict, path: Path | None, phase: str) -> None:
    """Print the phase's figures and write everything so far: a run cut short keeps what it measured."""
    print(f"{phase}: {summary(report[phase])}", flush=True)
    if path:
        path.write_text(json.dumps(report, indent=1, default=float))


def summary(result: dict) -> str:
    keys = ("seconds", "us_per_atom_step", "steady_us_per_atom_step", "converged", "total_steps", "list_builds")
    return ", ".join(f"{key} {result[key]}" for key in keys if key in result)


if __name__ == "__main__":
    main()
