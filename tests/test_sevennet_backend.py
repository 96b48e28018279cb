"""The SevenNet backend against sevenn's own ASE calculator, with real weights.

The built-in 7net-0 card and a user card for SevenNet's small test checkpoint are loaded through the registry and
evaluated as one batch; every structure must match ``SevenNetCalculator`` on the same weights.
"""

from __future__ import annotations

import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sevenn")

import ase.build  # noqa: E402
import ase.io  # noqa: E402
from ase import Atoms  # noqa: E402
from mlipserve.models.cards import CardError, file_sha256  # noqa: E402
from mlipserve.models.loading import load_model  # noqa: E402
from mlipserve.models.potential import Potential, Prediction, StructureRejected  # noqa: E402
from mlipserve.models.registry import ModelRegistry  # noqa: E402
from mlipserve.models.system import AtomicSystem  # noqa: E402
from sevenn.calculator import SevenNetCalculator  # noqa: E402
from sevenn.checkpoint import SevenNetCheckpoint  # noqa: E402

from .conftest import torch_threads  # noqa: E402
from .toy_potential import saved_for_backward  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
DATASETS = FIXTURES / "datasets"
CP_0 = FIXTURES / "sevennet" / "tests" / "cp_0.pth"
HFO2 = FIXTURES / "sevennet" / "tests" / "hfo2.extxyz"

#: Frames taken from each dataset file: the smallest ones.
FRAMES_PER_FILE = 2
E_TOL = 1e-5  # eV/atom
F_TOL = 1e-4  # eV/Å
S_TOL = 1e-5  # eV/Å³

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")


def read_frames(path: Path) -> list[Atoms]:
    # format must be explicit: ASE guesses "vasp-out" for a file name containing "OUTCAR"
    return ase.io.read(path, index=":", format="extxyz")


def sample_structures() -> list[tuple[str, Atoms]]:
    """The smallest frames of the HfO2 file and of every mlearn file, labelled ``file[index]``."""
    files = [DATASETS / "SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz", *sorted(DATASETS.glob("mlearn_*.extxyz"))]
    sample = []
    for path in files:
        frames = read_frames(path)
        smallest = sorted(range(len(frames)), key=lambda i: (len(frames[i]), i))[:FRAMES_PER_FILE]
        sample += [(f"{path.name.split('.')[0]}[{i}]", frames[i]) for i in sorted(smallest)]
    return sample


def calculator(model: str | Path) -> SevenNetCalculator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tensor product accelerator", torch.jit.script deprecation
        return SevenNetCalculator(model=str(model), device="cpu")


def reference(calc: SevenNetCalculator, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


def assert_matches(label: str, atoms: Atoms, prediction: Prediction, energy: float, forces, stress) -> None:
    n = len(atoms)
    assert abs(prediction.energy - energy) / n <= E_TOL, f"{label}: energy {prediction.energy} vs {energy}"
    assert prediction.forces is not None and prediction.forces.shape == (n, 3)
    assert prediction.forces.dtype == np.float64
    np.testing.assert_allclose(prediction.forces, forces, rtol=0, atol=F_TOL, err_msg=label)
    if atoms.pbc.any():
        assert prediction.stress is not None and prediction.stress.shape == (3, 3)
        np.testing.assert_allclose(prediction.stress, stress, rtol=0, atol=S_TOL, err_msg=label)
    else:
        assert prediction.stress is None, label


def write_card(folder: Path, checkpoint: str, sha256: str, elements: str, cutoff: float, name: str) -> None:
    (folder / f"{name}.yaml").write_text(
        f"name: {name}\nfamily: sevennet\nversion: '0.10.0-test'\ncheckpoint: {checkpoint}\nsha256: {sha256}\n"
        f"license: MIT\nelements: {elements}\ncutoff: {cutoff}\n"
    )


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    """Two torch threads, as a worker on this machine runs."""
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def sevennet_0(tmp_path_factory) -> Potential:
    return load_model(ModelRegistry(tmp_path_factory.mktemp("models")), "7net-0", "cpu")


@pytest.fixture(scope="module")
def sevennet_0_calc() -> SevenNetCalculator:
    return calculator("7net-0")


@pytest.fixture(scope="module")
def cp0_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user_models")
    shutil.copy(CP_0, folder / "cp_0.pth")
    cutoff = SevenNetCheckpoint(str(CP_0)).config["cutoff"]
    write_card(folder, "cp_0.pth", file_sha256(folder / "cp_0.pth"), "Hf O", cutoff, "hfo2-cp0")
    return folder


def test_7net_0_batch_matches_calculator(sevennet_0, sevennet_0_calc):
    sample = sample_structures()
    assert len(sample) >= 7 * 2
    predictions = sevennet_0.predict([AtomicSystem.from_ase(atoms) for _, atoms in sample])
    assert len(predictions) == len(sample)
    assert sevennet_0.dtype == torch.float32 and sevennet_0.cutoff == 5.0
    assert len(sevennet_0.elements) == 89 and sevennet_0.elements == sevennet_0.card.atomic_numbers
    for (label, atoms), prediction in zip(sample, predictions, strict=True):
        assert_matches(label, atoms, prediction, *reference(sevennet_0_calc, atoms))


def test_mixed_batch_with_molecules_matches_single_evaluation(sevennet_0, sevennet_0_calc):
    hfo2 = read_frames(HFO2)[0]
    li = read_frames(DATASETS / "mlearn_Li_test_DFT.DERIVED.extxyz")[-1]  # 2 atoms
    water = ase.build.molecule("H2O")
    assert not water.pbc.any() and not water.cell.array.any()
    methane = ase.build.molecule("CH4")
    argon = Atoms("Ar", positions=[[0.0, 0.0, 0.0]])  # no neighbour at all
    structures = [hfo2, water, li, methane, argon]
    systems = [AtomicSystem.from_ase(atoms) for atoms in structures]

    batch = sevennet_0.predict(systems)
    for index, (atoms, system, together) in enumerate(zip(structures, systems, batch, strict=True)):
        alone = sevennet_0.predict([system])[0]
        n = len(atoms)
        assert abs(together.energy - alone.energy) / n <= E_TOL, index
        np.testing.assert_allclose(together.forces, alone.forces, rtol=0, atol=F_TOL)
        assert np.isfinite(together.energy) and np.isfinite(together.forces).all()
        if system.is_periodic:
            np.testing.assert_allclose(together.stress, alone.stress, rtol=0, atol=S_TOL)
        else:
            assert together.stress is None and alone.stress is None
        # and both agree with sevenn's calculator
        assert_matches(f"mixed[{index}]", atoms, together, *reference(sevennet_0_calc, atoms))

    energies = sevennet_0.predict(systems, ["energy"])
    for together, energy_only in zip(batch, energies, strict=True):
        assert energy_only.forces is None and energy_only.stress is None
        assert abs(energy_only.energy - together.energy) <= 1e-4


def test_energy_only_builds_no_autograd_graph(sevennet_0):
    systems = [AtomicSystem.from_ase(read_frames(HFO2)[0]), AtomicSystem.from_ase(ase.build.molecule("H2O"))]
    with saved_for_backward() as saved:
        full = sevennet_0.predict(systems)
    assert saved  # the probe sees the graph of a forces call
    with saved_for_backward() as saved:
        energy_only = sevennet_0.predict(systems, ["energy"])
    assert saved == []
    for alone, together in zip(energy_only, full, strict=True):
        assert alone.forces is None and alone.stress is None
        assert abs(alone.energy - together.energy) <= 1e-4


def test_element_outside_the_checkpoint_is_rejected(sevennet_0):
    polonium = AtomicSystem.from_arrays([84], [[0.0, 0.0, 0.0]], np.eye(3) * 3.4)
    with pytest.raises(StructureRejected) as caught:
        sevennet_0.predict([polonium])
    assert caught.value.code == "element_not_covered"
    assert caught.value.message == "element(s) Po not covered by model '7net-0'"


def test_user_checkpoint_card_matches_calculator(cp0_dir):
    potential = load_model(ModelRegistry(cp0_dir), "hfo2-cp0", "cpu")
    assert potential.elements == frozenset({72, 8})
    assert potential.cutoff == SevenNetCheckpoint(str(CP_0)).config["cutoff"]
    frames = read_frames(HFO2)
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for atoms in frames])
    calc = calculator(CP_0)
    for index, (atoms, prediction) in enumerate(zip(frames, predictions, strict=True)):
        assert_matches(f"hfo2[{index}]", atoms, prediction, *reference(calc, atoms))


def test_card_with_element_unknown_to_checkpoint(cp0_dir, tmp_path):
    shutil.copy(cp0_dir / "cp_0.pth", tmp_path / "cp_0.pth")
    write_card(tmp_path, "cp_0.pth", file_sha256(tmp_path / "cp_0.pth"), "Hf O Zr", 4.0, "hfo2-zr")
    with pytest.raises(CardError, match="Zr"):
        load_model(ModelRegistry(tmp_path), "hfo2-zr", "cpu")


def test_card_with_wrong_cutoff(cp0_dir, tmp_path):
    shutil.copy(cp0_dir / "cp_0.pth", tmp_path / "cp_0.pth")
    write_card(tmp_path, "cp_0.pth", file_sha256(tmp_path / "cp_0.pth"), "Hf O", 6.0, "hfo2-cut")
    with pytest.raises(CardError, match="cutoff"):
        load_model(ModelRegistry(tmp_path), "hfo2-cut", "cpu")


class _Tripwire:
    """Unpickling this creates ``marker``: proof that a checkpoint was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_wrong_sha256_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    checkpoint = tmp_path / "evil.pth"
    checkpoint.write_bytes(pickle.dumps({"config": _Tripwire(marker)}))
    write_card(tmp_path, "evil.pth", "0" * 64, "Hf O", 4.0, "evil")
    with pytest.raises(CardError, match="sha256"):
        load_model(ModelRegistry(tmp_path), "evil", "cpu")
    assert not marker.exists()
