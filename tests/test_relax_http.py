"""Relaxation through the server: SevenNet-0 against ASE's FIRE(FrechetCellFilter) + SevenNetCalculator, options,
fixed atoms, molecules, bad input, trajectories and relaxation jobs."""

from __future__ import annotations

import warnings

import httpx
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from mlipserve.clients import Client, RelaxResult, relaxing
from threadpoolctl import threadpool_limits

from .relax_structures import relaxation_structures

#: The acceptance criteria of the relaxation issue.
ENERGY_TOLERANCE = 1e-3  # eV/atom, where both converge
STEP_TOLERANCE = 0.2  # relative


def hfo2(repeat: int = 1) -> Atoms:
    """A small rattled HfO2 fluorite cell (the ``hfo2-cp0`` test model knows Hf and O)."""
    atoms = bulk("HfO2", "fluorite", a=5.1, cubic=True).repeat((repeat, 1, 1))
    atoms.rattle(0.15, seed=4)
    return atoms


@pytest.fixture(scope="module")
def structures() -> list[Atoms]:
    return relaxation_structures()


@pytest.fixture(scope="module")
def ase_reference(structures: list[Atoms]) -> list[tuple[float, int, bool]]:
    """Energy, steps and converged flag of each structure relaxed by ASE, one at a time, as users do today."""
    from sevenn.calculator import SevenNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calculator = SevenNetCalculator(model="7net-0", device="cpu")
    reference = []
    with threadpool_limits(1):
        for atoms in structures:
            atoms = atoms.copy()
            atoms.calc = calculator
            optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
            converged = optimizer.run(fmax=0.05, steps=500)
            reference.append((atoms.get_potential_energy(), optimizer.nsteps, bool(converged)))
    return reference


@pytest.mark.timeout(3600)  # two sets of 30 relaxations with SevenNet-0 on the CPU: several minutes
def test_relaxations_match_ase_fire_with_frechet_cell_filter(
    client: Client, structures: list[Atoms], ase_reference: list[tuple[float, int, bool]]
) -> None:
    results = client.relax(structures, model="7net-0")
    assert len(results) == len(structures) == 30
    both_converged = 0
    for index, (atoms, result, (energy, steps, converged)) in enumerate(
        zip(structures, results, ase_reference, strict=True)
    ):
        label = f"structure {index} ({atoms.get_chemical_formula()})"
        assert result.converged == converged, label
        assert result.stop_reason == ("converged" if converged else "max_steps"), label
        assert abs(result.steps - steps) <= STEP_TOLERANCE * steps, f"{label}: {result.steps} vs {steps} steps"
        if converged:
            both_converged += 1
            assert abs(result.energy - energy) / len(atoms) <= ENERGY_TOLERANCE, label
            assert result.fmax < 0.05
    assert both_converged >= 25
    relaxed = results[0].atoms
    assert relaxed.get_potential_energy() == results[0].energy  # the final geometry carries its own results
    assert results[0].model["name"] == "7net-0" and len(results[0].model["sha256"]) == 64


def test_fixed_atoms_do_not_move(client: Client) -> None:
    atoms = hfo2()
    atoms.set_constraint(FixAtoms(indices=[0, 5]))  # the client sends FixAtoms indices as `fixed`
    result = client.relax(atoms, model="hfo2-cp0", relax_cell=False, fmax=0.02, max_steps=100)
    np.testing.assert_array_equal(result.atoms.positions[[0, 5]], atoms.positions[[0, 5]])
    assert np.abs(result.atoms.positions - atoms.positions).max() > 0.01
    np.testing.assert_array_equal(result.atoms.cell.array, atoms.cell.array)
    assert result.steps > 0


def test_molecule_relaxes_without_cell(client: Client) -> None:
    cluster = molecule("H2O")
    cluster.positions[1] += [0.0, 0.2, 0.15]
    [result] = client.relax([cluster], model="7net-0", max_steps=200)
    assert result.stress is None
    assert result.atoms.cell.rank == 0 and not result.atoms.pbc.any()
    assert result.steps > 0 and result.stop_reason in ("converged", "max_steps")
    assert not np.allclose(result.atoms.positions, cluster.positions)


def test_options_reach_the_optimizer(client: Client) -> None:
    atoms = hfo2()
    capped = client.relax(atoms, model="hfo2-cp0", fmax=1e-4, max_steps=3, trajectory_every=2)
    assert (capped.steps, capped.converged, capped.stop_reason) == (3, False, "max_steps")
    assert [frame.info["step"] for frame in capped.trajectory] == [0, 2, 3]
    np.testing.assert_allclose(capped.trajectory[-1].positions, capped.atoms.positions)
    hydrostatic = client.relax(atoms, model="hfo2-cp0", hydrostatic_strain=True, fmax=0.1)
    start, end = atoms.cell.cellpar(), hydrostatic.atoms.cell.cellpar()
    np.testing.assert_allclose(end[3:], start[3:], atol=1e-8)  # angles kept
    np.testing.assert_allclose(end[:3] / start[:3], end[0] / start[0], rtol=1e-8)  # one scale factor
    squeezed = client.relax(atoms, model="hfo2-cp0", scalar_pressure=0.05, fmax=0.1)
    free = client.relax(atoms, model="hfo2-cp0", fmax=0.1)
    assert squeezed.atoms.get_volume() < free.atoms.get_volume()


def test_pymatgen_and_ase_outputs(client: Client) -> None:
    atoms = hfo2()
    [structure] = client.relax([atoms], model="hfo2-cp0", fmax=0.2, output="pymatgen")
    [relaxed] = client.relax([atoms], model="hfo2-cp0", fmax=0.2, output="ase")
    assert structure.composition.reduced_formula == "HfO2"
    np.testing.assert_allclose(structure.lattice.matrix, relaxed.cell.array, atol=1e-12)


def test_bad_relaxation_requests_name_the_problem(server_url: str) -> None:
    good = {"numbers": [72, 8, 8], "positions": hfo2().positions[:3].tolist(), "cell": hfo2().cell.tolist()}
    body = {"model": "hfo2-cp0", "structures": [good, good], "fixed": [[0], [7]], "max_steps": 2, "fmax": 1e-6}
    response = httpx.post(f"{server_url}/v1/relax", json=body, timeout=60)
    assert response.status_code == 200
    first, second = response.json()["results"]
    assert first["steps"] == 2
    assert second["error"]["code"] == "malformed_structure"
    assert "structure 1: fixed atom index 7 is out of range for 3 atoms" in second["error"]["message"]
    for change, words in [
        ({"fixed": [[0]]}, "'fixed' has 1 entries for 2 structures"),
        ({"fmax": 0}, "fmax"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"max_steps": -1}, "max_steps"),
    ]:
        response = httpx.post(f"{server_url}/v1/relax", json=body | change, timeout=60)
        assert response.status_code == 422, change
        assert words in response.json()["error"]["message"], change


def test_relaxation_job_streams_relax_results(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    structures = [hfo2(), hfo2(2)]
    structures[1].set_constraint(FixAtoms(indices=[1]))
    results = client.run_job(structures, model="hfo2-cp0", relax={"fmax": 0.1, "relax_cell": False}, progress=False)
    direct = client.relax(structures, model="hfo2-cp0", fmax=0.1, relax_cell=False)
    monkeypatch.setattr(relaxing, "RELAX_DIRECT_LIMIT", 1)  # client.relax of a long list goes through a job
    through_job = client.relax(structures, model="hfo2-cp0", fmax=0.1, relax_cell=False, output="ase")
    for atoms, from_request in zip(through_job, direct, strict=True):
        np.testing.assert_allclose(atoms.positions, from_request.atoms.positions, atol=1e-6)
    for from_job, from_request in zip(results, direct, strict=True):
        assert isinstance(from_job, RelaxResult)
        assert from_job.steps == from_request.steps and from_job.converged == from_request.converged
        np.testing.assert_allclose(from_job.atoms.positions, from_request.atoms.positions, atol=1e-6)
    np.testing.assert_array_equal(results[1].atoms.positions[1], structures[1].positions[1])
