"""The batched BFGS against ASE's BFGS(FrechetCellFilter(atoms)), step for step, with EMT."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.options import RelaxOptions, RelaxSpec
from mlipserve.server.dynamics.relaxation import Ended, RelaxationSet

from .test_relax_engine import emt, strained_crystals


def ase_bfgs(atoms: Atoms, options: RelaxOptions) -> tuple[Atoms, int, bool]:
    atoms = atoms.copy()
    atoms.calc = EMT()
    target = FrechetCellFilter(atoms) if options.relax_cell and atoms.pbc.all() else atoms
    optimizer = BFGS(target, logfile=None)
    converged = optimizer.run(fmax=options.fmax, steps=options.max_steps)
    return atoms, optimizer.nsteps, bool(converged)


def bfgs_relax(structures: list[Atoms], options: RelaxOptions, join_every: int = 0) -> list[Ended]:
    """Relax with one BFGS RelaxationSet; with ``join_every``, structures join one by one every that many rounds."""
    relaxations = RelaxationSet("bfgs")
    waiting = list(enumerate(structures))
    ended: dict[str, Ended] = {}
    rounds = 0
    while waiting or len(relaxations):
        if waiting and (join_every == 0 or rounds % join_every == 0):
            batch = waiting if join_every == 0 else waiting[:1]
            for index, atoms in batch:
                relaxations.add(str(index), AtomicSystem.from_ase(atoms), RelaxSpec(options))
            waiting = waiting[len(batch) :]
        predictions = {key: emt(system) for key, system in relaxations.systems()}
        ended.update((e.key, e) for e in relaxations.advance(predictions))
        rounds += 1
    return [ended[str(i)] for i in range(len(structures))]


@pytest.mark.parametrize("join_every", [0, 5])
def test_bfgs_matches_ase_step_for_step(join_every: int) -> None:
    crystals = [*strained_crystals(), molecule("CH4")]
    crystals[-1].positions += np.random.default_rng(1).normal(scale=0.05, size=(5, 3))
    options = RelaxOptions(optimizer="bfgs", fmax=0.02, max_steps=200)
    for atoms, result in zip(crystals, bfgs_relax(crystals, options, join_every), strict=True):
        reference, steps, converged = ase_bfgs(atoms, options)
        assert (result.outcome.steps, result.outcome.converged) == (steps, converged)
        np.testing.assert_allclose(result.outcome.system.positions, reference.positions, atol=1e-8)
        np.testing.assert_allclose(result.outcome.system.cell, reference.cell.array, atol=1e-8)


def test_bfgs_stops_at_max_steps_like_ase() -> None:
    [atoms] = strained_crystals()[:1]
    options = RelaxOptions(optimizer="bfgs", fmax=1e-6, max_steps=4)
    [result] = bfgs_relax([atoms], options)
    reference, steps, converged = ase_bfgs(atoms, options)
    assert result.outcome.stop_reason == "max_steps" and not converged
    assert result.outcome.steps == steps == 4
    np.testing.assert_allclose(result.outcome.system.positions, reference.positions, atol=1e-10)
