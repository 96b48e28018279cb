"""GRACE: served from its own environment (.venv-grace), equal to tensorpotential's own TPCalculator.

This process never imports tensorpotential or TensorFlow (they live in .venv-grace only). Small randomly
initialised GRACE models of tensorpotential's own presets, exported as SavedModels and packed into ``.tar.gz``
archives as the published models are, are built inside the environment by ``tests/grace_env_helper.py``: a
two-layer model (``GRACE_2LAYER_latest``, message passing) with float64 weights and a one-layer one
(``GRACE_1LAYER_latest``) with float32 weights. The same helper computes the reference numbers with
``TPCalculator``. The float64 model is served by ``.venv-grace/bin/mlipserve worker`` through Redis (the server
runs here), the float32 one by ``.venv-grace/bin/mlipserve serve``."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import read, write
from mlipserve.clients import Client
from mlipserve.server.config import ServerSettings

from .conftest import REPO, RunningServer, free_port, write_card
from .family_envs import require_environment, run_in_environment
from .redis_fixtures import wait_for_workers

GRACE_PYTHON = REPO / ".venv-grace" / "bin" / "python"
GRACE_MLIPSERVE = REPO / ".venv-grace" / "bin" / "mlipserve"
HELPER = REPO / "tests" / "grace_env_helper.py"
ELEMENTS = "H O Si Cu"
MODEL = "tiny-grace"
MODEL_FLOAT32 = "tiny-grace-float32"
TOLERANCES = (1e-6, 1e-6, 1e-6)  # eV/atom, eV/Å, eV/Å³, float64 against float64
TOLERANCES_FLOAT32 = (1e-5, 1e-4, 1e-5)  # as tests/test_sevennet_backend.py: packing changes float32 rounding
ENVIRONMENT = os.environ | {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}

require_environment("grace")


def in_grace_env(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the grace environment's Python, failing with its stderr."""
    return run_in_environment("grace", *args, timeout=timeout, environment=ENVIRONMENT)


def structures() -> list:
    """Built here, in no fixture: a rattled Si supercell, a Cu-O-Si-H cell, a strained triclinic Cu-Si cell, a
    water molecule and a Cu slab (periodic in x and y, 8 Å of vacuum)."""
    silicon = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    silicon.rattle(0.05, seed=11)
    mixed = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1)
    mixed.set_chemical_symbols(["Cu", "O", "Cu", "Si", "Cu", "H", "Cu", "Cu"])
    mixed.rattle(0.08, seed=12)
    triclinic = bulk("Cu", "fcc", a=3.7, cubic=True)
    triclinic.set_chemical_symbols(["Cu", "Si", "Cu", "Cu"])
    deformation = np.eye(3) + 0.06 * np.random.default_rng(13).standard_normal((3, 3))
    triclinic.set_cell(triclinic.cell.array @ deformation, scale_atoms=True)
    triclinic.rattle(0.05, seed=13)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = [True, True, False]
    slab.rattle(0.03, seed=14)
    # Through extxyz and back, so that the server gets exactly the positions the reference reads from the file.
    text = io.StringIO()
    write(text, [silicon, mixed, triclinic, molecule("H2O"), slab], format="extxyz")
    return read(io.StringIO(text.getvalue()), index=":", format="extxyz")


@pytest.fixture(scope="module")
def grace_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with the random GRACE model's archives (float64 and float32) and a card for each."""
    folder = tmp_path_factory.mktemp("grace-models")
    model, model32 = folder / "tiny-grace.tar.gz", folder / "tiny-grace-float32.tar.gz"
    in_grace_env(str(HELPER), "build", str(model), "--elements", *ELEMENTS.split(), "--also-float32", str(model32))
    write_card(folder, MODEL, model, family="grace", elements=ELEMENTS, cutoff=4.5)
    write_card(folder, MODEL_FLOAT32, model32, family="grace", elements=ELEMENTS, cutoff=4.5)
    return folder


@pytest.fixture(scope="module")
def reference(grace_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    """TPCalculator's energies, forces and stresses of :func:`structures`, for each model, one structure at a time."""
    folder = tmp_path_factory.mktemp("grace-reference")
    frames = folder / "frames.extxyz"
    write(frames, structures(), format="extxyz")
    outputs = {name: folder / f"{name}.npz" for name in (MODEL, MODEL_FLOAT32)}
    pairs = [str(item) for name, out in outputs.items() for item in (grace_model_dir / f"{name}.tar.gz", out)]
    in_grace_env(str(HELPER), "reference", str(frames), *pairs)
    return {name: dict(np.load(out)) for name, out in outputs.items()}


@pytest.fixture(scope="module")
def grace_server(redis_url: str, grace_model_dir: Path) -> Iterator[RunningServer]:
    """The server in this environment, a worker in the GRACE environment, joined by Redis."""
    settings = ServerSettings(port=free_port(), models=(MODEL,), model_dir=grace_model_dir, redis_url=redis_url)
    command = [str(GRACE_MLIPSERVE), "worker", "--model", MODEL, "--redis", redis_url]
    command += ["--model-dir", str(grace_model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
    worker = subprocess.Popen(command, env=ENVIRONMENT)
    try:
        with RunningServer(settings) as server:
            wait_for_workers(server.url, MODEL, 1, timeout=300)
            yield server
    finally:
        worker.terminate()
        worker.wait(30)


def assert_matches_reference(
    results: list, reference: dict[str, np.ndarray], frames: list, tolerances: tuple[float, float, float]
) -> dict[str, float]:
    """Compare served results with TPCalculator's; return the largest deviations."""
    offsets = np.concatenate([[0], np.cumsum(reference["n_atoms"])])
    worst = {"energy_per_atom": 0.0, "forces": 0.0, "stress": 0.0}
    for index, (result, atoms) in enumerate(zip(results, frames, strict=True)):
        n = len(atoms)
        worst["energy_per_atom"] = max(worst["energy_per_atom"], abs(result.energy - reference["energy"][index]) / n)
        forces = reference["forces"][offsets[index] : offsets[index + 1]]
        worst["forces"] = max(worst["forces"], float(np.abs(result.forces - forces).max()))
        if atoms.pbc.any():  # TPCalculator divides a slab's virial by the given cell's volume, as mlipserve does
            worst["stress"] = max(worst["stress"], float(np.abs(result.stress - reference["stress"][index]).max()))
        else:
            assert result.stress is None
    print(f"largest deviations from TPCalculator: {worst}")
    assert worst["energy_per_atom"] <= tolerances[0]
    assert worst["forces"] <= tolerances[1]
    assert worst["stress"] <= tolerances[2]
    return worst


def test_served_grace_equals_tpcalculator(grace_server: RunningServer, reference: dict) -> None:
    frames = structures()
    with Client(grace_server.url, model=MODEL, progress=False) as client:
        results = client.predict(frames)
    assert {r.model["dtype"] for r in results} == {"float64"}
    assert max(np.abs(r.forces).max() for r in results) > 1e-2  # the random model gives non-trivial forces
    assert max(np.abs(r.stress).max() for r in results if r.stress is not None) > 1e-4
    assert_matches_reference(results, reference[MODEL], frames, TOLERANCES)


def test_embedded_server_in_the_grace_environment(grace_model_dir: Path, reference: dict) -> None:
    port = free_port()
    command = [str(GRACE_MLIPSERVE), "serve", "--model", MODEL_FLOAT32, "--port", str(port)]
    command += ["--model-dir", str(grace_model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
    server = subprocess.Popen(command, env=ENVIRONMENT)
    try:
        with Client(f"http://127.0.0.1:{port}", model=MODEL_FLOAT32, progress=False) as client:
            client.wait_until_ready(timeout=300)
            frames = structures()
            results = client.predict(frames)
            assert {r.model["dtype"] for r in results} == {"float32"}
            assert_matches_reference(results, reference[MODEL_FLOAT32], frames, TOLERANCES_FLOAT32)
    finally:
        server.terminate()
        server.wait(30)


def test_archives_are_unpacked_safely(grace_model_dir: Path, tmp_path: Path) -> None:
    """An archive whose member leaves the unpacking folder, or that holds no SavedModel, is refused by name, and
    nothing is written outside."""
    escape = tmp_path / "escape.tar.gz"
    with tarfile.open(escape, "w:gz") as archive:
        payload = tmp_path / "payload"
        payload.write_text("written outside")
        archive.add(payload, arcname="../outside.txt")
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as archive:
        archive.add(tmp_path / "payload", arcname="model/readme.txt")
    write_card(tmp_path, "escape", escape, family="grace", elements=ELEMENTS, cutoff=4.5)
    write_card(tmp_path, "empty", empty, family="grace", elements=ELEMENTS, cutoff=4.5)
    script = (
        "import sys\n"
        "from mlipserve.models import CardError, ModelRegistry, load_model\n"
        "for name in ('escape', 'empty'):\n"
        "    try:\n"
        "        load_model(ModelRegistry(sys.argv[1]), name, 'cpu')\n"
        "    except CardError as error:\n"
        "        print(name, 'refused:', error)\n"
    )
    output = in_grace_env("-c", script, str(tmp_path)).stdout
    assert "escape refused:" in output and "outside" in output
    assert "empty refused:" in output and "holds 0" in output
    assert not (tmp_path.parent / "outside.txt").exists()
