"""The batched FIRE + Frechet cell filter against ASE's FIRE(FrechetCellFilter(atoms)), step for step, with EMT."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from mlipserve.models.potential import Prediction
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.cell_filter import _expm_frechet_adjoint
from mlipserve.server.dynamics.options import RelaxOptions, RelaxSpec
from mlipserve.server.dynamics.relaxation import Ended, RelaxationSet
from mlipserve.server.engine.tasks import Task, TaskResult
from mlipserve.server.transport.redis.codec import decode_result, decode_task, encode_result, encode_task
from scipy.linalg import expm_frechet


def strained_crystals() -> list[Atoms]:
    """Rattled fcc cells with sheared, strained cells (EMT covers Al, Cu, Ni, Au...)."""
    rng = np.random.default_rng(7)
    crystals = []
    for i, (element, a) in enumerate([("Cu", 3.7), ("Al", 4.0), ("Ni", 3.45), ("Au", 4.2), ("Cu", 3.5)]):
        atoms = bulk(element, "fcc", a=a, cubic=True).repeat((1, 1, 1 + i % 2))
        atoms.rattle(0.05, seed=i)
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.03 * rng.standard_normal((3, 3))), scale_atoms=True)
        crystals.append(atoms)
    return crystals


def emt(system: AtomicSystem) -> Prediction:
    atoms = system.to_ase()
    atoms.calc = EMT()
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    return Prediction(energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=stress)


def ase_relax(atoms: Atoms, options: RelaxOptions) -> tuple[Atoms, int, bool]:
    atoms = atoms.copy()
    atoms.calc = EMT()
    target = (
        FrechetCellFilter(atoms, hydrostatic_strain=options.hydrostatic_strain, scalar_pressure=options.scalar_pressure)
        if options.relax_cell and atoms.pbc.all()
        else atoms
    )
    optimizer = FIRE(target, logfile=None)
    converged = optimizer.run(fmax=options.fmax, steps=options.max_steps)
    return atoms, optimizer.nsteps, bool(converged)


def batched_relax(structures: list[Atoms], specs: list[RelaxSpec], join_every: int = 0) -> list[Ended]:
    """Relax with one RelaxationSet; with ``join_every``, structures join one by one every that many rounds."""
    relaxations = RelaxationSet()
    waiting = list(enumerate(zip(structures, specs, strict=True)))
    ended: dict[str, Ended] = {}
    rounds = 0
    while waiting or len(relaxations):
        while waiting and (join_every == 0 or rounds % join_every == 0):
            index, (atoms, spec) = waiting.pop(0)
            relaxations.add(str(index), AtomicSystem.from_ase(atoms), spec)
            if join_every:
                break
        predictions = {key: emt(system) for key, system in relaxations.systems()}
        ended.update((e.key, e) for e in relaxations.advance(predictions))
        rounds += 1
    return [ended[str(i)] for i in range(len(structures))]


def assert_same_as_ase(structures: list[Atoms], options: RelaxOptions, ended: list[Ended]) -> None:
    for atoms, result in zip(structures, ended, strict=True):
        reference, steps, converged = ase_relax(atoms, options)
        assert result.outcome.steps == steps
        assert result.outcome.converged == converged
        assert result.outcome.stop_reason == ("converged" if converged else "max_steps")
        np.testing.assert_allclose(result.outcome.system.positions, reference.positions, atol=1e-9)
        np.testing.assert_allclose(result.outcome.system.cell, reference.cell.array, atol=1e-9)
        assert result.prediction.energy == pytest.approx(reference.get_potential_energy(), abs=1e-9)


def test_frechet_adjoint_equals_ases_nine_directional_derivatives() -> None:
    rng = np.random.default_rng(3)
    a, g = 0.1 * rng.standard_normal((4, 3, 3)), rng.standard_normal((4, 3, 3))
    for k in range(4):
        expected = np.array(
            [
                [
                    np.sum(expm_frechet(a[k], np.eye(3)[[m]].T @ np.eye(3)[[n]], compute_expm=False) * g[k])
                    for n in range(3)
                ]
                for m in range(3)
            ]
        )
        np.testing.assert_allclose(_expm_frechet_adjoint(a, g)[k], expected, atol=1e-12)


def test_cell_relaxation_matches_ase_step_for_step() -> None:
    options = RelaxOptions(fmax=0.03, max_steps=300)
    crystals = strained_crystals()
    assert_same_as_ase(crystals, options, batched_relax(crystals, [RelaxSpec(options)] * len(crystals)))


def test_structures_joining_in_flight_relax_as_if_alone() -> None:
    options = RelaxOptions(fmax=0.03, max_steps=300)
    crystals = strained_crystals()
    assert_same_as_ase(crystals, options, batched_relax(crystals, [RelaxSpec(options)] * len(crystals), join_every=7))


@pytest.mark.parametrize(
    "options",
    [
        RelaxOptions(fmax=0.03, hydrostatic_strain=True),
        RelaxOptions(fmax=0.03, scalar_pressure=0.01),
        RelaxOptions(fmax=0.03, relax_cell=False),
        RelaxOptions(fmax=0.001, max_steps=7),
    ],
    ids=["hydrostatic", "pressure", "fixed-cell", "max-steps"],
)
def test_cell_options_match_ase(options: RelaxOptions) -> None:
    crystals = strained_crystals()[:2]
    assert_same_as_ase(crystals, options, batched_relax(crystals, [RelaxSpec(options)] * len(crystals)))


def test_fixed_atoms_match_ase_fixatoms() -> None:
    options = RelaxOptions(fmax=0.03, max_steps=300)
    atoms = strained_crystals()[1]
    fixed = np.array([0, 2])
    constrained = atoms.copy()
    constrained.set_constraint(FixAtoms(indices=fixed))
    [result] = batched_relax([atoms], [RelaxSpec(options, fixed)])
    reference, steps, _ = ase_relax(constrained, options)
    assert result.outcome.steps == steps
    np.testing.assert_allclose(result.outcome.system.positions, reference.positions, atol=1e-9)
    # With the cell relaxing, fixed atoms keep their fractional coordinates; with a fixed cell they do not move.
    start = atoms.cell.scaled_positions(atoms.positions)[fixed]
    end = result.outcome.system.positions[fixed] @ np.linalg.inv(result.outcome.system.cell)
    np.testing.assert_allclose(end, start, atol=1e-12)
    [still] = batched_relax([atoms], [RelaxSpec(RelaxOptions(fmax=0.03, relax_cell=False), fixed)])
    np.testing.assert_array_equal(still.outcome.system.positions[fixed], atoms.positions[fixed])
    assert np.abs(still.outcome.system.positions - atoms.positions).max() > 0.01


def test_molecule_relaxes_without_cell_degrees_of_freedom() -> None:
    water = molecule("H2O")
    water.positions[1] += [0.0, 0.15, 0.1]
    options = RelaxOptions(fmax=0.03)
    [result] = batched_relax([water], [RelaxSpec(options)])
    reference, steps, converged = ase_relax(water, options)
    assert converged and result.outcome.converged and result.outcome.steps == steps
    np.testing.assert_allclose(result.outcome.system.positions, reference.positions, atol=1e-9)
    np.testing.assert_array_equal(result.outcome.system.cell, water.cell.array)


def test_explosion_is_flagged_without_stopping_the_others() -> None:
    crystals = strained_crystals()[:2]
    relaxations = RelaxationSet()
    for i, atoms in enumerate(crystals):
        relaxations.add(str(i), AtomicSystem.from_ase(atoms), RelaxSpec(RelaxOptions()))
    predictions = {key: emt(system) for key, system in relaxations.systems()}
    predictions["0"].forces[0, 0] = np.nan
    [ended] = relaxations.advance(predictions)
    assert (ended.key, ended.outcome.stop_reason, ended.outcome.converged) == ("0", "exploded", False)
    assert len(relaxations) == 1
    predictions = {key: emt(system) for key, system in relaxations.systems()}
    predictions["1"].forces[0, 0] = 5e3
    [ended] = relaxations.advance(predictions)
    assert ended.outcome.stop_reason == "exploded" and len(relaxations) == 0


def test_a_failed_evaluation_drops_only_that_relaxation() -> None:
    relaxations = RelaxationSet()
    for i, atoms in enumerate(strained_crystals()[:2]):
        relaxations.add(str(i), AtomicSystem.from_ase(atoms), RelaxSpec(RelaxOptions()))
    predictions: dict[str, Prediction | None] = {key: emt(system) for key, system in relaxations.systems()}
    predictions["1"] = None
    assert relaxations.advance(predictions) == []
    assert [key for key, _ in relaxations.systems()] == ["0"]


def test_relaxation_tasks_and_results_survive_the_redis_codec() -> None:
    atoms = strained_crystals()[0]
    spec = RelaxSpec(RelaxOptions(fmax=0.02, max_steps=9, trajectory_every=2, scalar_pressure=0.001), np.array([1]))
    task = Task("t1", "m", AtomicSystem.from_ase(atoms), ("energy",), relax=spec)
    decoded, reply = decode_task(encode_task(task, "reply-stream"))
    assert reply == "reply-stream" and decoded.relax.options == spec.options
    np.testing.assert_array_equal(decoded.relax.fixed, [1])
    [ended] = batched_relax([atoms], [spec])
    result = decode_result(encode_result(TaskResult("t1", ended.prediction, relaxation=ended.outcome)))
    outcome = result.relaxation
    assert (outcome.steps, outcome.stop_reason, outcome.fmax) == (9, "max_steps", ended.outcome.fmax)
    np.testing.assert_array_equal(outcome.system.positions, ended.outcome.system.positions)
    assert [frame.step for frame in outcome.trajectory] == [0, 2, 4, 6, 8, 9]
    np.testing.assert_array_equal(outcome.trajectory[-1].cell, ended.outcome.system.cell)
