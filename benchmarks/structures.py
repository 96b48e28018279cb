"""A reproducible set of benchmark structures: rattled, strained crystals of 2–64 atoms over many elements."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk

# (formula, crystal structure, lattice constant in Å) for ase.build.bulk
PROTOTYPES = [
    ("Si", "diamond", 5.43),
    ("Cu", "fcc", 3.61),
    ("Fe", "bcc", 2.87),
    ("Mo", "bcc", 3.15),
    ("Al", "fcc", 4.04),
    ("NaCl", "rocksalt", 5.64),
    ("MgO", "rocksalt", 4.21),
    ("GaAs", "zincblende", 5.65),
    ("Ti", "hcp", 2.95),
    ("LiF", "rocksalt", 4.03),
    ("Ni", "fcc", 3.52),
    ("ZnO", "wurtzite", 3.25),
]


REPEATS = [(i, j, k) for i in range(1, 5) for j in range(1, 5) for k in range(1, 5) if i >= j >= k]


def benchmark_structures(count: int = 256, max_atoms: int = 64, seed: int = 0) -> list[Atoms]:
    """``count`` structures of 2 to ``max_atoms`` atoms, sizes spread evenly, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    structures = []
    while len(structures) < count:
        formula, kind, a = PROTOTYPES[len(structures) % len(PROTOTYPES)]
        unit = bulk(formula, kind, a=a, c=1.6 * a) if kind in ("hcp", "wurtzite") else bulk(formula, kind, a=a)
        target = rng.integers(2, max_atoms + 1)
        fitting = [r for r in REPEATS if len(unit) * np.prod(r) <= target] or [(1, 1, 1)]
        atoms = unit * max(fitting, key=np.prod)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.03, seed=int(rng.integers(1 << 31)))
        structures.append(atoms)
    return structures
