"""Through HTTP, served numbers equal those of each family's own ASE calculator, batched or one by one."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from mlipserve.clients import Client

from .conftest import dataset_sample

E_TOL, F_TOL, S_TOL = 1e-5, 1e-4, 1e-5  # eV/atom, eV/Å, eV/Å³


def reference_calculator(model: str):
    if model == "7net-0":
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator("7net-0", device="cpu")
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False), use_device="cpu")


@pytest.fixture(scope="module")
def structures() -> list:
    return dataset_sample(per_file=2)


@pytest.mark.parametrize("model", ["7net-0", "chgnet-0.3.0"])
def test_http_matches_family_calculator(client: Client, structures: list, model: str) -> None:
    results = client.predict(structures, model=model)
    assert results[0].model["name"] == model
    calculator = reference_calculator(model)
    for atoms, result in zip(structures, results, strict=True):
        reference = atoms.copy()
        reference.calc = calculator
        n = len(atoms)
        where = f"{model} on {atoms.info['source']} ({atoms.get_chemical_formula()})"
        assert abs(result.energy - reference.get_potential_energy()) / n <= E_TOL, where
        assert np.abs(result.forces - reference.get_forces()).max() <= F_TOL, where
        assert np.abs(result.stress_voigt - reference.get_stress()).max() <= S_TOL, where
        assert result.energy_per_atom == pytest.approx(result.energy / n)


@pytest.mark.parametrize("model", ["7net-0", "chgnet-0.3.0"])
def test_mixed_batch_equals_one_by_one(server_url: str, model: str) -> None:
    crystal = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 1, 1)
    crystal.rattle(0.05, seed=3)
    structures = [bulk("Si"), molecule("CH4"), crystal, bulk("Cu", cubic=True), molecule("H2O")]
    with Client(server_url, model=model, chunk_size=len(structures), progress=False) as batched:
        together = batched.predict(structures)
    with Client(server_url, model=model, chunk_size=1, concurrency=1, progress=False) as single:
        alone = [single.predict(atoms) for atoms in structures]
    for atoms, a, b in zip(structures, together, alone, strict=True):
        assert abs(a.energy - b.energy) / len(atoms) <= E_TOL
        assert np.abs(a.forces - b.forces).max() <= F_TOL
        if atoms.pbc.any():
            assert np.abs(a.stress - b.stress).max() <= S_TOL
        else:
            assert a.stress is None and b.stress is None


def test_concurrent_requests_share_batches(server, server_url: str) -> None:
    """Many one-structure requests in flight at once are evaluated in fewer, larger batches."""
    worker = server.app.state.mlipserve.directory.inner.models["7net-0"].worker  # CommitteeDirectory wraps the host
    batches_before, structures_before = worker.batches_run, worker.structures_run
    structures = [bulk("Si", cubic=True) for _ in range(24)]
    with Client(server_url, model="7net-0", chunk_size=1, concurrency=12, progress=False) as c:
        results = c.predict(structures)
    assert len({round(r.energy, 5) for r in results}) == 1
    assert worker.structures_run - structures_before == 24
    assert worker.batches_run - batches_before < 24


def test_response_names_model_version_and_hash(client: Client) -> None:
    result = client.predict(bulk("Si"), model="chgnet-0.3.0")
    info = result.model
    assert info["name"] == "chgnet-0.3.0" and info["version"] == "0.3.0"
    assert len(info["sha256"]) == 64 and info["dtype"] == "float32" and info["device"] == "cpu"


def test_properties_subset(client: Client) -> None:
    result = client.predict(bulk("Si"), properties=["energy"], model="7net-0")
    assert result.energy is not None and result.forces is None and result.stress is None


def test_user_registered_checkpoint_is_served(client: Client) -> None:
    from sevenn.calculator import SevenNetCalculator

    from .conftest import FIXTURES

    atoms = dataset_sample(per_file=1)[0]  # the HfO2 frame
    assert set(atoms.get_chemical_symbols()) == {"Hf", "O"}
    result = client.predict(atoms, model="hfo2-cp0")
    reference = atoms.copy()
    reference.calc = SevenNetCalculator(str(FIXTURES / "sevennet" / "tests" / "cp_0.pth"), device="cpu")
    assert abs(result.energy - reference.get_potential_energy()) / len(atoms) <= E_TOL
    assert np.abs(result.forces - reference.get_forces()).max() <= F_TOL
