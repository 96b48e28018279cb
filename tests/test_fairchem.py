"""fairchem (eSEN, UMA): served from its own environment (.venv-fairchem), equal to fairchem's FAIRChemCalculator.

This process never imports fairchem (its environment pins torch and numpy for fairchem-core alone). Small random
models of the two architectures (an eSEN-like eSCNMDBackbone, and a UMA-like eSCNMDMoeBackbone with experts and
per-dataset heads) are built and saved in fairchem's inference-checkpoint format inside the environment by
``tests/fairchem_env_helper.py``, which also computes the reference numbers with ``FAIRChemCalculator``; the
worker is ``.venv-fairchem/bin/mlipserve worker`` (Redis), or ``.venv-fairchem/bin/mlipserve serve`` alone.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read, write
from mlipserve.clients import Client
from mlipserve.server.config import ServerSettings

from .conftest import REPO, RunningServer, free_port, write_card
from .family_envs import require_environment, run_in_environment
from .redis_fixtures import wait_for_workers

FAIRCHEM_PYTHON = REPO / ".venv-fairchem" / "bin" / "python"
FAIRCHEM_MLIPSERVE = REPO / ".venv-fairchem" / "bin" / "mlipserve"
HELPER = REPO / "tests" / "fairchem_env_helper.py"
ELEMENTS = "H C O Mg Al Si Cu"
CUTOFF = 4.5
ESEN, UMA, UMA_OMOL, UMA_FLOAT32 = "tiny-esen", "tiny-uma", "tiny-uma-omol", "tiny-uma-float32"
TOLERANCES = (1e-6, 1e-6, 1e-6)  # eV/atom, eV/Å, eV/Å³: float64 against float64
FLOAT32_TOLERANCES = (1e-5, 1e-4, 1e-5)  # as tests/test_sevennet_backend.py: float32 against float64

require_environment("fairchem")


def in_fairchem_env(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the fairchem environment's Python, failing with its stderr."""
    return run_in_environment("fairchem", *args, timeout=timeout)


def structures() -> list[Atoms]:
    """Built here, in no fixture: a rattled Cu cell, a strained (triclinic) MgO-Al cell, a Cu slab (periodic in x,
    y) and a molecule (CH3OH-like)."""
    rng = np.random.default_rng(7)
    copper = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
    copper.rattle(0.1, seed=1)
    oxide = bulk("MgO", "rocksalt", a=4.21, cubic=True)
    oxide.symbols[0] = "Al"
    oxide.set_cell(oxide.cell.array @ (np.eye(3) + 0.05 * rng.standard_normal((3, 3))), scale_atoms=True)
    oxide.rattle(0.1, seed=2)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    slab.symbols[1] = "Si"
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = [True, True, False]
    slab.rattle(0.05, seed=3)
    positions = [[0.0, 0.0, 0.0], [1.42, 0.0, 0.0], [-0.36, 1.03, 0.0], [-0.36, -0.51, 0.89], [1.75, 0.9, 0.1]]
    methanol = Atoms("CO" + "H" * 3, positions=positions)
    methanol.rattle(0.05, seed=4)
    # Through extxyz and back, so that the server gets exactly the positions the reference reads from the file.
    text = io.StringIO()
    write(text, [copper, oxide, slab, methanol], format="extxyz")
    return read(io.StringIO(text.getvalue()), index=":", format="extxyz")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random eSEN-like and UMA-like checkpoints, FAIRChemCalculator's numbers for :func:`structures` (one structure
    at a time) and a tampered checkpoint, all made by one process in the fairchem environment."""
    folder = tmp_path_factory.mktemp("fairchem-prepared")
    frames = folder / "frames.extxyz"
    write(frames, structures(), format="extxyz")
    in_fairchem_env(str(HELPER), "prepare", str(folder), str(frames), "--cutoff", str(CUTOFF))
    return folder


@pytest.fixture(scope="module")
def model_dir(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with the two random checkpoints, registered by user cards."""
    folder = tmp_path_factory.mktemp("fairchem-models")
    common = {"family": "fairchem", "elements": ELEMENTS, "cutoff": CUTOFF}
    write_card(folder, ESEN, prepared / "esen.pt", **common, options="{dtype: float64}")
    write_card(folder, UMA, prepared / "uma.pt", **common, options="{dtype: float64, task: omat}")
    write_card(folder, UMA_OMOL, prepared / "uma.pt", **common, options="{dtype: float64, task: omol}")
    write_card(folder, UMA_FLOAT32, prepared / "uma.pt", **common, options="{task: omat}")  # float32 by default
    return folder


@pytest.fixture(scope="module")
def reference(prepared: Path) -> dict[str, dict[str, np.ndarray]]:
    """FAIRChemCalculator's energies, forces and stresses of :func:`structures`, per model."""
    files = {ESEN: "esen-omat.npz", UMA: "uma-omat.npz", UMA_OMOL: "uma-omol.npz"}
    return {name: dict(np.load(prepared / file)) for name, file in files.items()}


@pytest.fixture(scope="module")
def fairchem_server(redis_url: str, model_dir: Path) -> Iterator[RunningServer]:
    """The server in this environment, a worker in the fairchem environment, joined by Redis."""
    settings = ServerSettings(port=free_port(), models=(ESEN,), model_dir=model_dir, redis_url=redis_url)
    command = [str(FAIRCHEM_MLIPSERVE), "worker", "--model", ESEN, "--redis", redis_url, "--model-dir", str(model_dir)]
    command += ["--device", "cpu", "--threads", "1", "--log-level", "warning"]
    worker = subprocess.Popen(command, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        with RunningServer(settings) as server:
            wait_for_workers(server.url, ESEN, 1, timeout=300)
            yield server
    finally:
        worker.terminate()
        worker.wait(30)


def assert_matches_reference(
    results: list, reference: dict[str, np.ndarray], frames: list[Atoms], tolerances: tuple[float, float, float]
) -> None:
    """Compare served results with FAIRChemCalculator's (whose stress of a molecule mlipserve does not report)."""
    offsets = np.concatenate([[0], np.cumsum(reference["n_atoms"])])
    worst = {"energy_per_atom": 0.0, "forces": 0.0, "stress": 0.0}
    for index, (result, atoms) in enumerate(zip(results, frames, strict=True)):
        worst["energy_per_atom"] = max(
            worst["energy_per_atom"], abs(result.energy - reference["energy"][index]) / len(atoms)
        )
        forces = reference["forces"][offsets[index] : offsets[index + 1]]
        worst["forces"] = max(worst["forces"], float(np.abs(result.forces - forces).max()))
        if atoms.pbc.any():
            worst["stress"] = max(worst["stress"], float(np.abs(result.stress - reference["stress"][index]).max()))
        else:
            assert result.stress is None
    print(f"largest deviations from FAIRChemCalculator: {worst}")
    assert worst["energy_per_atom"] <= tolerances[0]
    assert worst["forces"] <= tolerances[1]
    assert worst["stress"] <= tolerances[2]


def test_served_esen_equals_fairchem_calculator(fairchem_server: RunningServer, reference: dict) -> None:
    frames = structures()
    with Client(fairchem_server.url, model=ESEN, progress=False) as client:
        results = client.predict(frames)
    assert {r.model["dtype"] for r in results} == {"float64"}
    assert max(np.abs(r.forces).max() for r in results) > 1e-2  # the random model gives non-trivial forces
    assert_matches_reference(results, reference[ESEN], frames, TOLERANCES)


def test_mixed_batch_equals_one_by_one(fairchem_server: RunningServer) -> None:
    frames = structures()
    with Client(fairchem_server.url, model=ESEN, progress=False) as client:
        batched = client.predict(frames)
        single = [client.predict([atoms])[0] for atoms in frames]
    for a, b in zip(batched, single, strict=True):
        assert a.energy == pytest.approx(b.energy, abs=1e-9)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-9)
        if b.stress is None:
            assert a.stress is None
        else:
            np.testing.assert_allclose(a.stress, b.stress, atol=1e-9)


def test_uma_tasks_served_by_the_fairchem_environment_alone(model_dir: Path, reference: dict) -> None:
    """The UMA-like model's omat and omol tasks, float64 and float32, from `.venv-fairchem/bin/mlipserve serve`."""
    port = free_port()
    command = [str(FAIRCHEM_MLIPSERVE), "serve", "--port", str(port), "--model-dir", str(model_dir)]
    for name in (UMA, UMA_OMOL, UMA_FLOAT32):
        command += ["--model", name]
    command += ["--device", "cpu", "--threads", "1", "--log-level", "warning"]
    server = subprocess.Popen(command, env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        with Client(f"http://127.0.0.1:{port}", model=UMA, progress=False) as client:
            client.wait_until_ready(timeout=300)
            frames = structures()
            assert_matches_reference(client.predict(frames), reference[UMA], frames, TOLERANCES)
            assert_matches_reference(client.predict(frames, model=UMA_OMOL), reference[UMA_OMOL], frames, TOLERANCES)
            single = client.predict(frames, model=UMA_FLOAT32)
            assert {r.model["dtype"] for r in single} == {"float32"}
            assert_matches_reference(single, reference[UMA], frames, FLOAT32_TOLERANCES)
    finally:
        server.terminate()
        server.wait(30)


def test_checkpoint_naming_a_foreign_class_is_refused(prepared: Path, tmp_path: Path) -> None:
    """A checkpoint whose config names a class outside fairchem-core is refused before hydra constructs anything;
    a multi-task (UMA) model needs ``options.task``, and one of its tasks."""
    tampered = prepared / "tampered.pt"  # the eSEN checkpoint, its backbone's class replaced by os.system
    common = {"family": "fairchem", "elements": ELEMENTS, "cutoff": CUTOFF}
    write_card(tmp_path, "tampered", tampered, **common)
    write_card(tmp_path, "no-task", prepared / "uma.pt", **common)
    write_card(tmp_path, "bad-task", prepared / "uma.pt", **common, options="{task: oc20}")
    script = (
        "import sys\n"
        "from mlipserve.models import CardError, ModelRegistry, load_model\n"
        "for name in sys.argv[2:]:\n"
        "    try:\n"
        "        load_model(ModelRegistry(sys.argv[1]), name, 'cpu')\n"
        "    except CardError as error:\n"
        "        print(name, '|', error)\n"
    )
    printed = in_fairchem_env("-c", script, str(tmp_path), "tampered", "no-task", "bad-task").stdout
    errors = dict(line.split(" | ", 1) for line in printed.splitlines() if " | " in line)
    assert "names 'os.system', which is not a fairchem-core class" in errors["tampered"]
    assert "set options.task in the card to one of ['omat', 'omol']" in errors["no-task"]
    assert "options.task='oc20' is not a task of the model" in errors["bad-task"]
