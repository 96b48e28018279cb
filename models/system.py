"""The atomic system handed to a Potential: atomic numbers, positions, cell and periodicity, nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AtomicSystem:
    """One structure, a periodic crystal or a molecule, in ASE units (Å).

    ``cell`` rows are the lattice vectors; for a molecule (``pbc`` all False) it may be all zeros.
    """

    numbers: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) float64, Å
    cell: np.ndarray  # (3, 3) float64, Å
    pbc: np.ndarray  # (3,) bool

    @classmethod
    def from_arrays(cls, numbers, positions, cell=None, pbc=None) -> AtomicSystem:
        """Build a system, coercing dtypes and shapes; a missing cell means a molecule."""
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64).reshape(3, 3)
        if pbc is None:
            pbc = np.full(3, bool(np.abs(np.linalg.det(cell)) > 0))
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        return cls(numbers=numbers, positions=positions, cell=cell, pbc=pbc)

    @classmethod
    def from_ase(cls, atoms) -> AtomicSystem:
        """Build a system from an :class:`ase.Atoms`."""
        return cls.from_arrays(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)

    def to_ase(self):
        """Return the system as an :class:`ase.Atoms`."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def is_periodic(self) -> bool:
        return bool(self.pbc.any())

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))
