"""Throughput of the batched torch GAP against quippy (QUIP's Fortran, one structure at a time) on the same structures.

Both compute energy, forces and stress of every structure; the script first checks that they agree (1e-9 eV/atom)
and then times (a) a loop over quippy's ASE calculator and (b) mlipserve's GapPotential in batches of at most
``--batch-atoms`` atoms (neighbour lists included). Structures: rattled, strained diamond-silicon cells of 2-64 atoms.
Potential: LAMMPS' Si example (SOAP l_max=4 n_max=4, 500 sparse points, plus QUIP's Glue core) from ../shared/fixtures;
``--water`` takes QUIP's 2-body water test GAP on rattled water boxes instead. quippy (``quippy-ase``) is a test and
benchmark reference only: its GAP code is under an academic non-commercial licence.

    python benchmarks/bench_gap.py                 # Si SOAP GAP + Glue
    python benchmarks/bench_gap.py --water         # distance_2b water GAP
    python benchmarks/bench_gap.py --device cuda   # the torch side on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import read
from mlipserve.models.backends.gap import GapPotential
from mlipserve.models.backends.gap_format import read_gap
from mlipserve.models.cards import ModelCard
from mlipserve.models.system import AtomicSystem
from mlipserve.server.engine.tuning import tune_process
from timing import predict_batched

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "gap"
SILICON = SHARED / "lammps_examples_quip_Si" / "gap_example.xml"
SI_INIT = "Potential xml_label=GAP_2015_2_20_0_10_54_35_765"
WATER = SHARED / "quip_tests_water_2b" / "GAP.xml"
REPEATS = [(i, j, k) for i in range(1, 5) for j in range(1, 5) for k in range(1, 5) if i >= j >= k]


def silicon_structures(count: int, max_atoms: int = 64, seed: int = 0) -> list[Atoms]:
    """``count`` rattled, strained diamond-Si cells of 2 to ``max_atoms`` atoms."""
    rng = np.random.default_rng(seed)
    unit = bulk("Si", "diamond", a=5.43)
    structures = []
    while len(structures) < count:
        target = rng.integers(2, max_atoms + 1)
        fitting = [r for r in REPEATS if len(unit) * np.prod(r) <= target] or [(1, 1, 1)]
        atoms = unit * max(fitting, key=np.prod)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.02, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.08, seed=int(rng.integers(1 << 31)))
        structures.append(atoms)
    return structures


def water_structures(count: int, seed: int = 0) -> list[Atoms]:
    """``count`` rattled, strained copies of QUIP's 81-atom water frame."""
    frame = read(WATER.parent / "gap_sample.xyz")
    frame.calc = None
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(count):
        atoms = frame.copy()
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.03, seed=int(rng.integers(1 << 31)))
        structures.append(atoms)
    return structures


def run_quippy(init_args: str | None, path: Path, structures: list[Atoms]) -> tuple[float, list[float]]:
    from ase.calculators.calculator import all_changes
    from quippy.potential import Potential

    calculator = Potential(init_args, param_filename=str(path)) if init_args else Potential(param_filename=str(path))
    energies = []
    start = time.perf_counter()
    for atoms in structures:  # one call of QUIP for all three properties
        calculator.calculate(atoms.copy(), properties=["energy", "forces", "stress"], system_changes=all_changes)
        energies.append(float(calculator.results["energy"]))
    return time.perf_counter() - start, energies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--water", action="store_true", help="QUIP's distance_2b water GAP instead of Si SOAP")
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--batch-atoms", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (quippy is run with OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    tune_process(args.threads)
    path, elements, init_args = (WATER, ["H", "O"], None) if args.water else (SILICON, ["Si"], SI_INIT)
    model = read_gap(path)
    card = ModelCard.from_dict(
        {"name": path.stem, "family": "gap", "version": "bench", "checkpoint": path.name, "sha256": "0" * 64,
         "license": "-", "elements": elements, "cutoff": 4.0},
        root=path.parent,
    )  # fmt: skip
    potential = GapPotential(card, model, args.device)
    structures = water_structures(args.count) if args.water else silicon_structures(args.count)
    n_atoms = sum(len(atoms) for atoms in structures)
    print(
        json.dumps(
            {"gap": str(path.relative_to(SHARED.parent)), "structures": len(structures), "atoms": n_atoms,
             "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
             "machine": platform.machine(), "python": platform.python_version()}
        )
    )  # fmt: skip

    quippy_seconds, quippy_energies = run_quippy(init_args, path, structures)
    rows = [("quippy-ase 0.10.3 (QUIP Fortran), one structure at a time", quippy_seconds)]
    for max_atoms in args.batch_atoms:
        seconds, energies = predict_batched(potential, [AtomicSystem.from_ase(a) for a in structures], max_atoms)
        per_atom = np.abs(np.subtract(energies, quippy_energies)) / [len(atoms) for atoms in structures]
        assert per_atom.max() < 1e-9, f"torch GAP and quippy disagree by {per_atom.max():.2e} eV/atom"
        rows.append((f"mlipserve GapPotential ({args.device}), batches of <= {max_atoms} atoms", seconds))

    print("| path | seconds | structures/s | atoms/s | vs quippy |")
    print("|---|---|---|---|---|")
    for label, seconds in rows:
        print(
            f"| {label} | {seconds:.2f} | {len(structures) / seconds:.1f} | {n_atoms / seconds:.0f} "
            f"| {quippy_seconds / seconds:.2f}× |"
        )


if __name__ == "__main__":
    main()
