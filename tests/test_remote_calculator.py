"""RemoteCalculator lets unchanged ASE code (here BFGS) run against the server."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import InputError
from ase.optimize import BFGS
from mlipserve.clients import RemoteCalculator


def relax(atoms, calculator) -> tuple[float, np.ndarray, int]:
    atoms.calc = calculator
    optimizer = BFGS(atoms, logfile=None)
    optimizer.run(fmax=0.01, steps=200)
    return atoms.get_potential_energy(), atoms.positions.copy(), optimizer.nsteps


def test_bfgs_reaches_the_local_minimum(server_url: str) -> None:
    from sevenn.calculator import SevenNetCalculator

    start = bulk("GaAs", "zincblende", a=5.75, cubic=True)
    start.rattle(0.08, seed=11)
    remote_energy, remote_positions, remote_steps = relax(start.copy(), RemoteCalculator(server_url, model="7net-0"))
    local_energy, local_positions, local_steps = relax(start.copy(), SevenNetCalculator("7net-0", device="cpu"))
    assert remote_energy == pytest.approx(local_energy, abs=1e-4 * len(start))
    assert np.abs(remote_positions - local_positions).max() < 2e-3
    assert abs(remote_steps - local_steps) <= 2


def test_stress_and_caching(server_url: str) -> None:
    atoms = bulk("Si", cubic=True)
    calculator = RemoteCalculator(server_url, model="7net-0")
    atoms.calc = calculator
    energy = atoms.get_potential_energy()
    assert atoms.get_stress().shape == (6,)
    assert atoms.get_forces().shape == (8, 3)
    assert calculator.model_info["name"] == "7net-0"
    atoms.positions[0] += 0.05
    assert atoms.get_potential_energy() != energy


def test_bad_structure_raises_input_error(server_url: str) -> None:
    atoms = bulk("Si", cubic=True)
    atoms.positions[1] = atoms.positions[0] + [0.1, 0.0, 0.0]
    atoms.calc = RemoteCalculator(server_url, model="7net-0")
    with pytest.raises(InputError, match=r"atoms 0 and 1 are 0\.100 Å apart"):
        atoms.get_potential_energy()
