"""Throughput of the batched torch MTP against motep (its C engine, one structure at a time) on the same structures.

Both compute energy, forces and stress of every structure; the script first checks that they agree (1e-9 eV/atom)
and then times (a) a loop over motep's ASE calculator and (b) mlipserve's MTP Potential in batches of at most
``--batch-atoms`` atoms (neighbour lists included). Structures: rattled, strained fcc/bcc cells of 2-64 atoms with
random species of the potential (default: the 5-species FeCoNiCrAl level-16 MTP in ../shared/fixtures).

    python benchmarks/bench_mtp.py                      # FeCoNiCrAl, level 16
    python benchmarks/bench_mtp.py --level-20-cu        # Cu, level 20 (the largest fixture)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers
from mlipserve.models.backends.mtp import MTPPotential
from mlipserve.models.backends.mtp_format import read_mtp
from mlipserve.models.cards import ModelCard, file_sha256
from mlipserve.models.system import AtomicSystem
from mlipserve.server.engine.tuning import tune_process
from timing import predict_batched

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mtp"
DEFAULT_MTP = SHARED / "asemtp_FeCoNiCrAl_5species" / "pot.mtp"
LEVEL_20_CU = SHARED / "motep" / "crystals_cubic_Cu_1species" / "20" / "pot.mtp"
REPEATS = [(i, j, k) for i in range(1, 5) for j in range(1, 5) for k in range(1, 5) if i >= j >= k]


def alloy_structures(elements: list[str], count: int, max_atoms: int = 64, seed: int = 0) -> list[Atoms]:
    """``count`` rattled, strained fcc/bcc cells of 2 to ``max_atoms`` atoms with random species, from ``seed``."""
    rng = np.random.default_rng(seed)
    numbers = [atomic_numbers[symbol] for symbol in elements]
    structures = []
    while len(structures) < count:
        kind, a = ("fcc", 3.58) if len(structures) % 2 == 0 else ("bcc", 2.86)
        unit = bulk("Fe", kind, a=a, cubic=True)
        target = rng.integers(2, max_atoms + 1)
        fitting = [r for r in REPEATS if len(unit) * np.prod(r) <= target] or [(1, 1, 1)]
        atoms = unit * max(fitting, key=np.prod)
        atoms.numbers = rng.choice(numbers, size=len(atoms))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 31)))
        structures.append(atoms)
    return structures


def run_motep(path: Path, elements: list[str], structures: list[Atoms]) -> tuple[float, list[float]]:
    """motep's calculator on each structure; a fresh one each time (its neighbour list is tied to the atom count)."""
    from motep.calculator import MTP
    from motep.io.mlip.mtp import read_mtp as motep_read_mtp

    data = motep_read_mtp(path)
    data.species = [atomic_numbers[symbol] for symbol in elements]
    energies = []
    start = time.perf_counter()
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = MTP(data, engine="cext")
        energies.append(atoms.get_potential_energy())
        atoms.get_forces(), atoms.get_stress()
    return time.perf_counter() - start, energies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mtp", type=Path, default=DEFAULT_MTP)
    parser.add_argument("--level-20-cu", action="store_true", help=f"use {LEVEL_20_CU.relative_to(SHARED.parent)}")
    parser.add_argument("--elements", nargs="+", default=["Fe", "Co", "Ni", "Cr", "Al"], help="per species index")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--batch-atoms", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (motep's engine uses one)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.level_20_cu:
        args.mtp, args.elements = LEVEL_20_CU, ["Cu"]

    tune_process(args.threads)
    mtp = read_mtp(args.mtp)
    card = ModelCard.from_dict(
        {"name": args.mtp.stem, "family": "mtp", "version": "bench", "checkpoint": args.mtp.name,
         "sha256": file_sha256(args.mtp), "license": "-", "elements": args.elements, "cutoff": mtp.max_dist},
        root=args.mtp.parent,
    )  # fmt: skip
    potential = MTPPotential(card, mtp, args.device)
    structures = alloy_structures(args.elements, args.count)
    n_atoms = sum(len(atoms) for atoms in structures)
    print(
        json.dumps(
            {"mtp": str(args.mtp), "sizes": mtp.level_sizes, "structures": len(structures), "atoms": n_atoms,
             "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
             "machine": platform.machine(), "python": platform.python_version()}
        )
    )  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        motep_seconds, motep_energies = run_motep(args.mtp, args.elements, structures)
    rows = [("motep 0.2.0 (C engine), one structure at a time", motep_seconds)]
    for max_atoms in args.batch_atoms:
        seconds, energies = predict_batched(potential, [AtomicSystem.from_ase(a) for a in structures], max_atoms)
        per_atom = np.abs(np.subtract(energies, motep_energies)) / [len(atoms) for atoms in structures]
        assert per_atom.max() < 1e-9, f"torch MTP and motep disagree by {per_atom.max():.2e} eV/atom"
        rows.append((f"mlipserve MTPPotential, batches of <= {max_atoms} atoms", seconds))

    print("| path | seconds | structures/s | atoms/s | vs motep |")
    print("|---|---|---|---|---|")
    for label, seconds in rows:
        print(
            f"| {label} | {seconds:.2f} | {len(structures) / seconds:.1f} | {n_atoms / seconds:.0f} "
            f"| {motep_seconds / seconds:.2f}× |"
        )


if __name__ == "__main__":
    main()
