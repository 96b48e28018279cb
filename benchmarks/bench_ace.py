"""Batched torch ACE (mlipserve) against python-ace's PyACECalculator, one structure at a time, same structures.

Energy, forces and stress of random rattled and strained crystals of the potential's elements: (a) a sequential
loop over ``pyace.PyACECalculator``, (b) ``AcePotential.predict`` in batches of ``--batch-atoms`` atoms. Both
read the same file; the pair table of an ACEpotentials.jl export is left out (python-ace cannot evaluate it).

    python benchmarks/bench_ace.py --potential ../shared/fixtures/ace/acepotentials_jl/TiAl_tutorial_pot.yace
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from mlipserve.models.backends.ace import AcePotential
from mlipserve.models.backends.ace_format import read_potential
from mlipserve.models.cards import ModelCard, file_sha256
from mlipserve.models.system import AtomicSystem
from mlipserve.server.engine.tuning import tune_process


def structures(elements: tuple[str, ...], count: int, max_atoms: int, seed: int = 0) -> list[Atoms]:
    """``count`` fcc/bcc supercells of 2 to ``max_atoms`` atoms with random species, strained and rattled."""
    rng = np.random.default_rng(seed)
    result = []
    for index in range(count):
        cubic = index % 2 == 0
        basis = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]] if cubic else [[0, 0, 0], [0.5, 0.5, 0.5]]
        a = 4.0 if cubic else 3.2
        unit = Atoms("X" * len(basis), scaled_positions=basis, cell=np.eye(3) * a, pbc=True)
        target = int(rng.integers(2, max_atoms + 1))
        repeats = [(i, j, k) for i in range(1, 6) for j in range(1, i + 1) for k in range(1, j + 1)]
        fitting = [r for r in repeats if len(unit) * np.prod(r) <= target] or [(1, 1, 1)]
        atoms = unit.repeat(max(fitting, key=np.prod))
        atoms.set_chemical_symbols(rng.choice(elements, len(atoms)))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.02, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 31)))
        result.append(atoms)
    return result


def batches(items: list[Atoms], atom_budget: int) -> list[list[Atoms]]:
    groups, current, size = [], [], 0
    for atoms in items:
        if current and size + len(atoms) > atom_budget:
            groups.append(current)
            current, size = [], 0
        current.append(atoms)
        size += len(atoms)
    return groups + ([current] if current else [])


def best_of(run, repeat: int) -> float:
    """The shortest of ``repeat`` wall-clock timings of ``run()`` (other load on the host only adds time)."""
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--potential", type=Path, required=True)
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--max-atoms", type=int, default=128)
    parser.add_argument("--batch-atoms", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timings per path; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    args = parser.parse_args()
    tune_process(args.threads)
    from pyace import PyACECalculator

    model = read_potential(args.potential)
    card = ModelCard.from_dict(
        {
            "name": args.potential.stem,
            "family": "ace",
            "version": "bench",
            "checkpoint": args.potential.name,
            "sha256": file_sha256(args.potential),
            "license": "-",
            "elements": list(model.elements),
            "cutoff": model.cutoff,
        },
        root=args.potential.parent,
    )
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    potential = AcePotential(card, model, device=args.device, dtype=dtype)
    sample = structures(model.elements, args.count, args.max_atoms)
    n_atoms = sum(len(atoms) for atoms in sample)
    potential.predict([AtomicSystem.from_ase(sample[0])])  # warm-up

    calculator = PyACECalculator(str(args.potential))

    def reference_loop() -> None:
        for atoms in sample:
            atoms = atoms.copy()
            atoms.calc = calculator
            atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

    def batched() -> None:
        for group in batches(sample, args.batch_atoms):
            potential.predict([AtomicSystem.from_ase(atoms) for atoms in group])
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    reference_seconds, torch_seconds = best_of(reference_loop, args.repeat), best_of(batched, args.repeat)

    print(
        f"{args.potential.name}: {len(sample)} structures, {n_atoms} atoms, torch threads {torch.get_num_threads()}, "
        f"best of {args.repeat}"
    )
    print("| path | seconds | structures/s | atoms/s |\n|---|---|---|---|")
    for label, seconds in (
        ("python-ace PyACECalculator loop", reference_seconds),
        (f"mlipserve AcePotential, batches of {args.batch_atoms} atoms ({args.device}, {args.dtype})", torch_seconds),
    ):
        print(f"| {label} | {seconds:.2f} | {len(sample) / seconds:.1f} | {n_atoms / seconds:.0f} |")


if __name__ == "__main__":
    main()
