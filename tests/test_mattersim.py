"""MatterSim: served from its own environment (.venv-mattersim) through Redis, equal to mattersim's own
MatterSimCalculator.

This process never imports mattersim (its requirements, torchvision and torchaudio among them, stay out of the
main environment). A small random ``M3Gnet`` is built and saved with mattersim's ``Potential.save`` inside the
MatterSim environment by ``tests/mattersim_env_helper.py``, which also computes the reference numbers with
``MatterSimCalculator``, one structure at a time; the worker is ``.venv-mattersim/bin/mlipserve worker``, the server
runs here. MatterSim evaluates in float32: the tolerances are float32 ones.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.cell import Cell
from ase.io import read, write
from mlipserve.clients import Client
from mlipserve.models import CardError, ModelRegistry
from mlipserve.models.cards import file_sha256
from mlipserve.server.config import ServerSettings

from .conftest import REPO, RunningServer, free_port, write_card
from .family_envs import require_environment, run_in_environment
from .redis_fixtures import wait_for_workers

MATTERSIM_PYTHON = REPO / ".venv-mattersim" / "bin" / "python"
MATTERSIM_MLIPSERVE = REPO / ".venv-mattersim" / "bin" / "mlipserve"
HELPER = REPO / "tests" / "mattersim_env_helper.py"
ELEMENTS = "H C O Mg Al Si Ni Cu"
MODEL = "tiny-mattersim"
CUTOFF = 4.5
TOLERANCES = (1e-5, 1e-4, 1e-5)  # eV/atom, eV/Å, eV/Å³: float32, as for SevenNet

require_environment("mattersim")


def in_mattersim_env(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the mattersim environment's Python, failing with its stderr."""
    return run_in_environment("mattersim", *args, timeout=timeout)


def structures() -> list[Atoms]:
    """Built here, in no fixture: a rattled Si supercell, a rattled MgO cube, a triclinic Al-Ni-Cu cell, a Cu-Ni
    slab (periodic in x and y, its atoms inside its cell) and an ethanol molecule; then two descriptions that
    mattersim's own calculator gets wrong (see the backend's docstring): the triclinic crystal given by a
    left-handed cell (its first two vectors swapped), and the slab moved along its open axis beyond its cell."""
    silicon = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    silicon.rattle(0.08, seed=1)
    magnesia = bulk("MgO", "rocksalt", a=4.21, cubic=True)
    magnesia.rattle(0.08, seed=2)
    triclinic = Atoms(
        "AlNiCuAl",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        cell=Cell.fromcellpar([4.1, 4.4, 4.8, 78, 84, 101]),
        pbc=True,
    )
    triclinic.rattle(0.08, seed=3)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    slab.symbols[[1, 6]] = "Ni"
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = [True, True, False]
    slab.rattle(0.05, seed=4)
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=5)
    left_handed = triclinic.copy()
    left_handed.set_cell(triclinic.cell.array[[1, 0, 2]], scale_atoms=False)
    moved = slab.copy()
    # the cell's top face then lies between the two layers: mattersim would wrap the upper one down to z ≈ 0
    moved.positions[:, 2] += slab.cell[2, 2] - slab.positions[:, 2].mean()
    # Through extxyz and back, so that the server gets exactly the positions the reference reads from the file.
    text = io.StringIO()
    write(text, [silicon, magnesia, triclinic, slab, ethanol, left_handed, moved], format="extxyz")
    return read(io.StringIO(text.getvalue()), index=":", format="extxyz")


#: Indices in :func:`structures`: the five compared with MatterSimCalculator, and the two described differently.
COMPARED = slice(0, 5)
TRICLINIC, SLAB, LEFT_HANDED, MOVED_SLAB = 2, 3, 5, 6


@pytest.fixture(scope="module")
def mattersim_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with a random M3Gnet saved by mattersim, registered by a user card with its sha256, and
    ``reference.npz``: MatterSimCalculator's energies, forces and stresses of :func:`structures`, one at a time."""
    folder = tmp_path_factory.mktemp("mattersim-models")
    model_file, frames = folder / "tiny-mattersim.pth", folder / "frames.extxyz"
    write(frames, structures(), format="extxyz")
    command = [str(HELPER), "build", str(model_file), "--cutoff", str(CUTOFF)]
    in_mattersim_env(*command, "--reference", str(frames), str(folder / "reference.npz"))
    write_card(folder, MODEL, model_file, family="mattersim", elements=ELEMENTS, cutoff=CUTOFF)
    return folder


@pytest.fixture(scope="module")
def reference(mattersim_model_dir: Path) -> dict[str, np.ndarray]:
    return dict(np.load(mattersim_model_dir / "reference.npz"))


@pytest.fixture(scope="module")
def mattersim_server(redis_url: str, mattersim_model_dir: Path) -> Iterator[RunningServer]:
    """The server in this environment, a worker in the MatterSim environment, joined by Redis."""
    settings = ServerSettings(port=free_port(), models=(MODEL,), model_dir=mattersim_model_dir, redis_url=redis_url)
    command = [str(MATTERSIM_MLIPSERVE), "worker", "--model", MODEL, "--redis", redis_url]
    command += ["--model-dir", str(mattersim_model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
    worker = subprocess.Popen(command, env=os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    try:
        with RunningServer(settings) as server:
            wait_for_workers(server.url, MODEL, 1, timeout=300)
            yield server
    finally:
        worker.terminate()
        worker.wait(30)


@pytest.fixture(scope="module")
def served(mattersim_server: RunningServer) -> list:
    """Every structure of :func:`structures`, evaluated by the worker in one request."""
    with Client(mattersim_server.url, model=MODEL, progress=False) as client:
        return client.predict(structures())


def deviations(result, energy: float, forces: np.ndarray, stress: np.ndarray | None, n_atoms: int) -> np.ndarray:
    """|Δ energy| per atom, max |Δ force|, max |Δ stress| (0 without a stress) of ``result`` from the numbers."""
    worst_stress = 0.0 if stress is None else float(np.abs(result.stress - stress).max())
    return np.array([abs(result.energy - energy) / n_atoms, float(np.abs(result.forces - forces).max()), worst_stress])


def reference_of(reference: dict[str, np.ndarray], index: int) -> tuple[float, np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum(reference["n_atoms"])])
    forces = reference["forces"][offsets[index] : offsets[index + 1]]
    return float(reference["energy"][index]), forces, reference["stress"][index]


def test_served_mattersim_equals_mattersim_calculator(served: list, reference: dict[str, np.ndarray]) -> None:
    frames = structures()
    assert {r.model["dtype"] for r in served} == {"float32"}
    assert max(np.abs(r.forces).max() for r in served) > 5e-2  # the random model gives non-trivial forces
    worst = np.zeros(3)
    for index in range(len(frames))[COMPARED]:
        atoms, result = frames[index], served[index]
        energy, forces, stress = reference_of(reference, index)
        if atoms.pbc.any():
            assert result.stress is not None and np.abs(result.stress).max() > 1e-3
        else:
            assert result.stress is None
            stress = None
        worst = np.maximum(worst, deviations(result, energy, forces, stress, len(atoms)))
    print(f"largest deviations from MatterSimCalculator (energy/atom, forces, stress): {worst}")
    assert (worst <= TOLERANCES).all()


def test_mixed_batch_equals_one_by_one(mattersim_server: RunningServer, served: list) -> None:
    frames = structures()
    with Client(mattersim_server.url, model=MODEL, progress=False) as client:
        single = [client.predict([atoms])[0] for atoms in frames]
    for atoms, batched, alone in zip(frames, served, single, strict=True):
        assert (batched.stress is None) == (alone.stress is None)
        assert (deviations(batched, alone.energy, alone.forces, alone.stress, len(atoms)) <= TOLERANCES).all()


def test_left_handed_cell_and_atoms_beyond_an_open_axis(served: list, reference: dict[str, np.ndarray]) -> None:
    """The same crystal or slab, described differently, gets the same answer; MatterSimCalculator's would not."""
    frames = structures()
    for same, original in ((LEFT_HANDED, TRICLINIC), (MOVED_SLAB, SLAB)):
        expected = served[original]
        differences = deviations(served[same], expected.energy, expected.forces, expected.stress, len(frames[original]))
        assert (differences <= TOLERANCES).all(), (same, differences)
    # What the backend corrects: mattersim divides by the signed cell determinant, and wraps the slab's atoms
    # across its open axis into another structure.
    calculator_left, calculator_right = reference["stress"][LEFT_HANDED], reference["stress"][TRICLINIC]
    np.testing.assert_allclose(calculator_left, -calculator_right, atol=TOLERANCES[2])
    assert abs(reference["energy"][MOVED_SLAB] - reference["energy"][SLAB]) > 1e-2


def test_checkpoint_is_read_weights_only(mattersim_model_dir: Path, tmp_path: Path) -> None:
    """A checkpoint that would run code when unpickled is refused, even with its hash pinned, and nothing runs; one
    that lacks a learned weight is refused; an energy-only request builds no autograd graph and answers the energy
    of a full request."""
    marker = tmp_path / "unpickled"
    trap = tmp_path / "trap.pth"
    genuine = torch.load(mattersim_model_dir / "tiny-mattersim.pth", weights_only=True)  # plain data, as published
    lacking = tmp_path / "lacking.pth"
    torch.save(genuine | {"model": {k: v for k, v in genuine["model"].items() if k != "normalizer.scale"}}, lacking)
    write_card(tmp_path, "lacking", lacking, family="mattersim", elements=ELEMENTS, cutoff=CUTOFF)
    genuine["description"] = _WritesMarker(marker)
    torch.save(genuine, trap)
    write_card(tmp_path, "trap", trap, family="mattersim", elements=ELEMENTS, cutoff=CUTOFF)
    model_file = mattersim_model_dir / "tiny-mattersim.pth"
    write_card(tmp_path, MODEL, model_file, family="mattersim", elements=ELEMENTS, cutoff=CUTOFF)
    script = (
        "import sys, torch\n"
        "from ase.build import bulk\n"
        "from mlipserve.models import AtomicSystem, CardError, ModelRegistry, load_model\n"
        "registry = ModelRegistry(sys.argv[1])\n"
        "for name in ('trap', 'lacking'):\n"
        "    try:\n"
        "        load_model(registry, name, 'cpu')\n"
        "    except CardError as error:\n"
        "        print('refused', name, error)\n"
        "potential = load_model(registry, sys.argv[2], 'cpu')\n"
        "systems = [AtomicSystem.from_ase(bulk('Cu', 'fcc', a=3.6) * (2, 1, 1))]\n"
        "(full,) = potential.predict(systems)\n"
        "saved = []\n"
        "with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):\n"
        "    (alone,) = potential.predict(systems, ['energy'])\n"
        "print(alone.forces is None, alone.stress is None, len(saved), abs(alone.energy - full.energy))\n"
    )
    output = in_mattersim_env("-c", script, str(tmp_path), MODEL).stdout.splitlines()
    assert any(line.startswith("refused trap") and "holds more than tensors and plain data" in line for line in output)
    assert any(line.startswith("refused lacking") and "lacks 1 of the network's weights" in line for line in output)
    assert not marker.exists()
    forces_none, stress_none, saved, difference = output[-1].split()
    assert forces_none == stress_none == "True" and saved == "0"
    assert float(difference) <= 1e-9


class _WritesMarker:
    """A pickle that creates a file when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_builtin_cards_say_where_to_download_and_pin(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    for name in ("mattersim-v1.0.0-1M", "mattersim-v1.0.0-5M"):
        card = registry.card(name)
        assert card.family == "mattersim" and card.cutoff == 5.0 and len(card.elements) == 89
        assert not card.is_installed() and card.source_url.endswith(f"/pretrained_models/{name}.pth")
        target = tmp_path / f"{name}.pth"
        with pytest.raises(CardError, match=rf"download {card.source_url} and save it as {target}"):
            card.verified_checkpoint()
    target = tmp_path / "mattersim-v1.0.0-1M.pth"
    target.write_bytes(b"not checked by anyone")
    with pytest.raises(CardError, match=r"publish no sha256.*pin it with: sha256sum"):
        ModelRegistry(tmp_path).card("mattersim-v1.0.0-1M").verified_checkpoint()
    (tmp_path / "mattersim-v1.0.0-1M.pth.sha256").write_text(f"{file_sha256(target)}  {target.name}\n")
    assert ModelRegistry(tmp_path).card("mattersim-v1.0.0-1M").verified_checkpoint() == target.resolve()
