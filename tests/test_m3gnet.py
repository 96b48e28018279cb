"""M3GNet: served from its own environment (.venv-m3gnet), equal to matgl's own PESCalculator.

This process never imports matgl. A small random M3GNet ``Potential`` is built and saved (``model.pt``,
``state.pt``, ``model.json``) inside the M3GNet environment by ``tests/m3gnet_env_helper.py``, which also computes the
reference numbers with ``PESCalculator``; the worker is ``.venv-m3gnet/bin/mlipserve worker``, the server runs here.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read, write
from mlipserve.clients import Client
from mlipserve.models import CardError, ModelRegistry
from mlipserve.models.cards import file_sha256
from mlipserve.server.config import ServerSettings

from .conftest import REPO, RunningServer, free_port
from .family_envs import require_environment, run_in_environment
from .redis_fixtures import wait_for_workers

M3GNET_PYTHON = REPO / ".venv-m3gnet" / "bin" / "python"
M3GNET_MLIPSERVE = REPO / ".venv-m3gnet" / "bin" / "mlipserve"
HELPER = REPO / "tests" / "m3gnet_env_helper.py"
ELEMENTS = "H Li O Si Cu"
CUTOFF = 4.0
MODEL = "tiny-m3gnet"
MODEL_FLOAT32 = "tiny-m3gnet-float32"
TOLERANCES = {"float64": (1e-6, 1e-6, 1e-6), "float32": (1e-5, 1e-4, 1e-5)}  # eV/atom, eV/Å, eV/Å³

require_environment("m3gnet")


def in_m3gnet_env(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the m3gnet environment's Python, failing with its stderr."""
    return run_in_environment("m3gnet", *args, timeout=timeout, environment=os.environ)


def structures() -> list[Atoms]:
    """A rattled Si supercell, a triclinic Li-Si-O cell, a water molecule and a Cu slab (periodic in x, y, with more
    vacuum than the cutoff); none of them is a fixture."""
    silicon = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    silicon.rattle(0.05, seed=1)
    triclinic = Atoms(
        "LiOSiO",
        scaled_positions=[[0, 0, 0], [0.3, 0.2, 0.1], [0.5, 0.55, 0.45], [0.8, 0.7, 0.9]],
        cell=[[4.1, 0, 0], [0.9, 4.4, 0], [0.7, 1.1, 4.7]],
        pbc=True,
    )
    triclinic.rattle(0.03, seed=2)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    slab.center(vacuum=5.0, axis=2)
    slab.pbc = [True, True, False]
    slab.rattle(0.03, seed=4)
    # Through extxyz and back, so that the server gets exactly the positions the reference reads from the file.
    text = io.StringIO()
    write(text, [silicon, triclinic, molecule("H2O"), slab], format="extxyz")
    return read(io.StringIO(text.getvalue()), index=":", format="extxyz")


def write_m3gnet_card(model_dir: Path, name: str, folder: str) -> None:
    """A user card for the matgl model in ``model_dir/folder``: state.pt is the checkpoint, model.pt is pinned in
    the options."""
    state, init_args = model_dir / folder / "state.pt", model_dir / folder / "model.pt"
    (model_dir / f"{name}.yaml").write_text(
        f"name: {name}\nfamily: m3gnet\nversion: test\ncheckpoint: {folder}/state.pt\n"
        f"sha256: {file_sha256(state)}\nlicense: MIT\nelements: {ELEMENTS}\ncutoff: {CUTOFF}\n"
        f"options: {{init_args_sha256: {file_sha256(init_args)}}}\n"
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A model directory with a random M3GNet saved by matgl in float64 and float32, each with its card, and
    PESCalculator's energies, forces and stresses of :func:`structures` per dtype (one structure at a time)."""
    folder = tmp_path_factory.mktemp("m3gnet-models")
    frames, out = folder / "frames.extxyz", folder / "reference.npz"
    write(frames, structures(), format="extxyz")
    command = [str(HELPER), "build", str(folder), "--elements", *ELEMENTS.split(), "--cutoff", str(CUTOFF)]
    in_m3gnet_env(*command, "--reference", str(frames), str(out))
    write_m3gnet_card(folder, MODEL, "float64")
    write_m3gnet_card(folder, MODEL_FLOAT32, "float32")
    return folder, dict(np.load(out))


@pytest.fixture(scope="module")
def m3gnet_model_dir(built: tuple[Path, dict[str, np.ndarray]]) -> Path:
    return built[0]


@pytest.fixture(scope="module")
def reference(built: tuple[Path, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return built[1]


@pytest.fixture(scope="module")
def m3gnet_server(redis_url: str, m3gnet_model_dir: Path) -> Iterator[RunningServer]:
    """The server in this environment, a worker in the M3GNet environment, joined by Redis."""
    settings = ServerSettings(port=free_port(), models=(MODEL,), model_dir=m3gnet_model_dir, redis_url=redis_url)
    command = [str(M3GNET_MLIPSERVE), "worker", "--model", MODEL, "--redis", redis_url]
    command += ["--model-dir", str(m3gnet_model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
    worker = subprocess.Popen(command, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        with RunningServer(settings) as server:
            wait_for_workers(server.url, MODEL, 1, timeout=300)
            yield server
    finally:
        worker.terminate()
        worker.wait(30)


def assert_matches_reference(results: list, reference: dict[str, np.ndarray], dtype: str) -> dict[str, float]:
    """Compare served results with PESCalculator's; return the largest deviations."""
    frames = structures()
    offsets = np.concatenate([[0], np.cumsum(reference["n_atoms"])])
    worst = {"energy_per_atom": 0.0, "forces": 0.0, "stress": 0.0}
    for index, (result, atoms) in enumerate(zip(results, frames, strict=True)):
        energy = reference[f"{dtype}/energy"][index]
        worst["energy_per_atom"] = max(worst["energy_per_atom"], abs(result.energy - energy) / len(atoms))
        forces = reference[f"{dtype}/forces"][offsets[index] : offsets[index + 1]]
        worst["forces"] = max(worst["forces"], float(np.abs(result.forces - forces).max()))
        if atoms.pbc.any():
            stress = reference[f"{dtype}/stress"][index]
            worst["stress"] = max(worst["stress"], float(np.abs(result.stress - stress).max()))
        else:
            assert result.stress is None
    print(f"largest deviations from PESCalculator ({dtype}): {worst}")
    tolerances = TOLERANCES[dtype]
    assert worst["energy_per_atom"] <= tolerances[0]
    assert worst["forces"] <= tolerances[1]
    assert worst["stress"] <= tolerances[2]
    return worst


def test_served_m3gnet_equals_pes_calculator(m3gnet_server: RunningServer, reference: dict[str, np.ndarray]) -> None:
    with Client(m3gnet_server.url, model=MODEL, progress=False) as client:
        results = client.predict(structures())
    assert {r.model["dtype"] for r in results} == {"float64"}
    assert max(np.abs(r.forces).max() for r in results) > 1e-2  # the random model gives non-trivial forces
    assert max(np.abs(r.stress).max() for r in results if r.stress is not None) > 1e-4
    assert_matches_reference(results, reference, "float64")


def test_mixed_batch_equals_one_by_one(m3gnet_server: RunningServer) -> None:
    frames = structures()
    with Client(m3gnet_server.url, model=MODEL, progress=False) as client:
        batched = client.predict(frames)
        single = [client.predict([atoms])[0] for atoms in frames]
        energy_only = client.predict(frames, properties=["energy"])
    for a, b, c in zip(batched, single, energy_only, strict=True):
        assert a.energy == pytest.approx(b.energy, abs=1e-9) and c.energy == pytest.approx(a.energy, abs=1e-9)
        assert c.forces is None
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-9)
        if b.stress is None:
            assert a.stress is None
        else:
            np.testing.assert_allclose(a.stress, b.stress, atol=1e-9)


def test_embedded_server_in_the_m3gnet_environment(m3gnet_model_dir: Path, reference: dict[str, np.ndarray]) -> None:
    port = free_port()
    command = [str(M3GNET_MLIPSERVE), "serve", "--model", MODEL_FLOAT32, "--port", str(port)]
    command += ["--model-dir", str(m3gnet_model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
    server = subprocess.Popen(command)
    try:
        with Client(f"http://127.0.0.1:{port}", model=MODEL_FLOAT32, progress=False) as client:
            client.wait_until_ready(timeout=300)
            results = client.predict(structures())
            assert {r.model["dtype"] for r in results} == {"float32"}
            assert_matches_reference(results, reference, "float32")
            outside = client.predict([bulk("Au", "fcc", a=4.08)], errors="return")[0]
            assert outside.error is not None and outside.error.code == "element_not_covered"
    finally:
        server.terminate()
        server.wait(30)


def test_builtin_cards_say_what_to_download(tmp_path: Path) -> None:
    card = ModelRegistry(tmp_path).card("m3gnet-matpes-pbe-2025.2")
    assert card.family == "m3gnet" and not card.is_installed()
    assert card.source_url == "https://huggingface.co/materialyze/M3GNet-PES-MatPES-PBE-2025.2"
    target = tmp_path / "M3GNet-PES-MatPES-PBE-2025.2" / "state.pt"
    with pytest.raises(CardError, match=rf"download {card.source_url} and save it as {target}"):
        card.verified_checkpoint()
    assert ModelRegistry(tmp_path).card("m3gnet-matpes-r2scan-2025.2").cutoff == 5.0


def test_both_files_must_be_pinned(m3gnet_model_dir: Path, tmp_path: Path) -> None:
    """A built-in card's state.pt pinned, its model.pt not: loading names the pin to write."""
    folder = tmp_path / "M3GNet-PES-MatPES-PBE-2025.2"
    folder.mkdir()
    for name in ("state.pt", "model.pt"):
        (folder / name).write_bytes((m3gnet_model_dir / "float32" / name).read_bytes())
    (folder / "state.pt.sha256").write_text(f"{file_sha256(folder / 'state.pt')}  state.pt\n")
    # One process (importing matgl takes seconds): refused while model.pt is unpinned; once pinned, the card is
    # checked against the model (the random one covers other elements than the card lists).
    script = (
        "import sys\nfrom pathlib import Path\nfrom mlipserve.models import ModelRegistry, load_model\n"
        "from mlipserve.models.cards import file_sha256\n"
        "def attempt():\n"
        "    try:\n        load_model(ModelRegistry(sys.argv[1]), 'm3gnet-matpes-pbe-2025.2', 'cpu')\n"
        "    except Exception as error:\n        print(type(error).__name__, error)\n"
        "attempt()\nmodel = Path(sys.argv[2])\n"
        "model.with_name('model.pt.sha256').write_text(file_sha256(model) + '  model.pt\\n')\nattempt()\n"
    )
    refused, checked = in_m3gnet_env("-c", script, str(tmp_path), str(folder / "model.pt")).stdout.splitlines()[-2:]
    assert "publish no sha256 for model.pt" in refused and f"{folder / 'model.pt.sha256'}" in refused
    assert checked.startswith("CardError") and "only in the card" in checked


def test_models_endpoint_lists_m3gnet_cards(m3gnet_server: RunningServer) -> None:
    models = {m["name"]: m for m in httpx.get(f"{m3gnet_server.url}/v1/models").json()["models"]}
    assert models[MODEL]["installed"] and models[MODEL]["workers"]
    assert models["m3gnet-matpes-pbe-2025.2"]["installed"] is False
