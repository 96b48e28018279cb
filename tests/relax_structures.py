"""Structures to relax, built from the shared DFT datasets: rattled, strained cells, some turned into alloys.

Used by the relaxation acceptance test and by ``benchmarks/bench_relax.py``, so both relax the same set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "datasets"
#: Element swapped in on every other site to make a binary from a one-element frame.
ALLOY_PARTNER = {"Si": "Ge", "Ge": "Si", "Ni": "Cu", "Cu": "Ni", "Mo": "W", "Li": "Na"}


def base_frames(max_atoms: int) -> list[Atoms]:
    """Every dataset frame of at most ``max_atoms`` atoms, smallest first (ties in file order)."""
    frames = []
    for path in sorted(DATASETS.glob("*.extxyz")):
        frames += [atoms for atoms in read(path, index=":", format="extxyz") if len(atoms) <= max_atoms]
    return sorted(frames, key=len)


def relaxation_structures(count: int = 30, max_atoms: int = 32, seed: int = 0) -> list[Atoms]:
    """``count`` structures: each base frame strained (±2%) and rattled (0.05 Å); every other one made binary."""
    rng = np.random.default_rng(seed)
    bases = base_frames(max_atoms)
    structures = []
    for index in range(count):
        atoms = Atoms(bases[index % len(bases)])  # drops the DFT results and info
        atoms.calc = None
        symbols = set(atoms.get_chemical_symbols())
        if (index + index // len(bases)) % 2 and len(symbols) == 1 and len(atoms) > 1:
            partner = ALLOY_PARTNER[symbols.pop()]
            atoms.symbols[1::2] = partner
        strain = rng.normal(scale=0.02, size=(3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + (strain + strain.T) / 2), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 31)))
        structures.append(atoms)
    return structures
