"""Current nequip: tiny NequIP and Allegro models trained and compiled with AOTInductor here, served, and compared
with nequip's own ASE calculator.

Once per test session the set-up makes EMT data for Al-Cu, trains both models for two epochs
(``tests/data/nequip/tiny_*.yaml``) and compiles them with ``nequip-compile --mode aotinductor`` on the CPU: the
NequIP model for ``--target batch`` (served batched) and ``--target ase`` (served one structure per call, and the
reference calculator's file), the Allegro model for ``--target batch``. The NequIP reference is
``NequIPCalculator.from_compiled_model`` (the documented route); the Allegro reference is ``NequIPCalculator`` on
the eager model from the training checkpoint, as nequip's own integration tests build it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("nequip", reason="the nequip package is needed to train and compile the test models")

from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.io import write  # noqa: E402
from mlipserve.clients import Client  # noqa: E402
from mlipserve.models.cards import CardError, file_sha256  # noqa: E402
from mlipserve.models.loading import load_model  # noqa: E402
from mlipserve.models.registry import ModelRegistry  # noqa: E402
from mlipserve.server.config import ServerSettings  # noqa: E402

from .conftest import RunningServer, free_port  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "data" / "nequip"
BIN = Path(sys.executable).parent
E_TOL = 1e-5  # eV/atom, the acceptance bound
F_TOL = 1e-5  # eV/Å
S_TOL = 1e-6  # eV/Å³
NEQUIP_BATCH, NEQUIP_ASE, ALLEGRO_BATCH = "tiny-nequip-batch", "tiny-nequip-ase", "tiny-allegro-batch"


@dataclass
class TinyModels:
    folder: Path  # the model directory: compiled packages and their cards
    nequip_checkpoint: Path
    allegro_checkpoint: Path


def training_data(path: Path, count: int = 12, seed: int = 0) -> Path:
    """Rattled, strained Al-Cu fcc cells labelled with ASE's EMT (energy, forces, stress)."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        atoms = random_alloy(rng, repeat=(2, 1, 1), seed=index)
        atoms.calc = EMT()
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


def random_alloy(rng: np.random.Generator, repeat: tuple[int, int, int], seed: int) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
    numbers = atoms.numbers.copy()
    numbers[rng.random(len(atoms)) < 0.4] = 13
    atoms.numbers = numbers
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.02, size=(3, 3))), scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


def run(command: list[str], folder: Path, log_name: str) -> subprocess.Popen:
    log = open(folder / log_name, "w")  # noqa: SIM115 - closed with the process by finish()
    return subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def finish(process: subprocess.Popen, folder: Path, log_name: str, what: str) -> None:
    code = process.wait(timeout=1800)
    process.stdout and process.stdout.close()
    if code != 0:
        tail = (folder / log_name).read_text()[-3000:]
        pytest.fail(f"{what} failed (exit {code}); last lines of {folder / log_name}:\n{tail}")


def train(config: str, data: Path, folder: Path, overrides: Sequence[str] = ()) -> Path:
    """Train ``tests/data/nequip/<config>`` on ``data`` in ``folder``; ``overrides`` are hydra overrides."""
    name = config.removesuffix(".yaml")
    command = [str(BIN / "nequip-train"), "-cp", str(CONFIGS), "-cn", name]
    command += [f"++data_file={data}", f"hydra.run.dir={folder / name}", *overrides]
    finish(run(command, folder, f"{name}.log"), folder, f"{name}.log", f"nequip-train {config}")
    return folder / name / "last.ckpt"


def compile_command(checkpoint: Path, output: Path, target: str) -> list[str]:
    command = [str(BIN / "nequip-compile"), str(checkpoint), str(output), "--mode", "aotinductor"]
    return [*command, "--device", "cpu", "--target", target]


def write_card(folder: Path, name: str, package: str, cutoff: float) -> None:
    card = {
        "name": name,
        "family": "nequip",
        "version": "test",
        "checkpoint": package,
        "sha256": file_sha256(folder / package),
        "license": "MIT",
        "elements": "Al Cu",
        "cutoff": cutoff,
    }
    (folder / f"{name}.yaml").write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in card.items()))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """Train and compile the three test packages once per session (about 1 CPU-minute per compile; 3 run at once)."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        pytest.skip(
            "AOTInductor needs a C++ compiler and none was found (no c++/g++ on PATH, CXX unset): "
            "install one (e.g. apt-get install g++) to run the AOTInductor tests"
        )
    work = tmp_path_factory.mktemp("nequip_build")
    data = training_data(work / "alcu_emt.extxyz")
    nequip_ckpt = train("tiny_nequip.yaml", data, work)
    allegro_ckpt = train("tiny_allegro.yaml", data, work)
    folder = tmp_path_factory.mktemp("nequip_models")
    builds = {
        NEQUIP_BATCH: (nequip_ckpt, "batch"),
        NEQUIP_ASE: (nequip_ckpt, "ase"),
        ALLEGRO_BATCH: (allegro_ckpt, "batch"),
    }
    processes = {
        name: run(compile_command(ckpt, folder / f"{name}.nequip.pt2", target), work, f"compile-{name}.log")
        for name, (ckpt, target) in builds.items()
    }
    for name, process in processes.items():
        finish(process, work, f"compile-{name}.log", f"nequip-compile of {name}")
        write_card(folder, name, f"{name}.nequip.pt2", cutoff=4.0)
    return TinyModels(folder, nequip_ckpt, allegro_ckpt)


@contextlib.contextmanager
def nequip_global_state() -> Iterator[None]:
    """nequip's loaders set torch's default dtype to float64 for the whole process; undo that afterwards."""
    default = torch.get_default_dtype()
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def structures() -> list[Atoms]:
    """Fresh Al-Cu cells (two sizes), a two-atom fcc supercell, a sheared CsCl-type pair and a molecule."""
    rng = np.random.default_rng(42)
    cells = [random_alloy(rng, repeat=(2, 1, 1), seed=100 + i) for i in range(4)]
    large = random_alloy(rng, repeat=(2, 2, 2), seed=200)
    fcc_pair = bulk("Al", "fcc", a=4.05).repeat((2, 1, 1))
    pair = bulk("CuAl", "cesiumchloride", a=2.95)
    pair.set_cell(pair.cell.array @ np.array([[1, 0.1, 0], [0, 1, 0.05], [0, 0, 1]]), scale_atoms=True)
    molecule = Atoms("AlCu2", positions=[[0, 0, 0], [2.5, 0, 0], [0.1, 2.4, 0.3]])
    return [*cells, large, fcc_pair, pair, molecule]


def reference_results(calculator, sample: list[Atoms]) -> list[tuple[float, np.ndarray, np.ndarray | None]]:
    results = []
    with nequip_global_state():
        torch.set_default_dtype(torch.float64)  # nequip's calculator builds its data in the default dtype
        for atoms in sample:
            atoms = atoms.copy()
            atoms.calc = calculator
            stress = atoms.get_stress(voigt=False) if atoms.pbc.any() else None
            results.append((atoms.get_potential_energy(), atoms.get_forces(), stress))
    return results


@pytest.fixture(scope="session")
def nequip_reference(tiny_models: TinyModels):
    from nequip.integrations.ase import NequIPCalculator

    with nequip_global_state():
        calculator = NequIPCalculator.from_compiled_model(
            str(tiny_models.folder / f"{NEQUIP_ASE}.nequip.pt2"), device="cpu", chemical_species_to_atom_type_map=True
        )
    return reference_results(calculator, structures())


@pytest.fixture(scope="session")
def allegro_reference(tiny_models: TinyModels):
    from nequip.integrations.ase import NequIPCalculator

    with nequip_global_state():
        calculator = NequIPCalculator._from_saved_model(
            str(tiny_models.allegro_checkpoint), device="cpu", chemical_species_to_atom_type_map=True
        )
    return reference_results(calculator, structures())


@pytest.fixture(scope="session")
def served(tiny_models: TinyModels) -> Iterator[str]:
    settings = ServerSettings(
        port=free_port(),
        models=(NEQUIP_BATCH, NEQUIP_ASE, ALLEGRO_BATCH),
        model_dir=tiny_models.folder,
        device="cpu",
        torch_threads=2,
    )
    with RunningServer(settings) as running:
        Client(running.url).wait_until_ready(timeout=300)
        yield running.url


def assert_matches(results, reference, sample: list[Atoms]) -> None:
    for index, (atoms, result, (energy, forces, stress)) in enumerate(zip(sample, results, reference, strict=True)):
        assert result.error is None, f"structure {index}: {result.error}"
        assert abs(result.energy - energy) / len(atoms) <= E_TOL, f"structure {index}: {result.energy} vs {energy}"
        np.testing.assert_allclose(result.forces, forces, rtol=0, atol=F_TOL, err_msg=f"structure {index}")
        if stress is None:
            assert result.stress is None, f"structure {index}"
        else:
            np.testing.assert_allclose(result.stress, stress, rtol=0, atol=S_TOL, err_msg=f"structure {index}")


@pytest.mark.parametrize("model", [NEQUIP_BATCH, NEQUIP_ASE])
def test_served_nequip_matches_nequip_calculator(served: str, nequip_reference, model: str) -> None:
    sample = structures()
    with Client(served, model=model, progress=False) as client:
        assert_matches(client.predict(sample, errors="return"), nequip_reference, sample)


def test_served_allegro_matches_nequip_calculator(served: str, allegro_reference) -> None:
    sample = structures()
    with Client(served, model=ALLEGRO_BATCH, progress=False) as client:
        assert_matches(client.predict(sample, errors="return"), allegro_reference, sample)


@pytest.mark.parametrize("index", [0, 5, 7])
def test_a_lone_structure_is_evaluated_by_a_batch_package(served: str, nequip_reference, index: int) -> None:
    """A batch package is compiled for at least two structures; a batch of one gets a stand-in companion."""
    atoms = structures()[index]
    with Client(served, model=NEQUIP_BATCH, progress=False) as client:
        (result,) = client.predict([atoms])
    assert_matches([result], [nequip_reference[index]], [atoms])


def test_one_atom_cells_need_a_batch_package(served: str) -> None:
    """An ``--target ase`` package takes at least two atoms; a batch package takes one (padded, see above)."""
    one_atom = bulk("Al", "fcc", a=4.05)
    with Client(served, progress=False) as client:
        (single_frame,) = client.predict([one_atom], model=NEQUIP_ASE, errors="return")
        (alone,) = client.predict([one_atom], model=NEQUIP_BATCH)
        (doubled,) = client.predict([one_atom.repeat((2, 1, 1))], model=NEQUIP_BATCH)
    assert single_frame.error is not None and "--target batch" in single_frame.error.message
    assert alone.energy == pytest.approx(doubled.energy / 2, abs=1e-9)
    np.testing.assert_allclose(alone.forces, 0.0, atol=1e-9)
    np.testing.assert_allclose(alone.stress, doubled.stress, atol=1e-9)


def test_package_metadata_is_read_and_checked(tiny_models: TinyModels, tmp_path: Path) -> None:
    registry = ModelRegistry(tiny_models.folder)
    nequip_model = load_model(registry, NEQUIP_BATCH, "cpu")
    config = yaml.safe_load((CONFIGS / "tiny_nequip.yaml").read_text())
    assert nequip_model.cutoff == config["cutoff_radius"]
    assert nequip_model.dtype == torch.float64 and load_model(registry, ALLEGRO_BATCH, "cpu").dtype == torch.float32
    assert nequip_model.type_index == {13: 0, 29: 1}  # model_type_names [Al, Cu]
    # per_edge_type_cutoff: Al -> anything 3.6; Cu -> Cu 3.2; Cu -> Al defaults to r_max.
    cutoffs = config["training_module"]["model"]["per_edge_type_cutoff"]
    expected = [[cutoffs["Al"], cutoffs["Al"]], [config["cutoff_radius"], cutoffs["Cu"]["Cu"]]]
    np.testing.assert_allclose(nequip_model.model.per_edge_type_cutoff, expected)

    shutil.copy(tiny_models.nequip_checkpoint, tmp_path / "last.ckpt")
    write_card(tmp_path, "from-checkpoint", "last.ckpt", cutoff=4.0)
    with pytest.raises(CardError, match=r"pickled checkpoint.*nequip-compile"):
        load_model(ModelRegistry(tmp_path), "from-checkpoint", "cpu")
