"""MD atom-steps per second of the batched engine (MDSet) against ASE's VelocityVerlet loop, and NVE energy drift.

(a) throughput: ``--cells`` rattled, strained bcc Mo cells of 8 to 32 atoms, ``--steps`` NVE steps each from
    Maxwell–Boltzmann velocities at 300 K, with the float64 MTP of ``shared/fixtures/mtp/mlearn_Mo_test``:
    all cells at once through :class:`MDSet` (one model call per step) and one after another through ASE's
    ``VelocityVerlet`` with the same Potential wrapped as an ASE calculator; the final positions are compared.
    Wall and CPU seconds are both reported: on a shared machine the wall time also counts other processes' turns.
(b) drift: ``--drift-cells`` cells run ``--drift-ps`` ps of NVE at ``--drift-dt`` fs in one MDSet; the total
    energy's linear drift (least squares over the frames), meV/atom/ps, per cell.

    python benchmarks/bench_md.py --cells 32 --steps 200 --drift-ps 10 --drift-dt 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
from mlipserve.models.backends.mtp import load_potential
from mlipserve.models.backends.mtp_format import read_mtp
from mlipserve.models.calculator import PotentialCalculator
from mlipserve.models.cards import ModelCard
from mlipserve.models.potential import Potential
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.md import MDSet
from mlipserve.server.dynamics.options import MDOptions, MDSpec
from mlipserve.server.dynamics.outcome import MDFrame

REPO = Path(__file__).resolve().parents[1]
MO = REPO.parent / "shared" / "fixtures" / "mtp" / "mlearn_Mo_test" / "fitted.mtp"
#: Supercells of the 2-atom cubic bcc cell with 8 to 32 atoms.
REPEATS = [(2, 2, 1), (3, 2, 1), (2, 2, 2), (3, 3, 1), (3, 2, 2), (2, 2, 3), (3, 3, 2), (2, 2, 4)]


def system_of(atoms: Atoms) -> AtomicSystem:
    return AtomicSystem.from_arrays(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)


def mo_potential(device: str) -> Potential:
    card = ModelCard.from_dict(
        {
            "name": "mo-mtp",
            "family": "mtp",
            "version": "bench",
            "checkpoint": MO.name,
            "sha256": "0" * 64,
            "license": "BSD-3-Clause",
            "elements": "Mo",
            "cutoff": read_mtp(MO).max_dist,
        },
        root=MO.parent,
    )
    return load_potential(card, MO, torch.device(device))


def cells(count: int, seed: int = 0) -> list[Atoms]:
    """``count`` rattled, strained bcc Mo cells of 8-32 atoms."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        atoms = bulk("Mo", "bcc", a=3.16, cubic=True) * REPEATS[i % len(REPEATS)]
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.uniform(-0.01, 0.01, (3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 31)))
        out.append(atoms)
    return out


def run_mdset(
    potential: Potential, structures: list[Atoms], options: MDOptions
) -> tuple[tuple[float, float], dict, dict]:
    """Wall and CPU seconds to run all ``structures`` in one MDSet, the outcomes and the frames by key."""
    md = MDSet(device=potential.device)
    for i, atoms in enumerate(structures):
        md.add(str(i), system_of(atoms), MDSpec(options, seed=i))
    outcomes, frames = {}, {}
    start, cpu = time.perf_counter(), time.process_time()
    while len(md):
        batch = md.batch()
        for end in md.advance_tensors(potential.predict_tensors(batch, md.properties())):
            outcomes[end.key] = end.outcome
        for progress in md.progress():
            if progress.frame is not None:
                frames.setdefault(progress.task_id, []).append(progress.frame)
    if potential.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start, time.process_time() - cpu), outcomes, frames


def run_ase(potential: Potential, structures: list[Atoms], outcomes: dict, options: MDOptions) -> tuple[float, float]:
    """Wall and CPU seconds for ASE's VelocityVerlet over the structures one after another, from the MDSet runs'
    velocities at step 0 (recovered from the frames)."""
    elapsed, cpu = 0.0, 0.0
    for i, atoms in enumerate(structures):
        atoms = atoms.copy()
        atoms.set_velocities(outcomes[str(i)]["v0"] / units.fs)
        atoms.calc = PotentialCalculator(potential)
        dyn = VelocityVerlet(atoms, timestep=options.timestep_fs * units.fs)
        start, cpu_start = time.perf_counter(), time.process_time()
        dyn.run(options.steps)
        elapsed, cpu = elapsed + time.perf_counter() - start, cpu + time.process_time() - cpu_start
        outcomes[str(i)]["ase_positions"] = atoms.positions.copy()
    return elapsed, cpu


def drift(frames: list[MDFrame], n_atoms: int) -> float:
    """The total energy's least-squares slope, meV/atom/ps."""
    time_ps = np.array([frame.time_fs for frame in frames]) / 1000
    total = np.array([frame.energy + frame.kinetic_energy for frame in frames])
    return float(np.polyfit(time_ps, total, 1)[0] * 1000 / n_atoms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dt", type=float, default=2.0, help="time step of the throughput runs, fs")
    parser.add_argument("--drift-cells", type=int, default=4)
    parser.add_argument("--drift-ps", type=float, default=10.0)
    parser.add_argument("--drift-dt", type=float, default=1.0, help="fs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    potential = mo_potential(args.device)
    structures = cells(args.cells)
    atom_steps = sum(len(atoms) for atoms in structures) * args.steps

    options = MDOptions(timestep_fs=args.dt, steps=args.steps, temperature_K=300.0, trajectory_every=args.steps)
    (mdset_s, mdset_cpu), outcomes, frames = run_mdset(potential, structures, options)
    results = {key: {"v0": frames[key][0].velocities, "final": o.system.positions} for key, o in outcomes.items()}
    ase_s, ase_cpu = run_ase(potential, structures, results, options)
    agreement = max(float(np.abs(r["final"] - r["ase_positions"]).max()) for r in results.values())

    steps = round(args.drift_ps * 1000 / args.drift_dt)
    drift_options = MDOptions(
        timestep_fs=args.drift_dt, steps=steps, temperature_K=300.0, trajectory_every=max(1, steps // 1000)
    )
    drift_structures = cells(args.drift_cells, seed=1)
    (drift_s, _), _, drift_frames = run_mdset(potential, drift_structures, drift_options)
    drifts = [drift(drift_frames[str(i)], len(atoms)) for i, atoms in enumerate(drift_structures)]

    report = {
        "machine": f"{platform.node()} ({torch.get_num_threads()} torch threads, torch {torch.__version__})",
        "device": str(potential.device),
        "model": "MTP Mo (mlearn_Mo_test, float64)",
        "cells": args.cells,
        "atoms": sum(len(atoms) for atoms in structures),
        "steps": args.steps,
        "mdset_s": round(mdset_s, 3),
        "ase_s": round(ase_s, 3),
        "mdset_atom_steps_per_s": round(atom_steps / mdset_s),
        "ase_atom_steps_per_s": round(atom_steps / ase_s),
        "speedup": round(ase_s / mdset_s, 2),
        "mdset_cpu_s": round(mdset_cpu, 3),
        "ase_cpu_s": round(ase_cpu, 3),
        "speedup_cpu": round(ase_cpu / mdset_cpu, 2),
        "max_position_difference_vs_ase_A": agreement,
        "drift": {
            "cells": [len(atoms) for atoms in drift_structures],
            "ps": args.drift_ps,
            "dt_fs": args.drift_dt,
            "seconds": round(drift_s, 1),
            "meV_per_atom_per_ps": [float(f"{d:.3g}") for d in drifts],
        },
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
