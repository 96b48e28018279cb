"""What the workers run for one structure: the request's options plus the per-structure inputs (fixed atoms,
initial velocities, images, a checkpoint to resume from)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...models.system import AtomicSystem
from ...protocol import MDOptions, NEBOptions, OptimizerName, RelaxOptions
from .outcome import MDCheckpoint

__all__ = [
    "MDOptions",
    "MDSpec",
    "NEBOptions",
    "NEBSpec",
    "OptimizerName",
    "RelaxOptions",
    "RelaxSpec",
    "image_mismatch",
]


@dataclass(frozen=True)
class RelaxSpec:
    """One structure's relaxation: the request's options and the atoms that must not move."""

    options: RelaxOptions
    #: Indices of fixed atoms, or None.
    fixed: np.ndarray | None = None


@dataclass(frozen=True)
class MDSpec:
    """One structure's MD run: the request's options, its seed, initial velocities and fixed atoms.

    ``seed`` is resolved by the front end (the request's seed + the structure's index, or a drawn one), so a run
    that resumes on another worker draws the same numbers.
    """

    options: MDOptions
    seed: int
    #: Initial velocities (n_atoms, 3), Å/fs; None: Maxwell–Boltzmann at ``options.temperature_K`` (or at rest).
    velocities: np.ndarray | None = None
    #: Indices of fixed atoms (ASE's FixAtoms: no force, no velocity), or None.
    fixed: np.ndarray | None = None
    #: The state to resume from (a worker that held the run crashed after saving it), or None: start afresh.
    resume: MDCheckpoint | None = None


@dataclass(frozen=True)
class NEBSpec:
    """One nudged-elastic-band path: its end points (``Task.system`` is the initial one), the images given
    between them (none: interpolated on the worker with ``options.interpolation``) and the fixed atoms."""

    options: NEBOptions
    final: AtomicSystem
    #: Images between the end points, when the request gives them (their count overrides ``options.images``).
    intermediates: tuple[AtomicSystem, ...] = ()
    #: Indices of fixed atoms (in every image), or None.
    fixed: np.ndarray | None = None


def image_mismatch(initial: AtomicSystem, other: AtomicSystem, cell_tolerance: float) -> str | None:
    """How ``other`` differs from a path's initial end point in what every image of it shares (the same atoms in
    the same order, boundary conditions, and a cell equal to within ``cell_tolerance`` Å), or None.

    The front end checks a request's paths with it, the worker again before it builds an NEB (``neb.py``)."""
    if other.n_atoms != initial.n_atoms:
        return (
            f"has {other.n_atoms} atoms, the initial end point {initial.n_atoms}: every image needs the same atoms in "
            "the same order"
        )
    if (differ := np.flatnonzero(other.numbers != initial.numbers)).size:
        atom = int(differ[0])
        return (
            f"has atomic number {int(other.numbers[atom])} at atom {atom} where the initial end point has "
            f"{int(initial.numbers[atom])} ({differ.size} atoms differ): the atoms must be in the same order"
        )
    if not np.array_equal(other.pbc, initial.pbc):
        return f"has pbc {other.pbc.tolist()}, the initial end point {initial.pbc.tolist()}"
    difference = float(np.abs(other.cell - initial.cell).max())
    if initial.is_periodic and difference > cell_tolerance:
        return f"has a cell differing from the initial end point's by up to {difference:.3g} Å (entries)"
    return None
