"""ORB: served from its own environment (.venv-orb) through Redis, equal to orb-models' own ORBCalculator.

This process never imports orb-models (it lives in its own environment, see deploy/orb/constraints.txt). Small random
models of orb-models' own architectures are built and saved as ``.ckpt`` state dicts inside the ORB environment by
``tests/orb_env_helper.py``, which also computes the reference numbers with ``ORBCalculator``; the worker is
``.venv-orb/bin/mlipserve worker``, the server runs here.
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
from mlipserve.models import ModelRegistry
from mlipserve.server.config import ServerSettings

from .conftest import REPO, RunningServer, free_port, write_card
from .family_envs import require_environment, run_in_environment
from .redis_fixtures import wait_for_workers

ORB_PYTHON = REPO / ".venv-orb" / "bin" / "python"
ORB_MLIPSERVE = REPO / ".venv-orb" / "bin" / "mlipserve"
HELPER = REPO / "tests" / "orb_env_helper.py"
ELEMENTS = "H C N O Na Mg Al Si Cl Ti Zn"
#: The hyper-parameters of the helper's small models (``SMALL`` in tests/orb_env_helper.py), as card options.
CONSERVATIVE = "{architecture: orb-v3-conservative, max_num_neighbors: 20, latent_dim: 32, base_mlp_hidden_dim: 64, head_mlp_hidden_dim: 32, num_message_passing_steps: 2"  # noqa: E501
DIRECT_V3 = CONSERVATIVE.replace("orb-v3-conservative", "orb-v3-direct")
DIRECT_V2 = "{architecture: orb-v2, max_num_neighbors: 20, num_message_passing_steps: 2"
MODEL = "tiny-orb-v3"  # float64, conservative
MODEL_FLOAT32 = "tiny-orb-v3-float32"  # the same file, evaluated in float32
MODEL_DIRECT = "tiny-orb-v3-direct"  # float64, direct
MODEL_V2 = "tiny-orb-v2"  # float64, direct
TOLERANCES = (1e-6, 1e-6, 1e-6)  # eV/atom, eV/Å, eV/Å³, float64 against float64
FLOAT32_TOLERANCES = (1e-5, 1e-4, 1e-5)  # as for SevenNet's float32 models (tests/test_sevennet_backend.py)

require_environment("orb")


def in_orb_env(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the orb environment's Python, failing with its stderr."""
    return run_in_environment("orb", *args, timeout=timeout)


def structures() -> list[Atoms]:
    """Structures of no fixture: rattled rock salt, wurtzite and rutile cells, a triclinic Mg-Al-Si-O cell and a
    methane molecule (orb-models evaluates structures periodic along all axes or none)."""
    salt = bulk("NaCl", "rocksalt", a=5.64) * (2, 1, 1)
    salt.rattle(0.05, seed=11)
    zno = bulk("ZnO", "wurtzite", a=3.25, c=5.2)
    zno.rattle(0.04, seed=12)
    rutile = Atoms(
        "Ti2O4",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.3, 0.3, 0), (0.7, 0.7, 0), (0.8, 0.2, 0.5), (0.2, 0.8, 0.5)],
        cell=[4.59, 4.59, 2.96],
        pbc=True,
    )
    rutile.rattle(0.03, seed=13)
    # A triclinic cell: rock salt with Al and Si on some Mg sites, sheared by a random non-symmetric deformation.
    triclinic = bulk("MgO", "rocksalt", a=4.21, cubic=True)
    triclinic.set_chemical_symbols(["Mg", "O", "Al", "O", "Si", "O", "Mg", "O"])
    deformation = np.eye(3) + 0.08 * np.random.default_rng(14).standard_normal((3, 3))
    triclinic.set_cell(triclinic.cell.array @ deformation, scale_atoms=True)
    triclinic.rattle(0.05, seed=14)
    methane = molecule("CH4")
    methane.rattle(0.02, seed=15)
    # Through extxyz and back, so that the server gets exactly the positions the reference reads from the file.
    text = io.StringIO()
    write(text, [salt, zno, rutile, triclinic, methane], format="extxyz")
    return read(io.StringIO(text.getvalue()), index=":", format="extxyz")


def _card(folder: Path, name: str, model_file: Path, options: str) -> None:
    write_card(folder, name, model_file, family="orb", elements=ELEMENTS, cutoff=6.0, options=options)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random orb-v3 conservative and a random orb-v2 model, saved as state dicts, with ORBCalculator's
    energies, forces and stresses of :func:`structures` for each (float64), made in one run of the helper."""
    folder = tmp_path_factory.mktemp("orb-prepared")
    write(folder / "frames.extxyz", structures(), format="extxyz")
    in_orb_env(str(HELPER), "prepare", str(folder), str(folder / "frames.extxyz"))
    return folder


@pytest.fixture(scope="module")
def orb_model_dir(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with the two random models and their cards."""
    folder = tmp_path_factory.mktemp("orb-models")
    _card(folder, MODEL, prepared / "tiny-v3.ckpt", CONSERVATIVE + "}")
    _card(folder, MODEL_FLOAT32, prepared / "tiny-v3.ckpt", CONSERVATIVE + ", dtype: float32}")
    _card(folder, MODEL_DIRECT, prepared / "tiny-v3-direct.ckpt", DIRECT_V3 + "}")
    _card(folder, MODEL_V2, prepared / "tiny-v2.ckpt", DIRECT_V2 + "}")
    return folder


@pytest.fixture(scope="module")
def reference(prepared: Path) -> dict[str, np.ndarray]:
    """ORBCalculator's numbers for the orb-v3 conservative model."""
    return dict(np.load(prepared / "tiny-v3.npz"))


@pytest.fixture(scope="module")
def references_direct(prepared: Path) -> dict[str, dict[str, np.ndarray]]:
    """The same for the direct models (orb-v3 direct, orb-v2), by model name."""
    stems = {MODEL_DIRECT: "tiny-v3-direct", MODEL_V2: "tiny-v2"}
    return {name: dict(np.load(prepared / f"{stem}.npz")) for name, stem in stems.items()}


@pytest.fixture(scope="module")
def orb_server(redis_url: str, orb_model_dir: Path) -> Iterator[RunningServer]:
    """The server in this environment, a worker in the ORB environment, joined by Redis."""
    settings = ServerSettings(port=free_port(), models=(MODEL,), model_dir=orb_model_dir, redis_url=redis_url)
    command = [str(ORB_MLIPSERVE), "worker", "--model", MODEL, "--redis", redis_url, "--drain-timeout", "5"]
    command += ["--model-dir", str(orb_model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
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
    """Compare served results with ORBCalculator's; return the largest deviations."""
    offsets = np.concatenate([[0], np.cumsum(reference["n_atoms"])])
    worst = {"energy_per_atom": 0.0, "forces": 0.0, "stress": 0.0}
    for index, (result, atoms) in enumerate(zip(results, frames, strict=True)):
        n = len(atoms)
        worst["energy_per_atom"] = max(worst["energy_per_atom"], abs(result.energy - reference["energy"][index]) / n)
        forces = reference["forces"][offsets[index] : offsets[index + 1]]
        worst["forces"] = max(worst["forces"], float(np.abs(result.forces - forces).max()))
        if atoms.pbc.all():
            worst["stress"] = max(worst["stress"], float(np.abs(result.stress - reference["stress"][index]).max()))
        else:
            assert result.stress is None
    print(f"largest deviations from ORBCalculator: {worst}")
    assert worst["energy_per_atom"] <= tolerances[0]
    assert worst["forces"] <= tolerances[1]
    assert worst["stress"] <= tolerances[2]
    return worst


def test_served_orb_v3_equals_orb_calculator(orb_server: RunningServer, reference: dict[str, np.ndarray]) -> None:
    frames = structures()
    with Client(orb_server.url, model=MODEL, progress=False) as client:
        results = client.predict(frames)
    assert {r.model["dtype"] for r in results} == {"float64"}
    assert max(np.abs(r.forces).max() for r in results) > 1e-2  # the random model gives non-trivial forces
    assert max(np.abs(r.stress).max() for r in results if r.stress is not None) > 1e-4
    assert_matches_reference(results, reference, frames)


def test_mixed_batch_equals_one_by_one(orb_server: RunningServer) -> None:
    frames = structures()
    with Client(orb_server.url, model=MODEL, progress=False) as client:
        batched = client.predict(frames)
        single = [client.predict([atoms])[0] for atoms in frames]
    for a, b in zip(batched, single, strict=True):
        assert a.energy == pytest.approx(b.energy, abs=1e-9)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-9)
        if b.stress is None:
            assert a.stress is None
        else:
            np.testing.assert_allclose(a.stress, b.stress, atol=1e-9)


def test_slab_is_refused_with_the_reason(orb_server: RunningServer) -> None:
    slab = bulk("Al", "fcc", a=4.05, cubic=True)
    slab.center(vacuum=5.0, axis=2)
    slab.pbc = [True, True, False]
    request = {
        "model": MODEL,
        "structures": [
            {
                "numbers": slab.numbers.tolist(),
                "positions": slab.positions.tolist(),
                "cell": slab.cell.array.tolist(),
                "pbc": [True, True, False],
            }
        ],
    }
    response = httpx.post(f"{orb_server.url}/v1/predict", json=request, timeout=120)
    assert response.status_code == 200, response.text
    error = response.json()["results"][0]["error"]
    assert error["code"] == "malformed_structure" and "periodic along xy only" in error["message"], error


def test_embedded_server_in_the_orb_environment(
    orb_model_dir: Path, reference: dict[str, np.ndarray], references_direct: dict[str, dict[str, np.ndarray]]
) -> None:
    """``mlipserve serve`` in the ORB environment: the orb-v3 model in float32, and the direct models."""
    port = free_port()
    command = [str(ORB_MLIPSERVE), "serve", "--port", str(port)]
    for model in (MODEL_FLOAT32, MODEL_DIRECT, MODEL_V2):
        command += ["--model", model]
    command += ["--model-dir", str(orb_model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
    server = subprocess.Popen(command)
    try:
        with Client(f"http://127.0.0.1:{port}", model=MODEL_FLOAT32, progress=False) as client:
            client.wait_until_ready(timeout=300)
            frames = structures()
            results = client.predict(frames)
            assert {r.model["dtype"] for r in results} == {"float32"}
            assert_matches_reference(results, reference, frames, tolerances=FLOAT32_TOLERANCES)
            for model, expected in references_direct.items():
                direct = client.predict(frames, model=model)
                assert {r.model["dtype"] for r in direct} == {"float64"}
                assert max(np.abs(r.forces).max() for r in direct) > 1e-3
                assert_matches_reference(direct, expected, frames)
    finally:
        server.terminate()
        server.wait(30)


def test_card_must_fit_the_checkpoint(orb_model_dir: Path, tmp_path: Path) -> None:
    """A card that names another architecture, other hyper-parameters or no neighbour limit is refused at load."""
    v3 = orb_model_dir / "tiny-v3.ckpt"  # write_card copied it there
    _card(tmp_path, "as-direct", v3, CONSERVATIVE.replace("orb-v3-conservative", "orb-v3-direct") + "}")
    _card(tmp_path, "wider", v3, CONSERVATIVE.replace("latent_dim: 32", "latent_dim: 48") + "}")
    _card(tmp_path, "no-limit", v3, CONSERVATIVE.replace("max_num_neighbors: 20, ", "") + "}")
    _card(tmp_path, "charged", v3, CONSERVATIVE + ", has_charge_spin_cond: true}")
    script = (
        "import sys\n"
        "from mlipserve.models import ModelRegistry, load_model\n"
        "for name in sys.argv[2:]:\n"
        "    try:\n"
        "        load_model(ModelRegistry(sys.argv[1]), name, 'cpu')\n"
        "    except Exception as error:\n"
        "        print(name, type(error).__name__, str(error).replace(chr(10), ' '))\n"
    )
    lines = in_orb_env("-c", script, str(tmp_path), "as-direct", "wider", "no-limit", "charged").stdout.splitlines()
    said = {line.split()[0]: line for line in lines}
    assert "CardError" in said["as-direct"] and "not a orb-v3-direct checkpoint" in said["as-direct"]
    assert "CardError" in said["wider"] and "does not fit orb-v3-conservative" in said["wider"]
    assert "CardError" in said["no-limit"] and "max_num_neighbors must be a positive integer" in said["no-limit"]
    assert "CardError" in said["charged"] and "unknown options ['has_charge_spin_cond']" in said["charged"]


def test_builtin_orb_cards_wait_for_the_users_file(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    cards = [card for card in registry.cards() if card.family == "orb"]
    assert {card.name for card in cards} >= {"orb-v3-conservative-inf-omat", "orb-v3-conservative-20-omat"}
    for card in cards:
        assert not card.is_installed() and card.source_url.startswith("https://orbitalmaterials-public-models.")
        assert card.source_url.endswith("/" + card.checkpoint) and card.cutoff == 6.0 and not card.sha256
        assert card.options["architecture"] == "orb-v3-conservative"
        assert card.options["max_num_neighbors"] == (20 if "-20-" in card.name else 120)
