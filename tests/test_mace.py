"""MACE: served from its own environment (.venv-mace) through Redis, equal to mace's own MACECalculator.

This process never imports mace (it cannot: mace-torch pins e3nn 0.4.4, the main environment has sevenn's newer
e3nn). A small random ``ScaleShiftMACE`` is built and saved as a ``.model`` file inside the MACE environment by
``tests/mace_env_helper.py``, which also computes the reference numbers with ``MACECalculator``; the worker is
``.venv-mace/bin/mlipserve worker``, the server runs here.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.io import read, write
from mlipserve.clients import Client
from mlipserve.models import CardError, ModelRegistry
from mlipserve.models.cards import file_sha256
from mlipserve.server.config import ServerSettings

from .conftest import REPO, RunningServer, dataset_sample, free_port, write_card
from .family_envs import require_environment, run_in_environment
from .redis_fixtures import wait_for_workers

MACE_PYTHON = REPO / ".venv-mace" / "bin" / "python"
MACE_MLIPSERVE = REPO / ".venv-mace" / "bin" / "mlipserve"
HELPER = REPO / "tests" / "mace_env_helper.py"
ELEMENTS = "H O Li Si Ni Cu Ge Mo Hf"
MODEL = "tiny-mace"
MODEL_FLOAT32 = "tiny-mace-float32"
TOLERANCES = (1e-6, 1e-6, 1e-6)  # eV/atom, eV/Å, eV/Å³, float64 against float64

require_environment("mace")


def in_mace_env(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the mace environment's Python, failing with its stderr."""
    return run_in_environment("mace", *args, timeout=timeout, environment=os.environ)


def structures() -> list:
    """Crystals from the DFT fixtures, a rattled Cu supercell, a water molecule and a Cu slab (periodic in x, y)."""
    frames = dataset_sample(per_file=1, max_atoms=40)
    copper = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    copper.rattle(0.05, seed=3)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = [True, True, False]
    slab.rattle(0.03, seed=4)
    # Through extxyz and back, so that the server gets exactly the positions the reference reads from the file.
    text = io.StringIO()
    write(text, [*frames, copper, molecule("H2O"), slab], format="extxyz")
    return read(io.StringIO(text.getvalue()), index=":", format="extxyz")


@pytest.fixture(scope="module")
def mace_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with a random ScaleShiftMACE saved by mace-torch, registered by a float64 card."""
    folder = tmp_path_factory.mktemp("mace-models")
    model_file = folder / "tiny.model"
    in_mace_env(str(HELPER), "build", str(model_file), "--elements", *ELEMENTS.split(), "--cutoff", "4.5")
    write_card(folder, MODEL, model_file, family="mace", elements=ELEMENTS, cutoff=4.5, options="{dtype: float64}")
    write_card(folder, MODEL_FLOAT32, model_file, family="mace", elements=ELEMENTS, cutoff=4.5)  # float32 by default
    return folder


@pytest.fixture(scope="module")
def reference(mace_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """MACECalculator's energies, forces and stresses of :func:`structures`, one structure at a time."""
    folder = tmp_path_factory.mktemp("mace-reference")
    frames, out = folder / "frames.extxyz", folder / "reference.npz"
    write(frames, structures(), format="extxyz")
    in_mace_env(str(HELPER), "reference", str(mace_model_dir / "tiny.model"), str(frames), str(out))
    return dict(np.load(out))


@pytest.fixture(scope="module")
def mace_server(redis_url: str, mace_model_dir: Path) -> Iterator[RunningServer]:
    """The server in this environment, a worker in the MACE environment, joined by Redis."""
    settings = ServerSettings(port=free_port(), models=(MODEL,), model_dir=mace_model_dir, redis_url=redis_url)
    command = [str(MACE_MLIPSERVE), "worker", "--model", MODEL, "--redis", redis_url]
    command += ["--model-dir", str(mace_model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
    worker = subprocess.Popen(command, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        with RunningServer(settings) as server:
            wait_for_workers(server.url, MODEL, 1, timeout=300)
            yield server
    finally:
        worker.terminate()
        worker.wait(30)


def assert_matches_reference(
    results: list, reference: dict[str, np.ndarray], frames: list, tolerances: tuple[float, float, float] = TOLERANCES
) -> dict[str, float]:
    """Compare served results with MACECalculator's; return the largest deviations."""
    offsets = np.concatenate([[0], np.cumsum(reference["n_atoms"])])
    worst = {"energy_per_atom": 0.0, "forces": 0.0, "stress": 0.0}
    for index, (result, atoms) in enumerate(zip(results, frames, strict=True)):
        n = len(atoms)
        worst["energy_per_atom"] = max(worst["energy_per_atom"], abs(result.energy - reference["energy"][index]) / n)
        forces = reference["forces"][offsets[index] : offsets[index + 1]]
        worst["forces"] = max(worst["forces"], float(np.abs(result.forces - forces).max()))
        if atoms.pbc.all():
            worst["stress"] = max(worst["stress"], float(np.abs(result.stress - reference["stress"][index]).max()))
        elif atoms.pbc.any():
            # MACECalculator divides a slab's virial by the volume of its own enlarged cell; mlipserve by the
            # volume of the given cell, as ASE does. The virials must agree.
            virial = result.stress * atoms.get_volume()
            expected = reference["stress"][index] * reference["stress_volume"][index]
            worst["stress"] = max(worst["stress"], float(np.abs(virial - expected).max()) / atoms.get_volume())
        else:
            assert result.stress is None
    print(f"largest deviations from MACECalculator: {worst}")
    assert worst["energy_per_atom"] <= tolerances[0]
    assert worst["forces"] <= tolerances[1]
    assert worst["stress"] <= tolerances[2]
    return worst


def test_served_mace_equals_mace_calculator(mace_server: RunningServer, reference: dict[str, np.ndarray]) -> None:
    frames = structures()
    with Client(mace_server.url, model=MODEL, progress=False) as client:
        results = client.predict(frames)
    assert {r.model["dtype"] for r in results} == {"float64"}
    assert max(np.abs(r.forces).max() for r in results) > 1e-2  # the random model gives non-trivial forces
    assert_matches_reference(results, reference, frames)


def test_mixed_batch_equals_one_by_one(mace_server: RunningServer) -> None:
    frames = structures()
    with Client(mace_server.url, model=MODEL, progress=False) as client:
        batched = client.predict(frames)
        single = [client.predict([atoms])[0] for atoms in frames]
    for a, b in zip(batched, single, strict=True):
        assert a.energy == pytest.approx(b.energy, abs=1e-9)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-9)
        if b.stress is None:
            assert a.stress is None
        else:
            np.testing.assert_allclose(a.stress, b.stress, atol=1e-9)


def test_embedded_server_in_the_mace_environment(mace_model_dir: Path, reference: dict[str, np.ndarray]) -> None:
    port = free_port()
    command = [str(MACE_MLIPSERVE), "serve", "--model", MODEL, "--model", MODEL_FLOAT32, "--port", str(port)]
    command += ["--model-dir", str(mace_model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
    server = subprocess.Popen(command)
    try:
        with Client(f"http://127.0.0.1:{port}", model=MODEL, progress=False) as client:
            client.wait_until_ready(timeout=300)
            frames = structures()
            assert_matches_reference(client.predict(frames), reference, frames)
            single = client.predict(frames, model=MODEL_FLOAT32)
            assert {r.model["dtype"] for r in single} == {"float32"}
            assert_matches_reference(single, reference, frames, tolerances=(1e-5, 1e-4, 1e-5))
    finally:
        server.terminate()
        server.wait(30)


def test_missing_builtin_file_says_what_to_put_where(tmp_path: Path) -> None:
    card = ModelRegistry(tmp_path).card("mace-mp-0-medium")
    assert not card.is_installed() and card.source_url.startswith("https://")
    target = tmp_path / "2023-12-03-mace-128-L1_epoch-199.model"
    with pytest.raises(CardError, match=rf"download {card.source_url} and save it as {target}"):
        card.verified_checkpoint()
    command = [sys.executable, "-m", "mlipserve.server.cli", "models", "--model-dir", str(tmp_path)]
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows["mace-mp-0-medium"][3] == "no" and rows["mace-mpa-0-medium"][3] == "no"


def test_unpublished_hash_must_be_pinned(tmp_path: Path) -> None:
    target = tmp_path / "mace-mpa-0-medium.model"
    target.write_bytes(b"not checked by anyone")
    with pytest.raises(CardError, match=r"publish no sha256.*pin it with: sha256sum"):
        ModelRegistry(tmp_path).card("mace-mpa-0-medium").verified_checkpoint()
    (tmp_path / "mace-mpa-0-medium.model.sha256").write_text(f"{file_sha256(target)}  {target.name}\n")
    card = ModelRegistry(tmp_path).card("mace-mpa-0-medium")
    assert card.is_installed() and card.verified_checkpoint() == target.resolve()
    target.write_bytes(b"swapped after pinning")
    with pytest.raises(CardError, match="refusing to load"):
        ModelRegistry(tmp_path).card("mace-mpa-0-medium").verified_checkpoint()


class _WritesMarker:
    """A pickle that creates a file when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_wrong_hash_is_refused_before_unpickling(mace_model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    trap = tmp_path / "trap.model"
    torch.save(_WritesMarker(marker), trap)
    tampered = tmp_path / "tiny.model"
    tampered.write_bytes(trap.read_bytes())
    # The card carries the hash of the genuine model; the file in the model directory is the trap.
    write_card(tmp_path, "tampered", tampered, family="mace", elements=ELEMENTS, cutoff=4.5)
    card = tmp_path / "tampered.yaml"
    genuine = file_sha256(mace_model_dir / "tiny.model")
    card.write_text(card.read_text().replace(file_sha256(tampered), genuine))
    load = "import sys; from mlipserve.models import ModelRegistry, load_model; load_model(ModelRegistry(sys.argv[1]), sys.argv[2])"  # noqa: E501
    command = [str(MACE_PYTHON), "-c", load, str(tmp_path)]
    refused = subprocess.run([*command, "tampered"], capture_output=True, text=True)
    assert refused.returncode != 0 and "refusing to load" in refused.stderr
    assert not marker.exists()
    # Control: with the trap's own hash on the card, loading does unpickle it (and then refuses the non-model).
    write_card(tmp_path, "trusted-trap", tampered, family="mace", elements=ELEMENTS, cutoff=4.5)
    loaded = subprocess.run([*command, "trusted-trap"], capture_output=True, text=True)
    assert loaded.returncode != 0 and "not a pickled MACE model" in loaded.stderr
    assert marker.exists()


def test_weights_only_stays_on_after_loading_mace(mace_model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    trap = tmp_path / "trap.pt"
    torch.save(_WritesMarker(marker), trap)
    script = (
        "import os, sys, torch\n"
        "from mlipserve.models import ModelRegistry, load_model\n"
        "potential = load_model(ModelRegistry(sys.argv[1]), sys.argv[2], 'cpu')\n"
        "assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ\n"
        "try:\n"
        "    torch.load(sys.argv[3])\n"
        "except Exception as error:\n"
        "    print('refused', type(error).__name__)\n"
    )
    result = in_mace_env("-c", script, str(mace_model_dir), MODEL, str(trap))
    assert "refused UnpicklingError" in result.stdout
    assert not marker.exists()


def test_energy_only_builds_no_autograd_graph(mace_model_dir: Path) -> None:
    script = (
        "import sys, torch\n"
        "from ase.build import bulk\n"
        "from mlipserve.models import AtomicSystem, ModelRegistry, load_model\n"
        "potential = load_model(ModelRegistry(sys.argv[1]), sys.argv[2], 'cpu')\n"
        "systems = [AtomicSystem.from_ase(bulk('Cu', 'fcc', a=3.6) * (2, 1, 1))]\n"
        "(full,) = potential.predict(systems)\n"
        "saved = []\n"
        "with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):\n"
        "    (alone,) = potential.predict(systems, ['energy'])\n"
        "print(alone.forces is None, alone.stress is None, len(saved), abs(alone.energy - full.energy))\n"
    )
    last_line = in_mace_env("-c", script, str(mace_model_dir), MODEL).stdout.splitlines()[-1]
    forces_none, stress_none, saved, difference = last_line.split()
    assert forces_none == stress_none == "True" and saved == "0"
    assert float(difference) <= 1e-9


def test_models_endpoint_lists_mace_cards(mace_server: RunningServer) -> None:
    models = {m["name"]: m for m in httpx.get(f"{mace_server.url}/v1/models").json()["models"]}
    assert models[MODEL]["installed"] and models[MODEL]["workers"]
    assert models["mace-mp-0-medium"]["installed"] is False
    assert models["mace-mp-0-medium"]["source_url"].endswith("2023-12-03-mace-128-L1_epoch-199.model")


def test_relaxation_through_the_mace_worker(mace_server: RunningServer) -> None:
    copper = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    copper.rattle(0.15, seed=5)
    request = {
        "model": MODEL,
        "structures": [
            {
                "numbers": copper.numbers.tolist(),
                "positions": copper.positions.tolist(),
                "cell": copper.cell.array.tolist(),
                "pbc": [True] * 3,
            }
        ],
        "fmax": 1e-3,  # the random model's forces are small: ask for less than it starts with
        "max_steps": 40,
        "relax_cell": False,
    }
    response = httpx.post(f"{mace_server.url}/v1/relax", json=request, timeout=600)
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["steps"] > 0 and result["stop_reason"] in ("converged", "max_steps")
    with Client(mace_server.url, model=MODEL, progress=False) as client:
        start = client.predict([copper])[0]
        final = result["structure"]
        at_end = client.predict(
            [{"numbers": final["numbers"], "positions": final["positions"], "cell": final["cell"], "pbc": final["pbc"]}]
        )[0]
    assert result["energy"] < start.energy
    assert result["energy"] == pytest.approx(at_end.energy, abs=1e-9)
    assert result["fmax"] == pytest.approx(float(np.linalg.norm(at_end.forces, axis=1).max()), abs=1e-9)
