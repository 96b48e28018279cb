"""The torch MTP backend against its references: MLIP-2 itself and motep.

* MLIP-2 ``calc-efs`` outputs (``out.cfg`` beside each potential in ``shared/fixtures/mtp/motep``): energies to
  1e-9 eV/atom, forces and virials to the print precision of the file (half a unit in the last printed digit).
* motep (PyPI, its C engine) on random periodic structures with the 5-species FeCoNiCrAl potential, including
  neighbours closer than ``min_dist``: 1e-9 eV/atom, 1e-8 eV/Å.
* The HTTP server answers as the in-process Potential does.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.data import atomic_numbers
from ase.io import read
from mlipserve.clients import Client
from mlipserve.models.backends.mtp import MTPPotential, contraction_waves, load_potential
from mlipserve.models.backends.mtp_format import read_mtp
from mlipserve.models.cards import CardError, ModelCard
from mlipserve.models.graph import build_graph
from mlipserve.models.loading import load_model
from mlipserve.models.potential import StructureRejected, check_card
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.server.config import ServerSettings

from .conftest import FIXTURES, RunningServer, free_port, torch_threads, write_card
from .mtp_cfg import read_cfg
from .toy_potential import saved_for_backward

MOTEP = FIXTURES / "mtp" / "motep"
HEA = FIXTURES / "mtp" / "asemtp_FeCoNiCrAl_5species"
HEA_ELEMENTS = ("Fe", "Co", "Ni", "Cr", "Al")  # species 0..4, as the file's README maps them

#: (folder under motep/, element of each species index, every how many frames of out.cfg to take)
ORACLES = [
    ("crystals_cubic_Cu_1species/10", "Cu", 10),
    ("crystals_cubic_Cu_1species/20", "Cu", 20),
    ("crystals_multi_AuAgCu_3species/02", "Au Ag Cu", 10),
    ("crystals_multi_AuAgCu_3species/10", "Au Ag Cu", 10),
    *[(f"molecules/{m}/{level}", e, 1) for m, e in [("291", "C H"), ("14214", "H F")] for level in ("02", "06", "10")],
    *[(f"molecules/762/{level}", "H", 1) for level in ("02", "06", "10")],
    *[(f"molecules/23208/{level}", "O", 1) for level in ("06", "10")],
]
E_TOL = 1e-9  # eV/atom
F_PRINT = 0.5e-6 + 1e-9  # eV/Å: out.cfg prints forces with 6 decimals
W_PRINT = 0.5e-5 + 1e-9  # eV: out.cfg prints PlusStress with 5 decimals
MOTEP_F_TOL = 1e-8  # eV/Å
MOTEP_S_TOL = 1e-9  # eV/Å³


def make_card(path: Path, elements: str | tuple[str, ...], **fields) -> ModelCard:
    data = {
        "name": fields.pop("name", "mtp-test"),
        "family": "mtp",
        "version": "test",
        "checkpoint": path.name,
        "sha256": "0" * 64,
        "license": "MIT",
        "elements": elements,
        "cutoff": read_mtp(path).max_dist,
    } | fields
    return ModelCard.from_dict(data, root=path.parent)


def potential(path: Path, elements, device: str = "cpu", **fields) -> MTPPotential:
    return load_potential(make_card(path, elements, **fields), path, torch.device(device))


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine it is the fastest."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def hea() -> MTPPotential:
    return potential(HEA / "pot.mtp", HEA_ELEMENTS)


def _oracle_id(case) -> str:
    return case[0].replace("/", "-")


@pytest.mark.parametrize("case", ORACLES, ids=_oracle_id)
def test_matches_mlip2_calc_efs(case) -> None:
    folder, elements, step = case
    pot = potential(MOTEP / folder / "pot.mtp", elements)
    frames = read_cfg(MOTEP / folder / "out.cfg")[::step]
    numbers = np.array([atomic_numbers[symbol] for symbol in elements.split()])
    systems = [AtomicSystem.from_arrays(numbers[f.types], f.positions, f.cell, pbc=f.cell is not None) for f in frames]
    periodic = frames[0].cell is not None
    predictions = pot.predict(systems)
    output = pot.evaluate(build_graph(systems, pot.cutoff))  # MLIP's virial, also for molecules
    offsets = np.cumsum([0] + [s.n_atoms for s in systems])
    for index, (frame, system, prediction) in enumerate(zip(frames, systems, predictions, strict=True)):
        label = f"{folder} frame {index * step}"
        assert abs(prediction.energy - frame.energy) / system.n_atoms <= E_TOL, label
        assert output.energy[index] == prediction.energy
        np.testing.assert_allclose(prediction.forces, frame.forces, rtol=0, atol=F_PRINT, err_msg=label)
        np.testing.assert_allclose(output.forces[offsets[index] : offsets[index + 1]], prediction.forces, atol=0)
        np.testing.assert_allclose(output.virial[index], frame.virial, rtol=0, atol=W_PRINT, err_msg=label)
        if periodic:  # ASE stress = -PlusStress / V
            np.testing.assert_allclose(-prediction.stress * system.volume, frame.virial, atol=W_PRINT, err_msg=label)
        else:
            assert prediction.stress is None
    assert len(frames) >= 5


def random_hea_structures(count: int, seed: int = 7) -> list[Atoms]:
    """``count`` rattled, strained (triclinic) fcc/bcc cells of 1-54 atoms with random FeCoNiCrAl species, then a
    cell with one pair closer than min_dist and the 108-atom DFT frame shipped with the potential."""
    rng = np.random.default_rng(seed)
    structures = []
    for index in range(count):
        kind, a = ("fcc", 3.58) if index % 2 == 0 else ("bcc", 2.86)
        repeat = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 3, 2)][index % 5]
        atoms = bulk("Fe", kind, a=a, cubic=index % 3 != 0) * repeat
        atoms.numbers = rng.choice([atomic_numbers[s] for s in HEA_ELEMENTS], size=len(atoms))
        strain = np.eye(3) + rng.normal(scale=0.03, size=(3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        structures.append(atoms)
    close_pair = bulk("Fe", "fcc", a=3.58, cubic=True) * (2, 2, 2)  # one pair at 1.9 Å < min_dist = 2 Å
    close_pair.numbers = rng.choice([atomic_numbers[s] for s in HEA_ELEMENTS], size=len(close_pair))
    neighbour = close_pair.positions[1] - close_pair.positions[0]
    close_pair.positions[1] = close_pair.positions[0] + neighbour * 1.9 / np.linalg.norm(neighbour)
    close_pair.rattle(0.02, seed=3)
    return [*structures, close_pair, read(HEA / "example.traj")]


def motep_reference(path: Path, elements, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy, forces and ASE stress from motep's C engine."""
    if sys.version_info < (3, 11):  # motep needs Python >= 3.11; from there on (dev extra) it must be installed
        pytest.importorskip("motep")
    from motep.calculator import MTP as MotepCalculator
    from motep.io.mlip.mtp import read_mtp as motep_read_mtp

    data = motep_read_mtp(path)
    data.species = [atomic_numbers[symbol] for symbol in elements]
    atoms = atoms.copy()
    atoms.calc = MotepCalculator(data, engine="cext")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # motep warns about neighbours closer than min_dist
        return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


def test_matches_motep_on_random_periodic_structures(hea) -> None:
    structures = random_hea_structures(14)
    systems = [AtomicSystem.from_ase(atoms) for atoms in structures]
    distances = [atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)].min() for atoms in structures[-2:]]
    assert distances[0] < read_mtp(HEA / "pot.mtp").min_dist < distances[1]  # one structure probes r < min_dist
    predictions = hea.predict(systems)
    for index, (atoms, prediction) in enumerate(zip(structures, predictions, strict=True)):
        energy, forces, stress = motep_reference(HEA / "pot.mtp", HEA_ELEMENTS, atoms)
        label = f"structure {index} ({len(atoms)} atoms)"
        assert abs(prediction.energy - energy) / len(atoms) <= E_TOL, label
        np.testing.assert_allclose(prediction.forces, forces, rtol=0, atol=MOTEP_F_TOL, err_msg=label)
        np.testing.assert_allclose(prediction.stress, stress, rtol=0, atol=MOTEP_S_TOL, err_msg=label)
        assert len(atoms) == 1 or np.abs(forces).max() > 1e-3, label  # the comparison is not between zeros


@pytest.mark.parametrize("level", ["02", "06", "16"])
def test_levels_without_mlip_output_match_motep(level: str) -> None:
    path = MOTEP / "crystals_cubic_Cu_1species" / level / "pot.mtp"
    pot = potential(path, "Cu")
    structures = []
    for index, repeat in enumerate([(1, 1, 1), (2, 2, 2), (3, 2, 2)]):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=index > 0) * repeat
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * np.random.default_rng(index).normal(size=(3, 3))), True)
        atoms.rattle(0.1, seed=index)
        structures.append(atoms)
    predictions = pot.predict([AtomicSystem.from_ase(atoms) for atoms in structures])
    for atoms, prediction in zip(structures, predictions, strict=True):
        energy, forces, stress = motep_reference(path, ("Cu",), atoms)
        assert abs(prediction.energy - energy) / len(atoms) <= E_TOL
        np.testing.assert_allclose(prediction.forces, forces, rtol=0, atol=MOTEP_F_TOL)
        np.testing.assert_allclose(prediction.stress, stress, rtol=0, atol=MOTEP_S_TOL)


def test_mixed_batch_equals_one_by_one(hea) -> None:
    crystal = random_hea_structures(3)[2]
    lonely = Atoms("Fe", positions=[[0, 0, 0]], cell=[8, 8, 8], pbc=True)  # no neighbour within the cutoff
    dimer = Atoms("CoAl", positions=[[0, 0, 0], [0, 0, 2.4]])  # a molecule: no cell, no stress
    slab = bulk("Ni", "fcc", a=3.52, cubic=True) * (2, 2, 1)
    slab.pbc = [True, True, False]
    slab.center(vacuum=5.0, axis=2)
    structures = [crystal, lonely, dimer, slab]
    systems = [AtomicSystem.from_ase(atoms) for atoms in structures]
    together = hea.predict(systems)
    energy_only = hea.predict(systems, ["energy"])
    for index, system in enumerate(systems):
        alone = hea.predict([system])[0]
        assert abs(together[index].energy - alone.energy) <= 1e-10 * system.n_atoms
        assert energy_only[index].energy == pytest.approx(alone.energy, abs=1e-10)
        assert energy_only[index].forces is None and energy_only[index].stress is None
        np.testing.assert_allclose(together[index].forces, alone.forces, rtol=0, atol=1e-12)
        assert (together[index].stress is None) == (not system.is_periodic)
    species_coeffs = read_mtp(HEA / "pot.mtp").species_coeffs
    assert together[1].energy == species_coeffs[0]  # an isolated atom has its species' energy, no force
    assert not together[1].forces.any()
    np.testing.assert_allclose(together[2].forces.sum(axis=0), 0, atol=1e-12)


def _contract_in_file_order(moments: np.ndarray, times: np.ndarray) -> np.ndarray:
    moments = moments.copy()
    for first, second, mult, target in times:
        moments[target] += mult * moments[first] * moments[second]
    return moments


def _contract_in_waves(moments: np.ndarray, times: np.ndarray) -> np.ndarray:
    moments = moments.copy()
    for wave in contraction_waves(times):
        products = wave[:, 2] * moments[wave[:, 0]] * moments[wave[:, 1]]
        np.add.at(moments, wave[:, 3], products)
    return moments


@pytest.mark.parametrize(
    "times",
    [
        read_mtp(MOTEP / "crystals_cubic_Cu_1species" / "20" / "pot.mtp").alpha_index_times,
        # a row reads moment 3 between two rows that write it: the waves must keep that order
        np.array([[0, 1, 1, 3], [3, 0, 2, 4], [0, 0, 1, 3], [4, 3, 1, 5], [1, 2, 3, 5]]),
    ],
    ids=["level-20", "interleaved"],
)
def test_contraction_waves_reproduce_file_order(times: np.ndarray) -> None:
    moments = np.zeros(int(times[:, 3].max()) + 1)
    moments[: int(times[:, 3].min())] = np.random.default_rng(0).uniform(-1, 1, int(times[:, 3].min()))
    expected = _contract_in_file_order(moments, times)
    np.testing.assert_allclose(_contract_in_waves(moments, times), expected, rtol=1e-12, atol=1e-300)
    assert len(contraction_waves(times)) < len(times)


def test_forces_under_inference_mode(hea) -> None:
    system = AtomicSystem.from_ase(random_hea_structures(2)[1])
    expected = hea.predict([system])[0]
    with torch.inference_mode():
        inside = hea.predict([system])[0]
    np.testing.assert_array_equal(inside.forces, expected.forces)


def test_float32_option_is_close_to_float64(hea) -> None:
    single = potential(HEA / "pot.mtp", HEA_ELEMENTS, options={"dtype": "float32"})
    assert single.dtype == torch.float32 and hea.dtype == torch.float64
    systems = [AtomicSystem.from_ase(atoms) for atoms in random_hea_structures(4)]
    for low, high, system in zip(single.predict(systems), hea.predict(systems), systems, strict=True):
        assert abs(low.energy - high.energy) / system.n_atoms < 1e-4
        np.testing.assert_allclose(low.forces, high.forces, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(hea) -> None:
    gpu = potential(HEA / "pot.mtp", HEA_ELEMENTS, device="cuda")
    systems = [AtomicSystem.from_ase(atoms) for atoms in random_hea_structures(8)]
    for on_gpu, on_cpu, system in zip(gpu.predict(systems), hea.predict(systems), systems, strict=True):
        assert abs(on_gpu.energy - on_cpu.energy) / system.n_atoms < 1e-10
        np.testing.assert_allclose(on_gpu.forces, on_cpu.forces, rtol=0, atol=1e-9)
        np.testing.assert_allclose(on_gpu.stress, on_cpu.stress, rtol=0, atol=1e-10)


def test_element_without_species_is_rejected(hea) -> None:
    with pytest.raises(StructureRejected, match=r"element\(s\) Cu not covered by model 'mtp-test'") as caught:
        hea.check(AtomicSystem.from_ase(bulk("Cu")))
    assert caught.value.code == "element_not_covered"
    assert hea.elements == frozenset(atomic_numbers[s] for s in HEA_ELEMENTS)
    with pytest.raises(StructureRejected, match="Cu"):
        hea.predict([AtomicSystem.from_ase(bulk("Cu"))])


def test_energy_only_builds_no_autograd_graph(hea) -> None:
    systems = [AtomicSystem.from_ase(atoms) for atoms in random_hea_structures(3)]
    full = hea.predict(systems)
    with saved_for_backward() as saved:
        energy_only = hea.predict(systems, ["energy"])
    assert saved == []
    for alone, together in zip(energy_only, full, strict=True):
        assert alone.forces is None and alone.stress is None and alone.energy == together.energy


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"elements": "Fe Co Ni Cr"}, r"lists 4 elements, the \.mtp file has species_count = 5"),
        ({"elements": "Fe Co Ni Cr Fe"}, r"lists an element twice"),
        ({"cutoff": 6.0}, r"says cutoff 6\.0 Å, but the loaded potential's cutoff is 5\.0 Å"),
        ({"options": {"dtype": "float16"}}, r"options\.dtype must be one of"),
    ],
)
def test_card_that_does_not_fit_the_file(fields, message) -> None:
    fields = {"elements": HEA_ELEMENTS} | fields
    with pytest.raises(CardError, match=message):
        loaded = potential(HEA / "pot.mtp", **fields)
        check_card(loaded.card, loaded)  # as the registry does once the file is loaded


@pytest.fixture(scope="module")
def mtp_model_dir(tmp_path_factory) -> Path:
    """A model directory where registering the MTP is dropping in the file and its card."""
    folder = tmp_path_factory.mktemp("mtp_models")
    write_card(folder, "feconicral-mtp", HEA / "pot.mtp", family="mtp", elements=" ".join(HEA_ELEMENTS), cutoff=5.0)
    return folder


def test_registry_loads_a_dropped_in_mtp(mtp_model_dir, hea) -> None:
    loaded = load_model(ModelRegistry(mtp_model_dir), "feconicral-mtp", "cpu")
    assert isinstance(loaded, MTPPotential) and loaded.cutoff == 5.0 and loaded.dtype == torch.float64
    system = AtomicSystem.from_ase(random_hea_structures(1)[0])
    assert loaded.predict([system])[0].energy == hea.predict([system])[0].energy


def test_http_answers_like_the_potential(mtp_model_dir, hea) -> None:
    structures = [*random_hea_structures(5), molecule("CO")]
    structures[-1].numbers = [atomic_numbers["Co"], atomic_numbers["Al"]]
    outsider = bulk("Cu")
    expected = hea.predict([AtomicSystem.from_ase(atoms) for atoms in structures])
    settings = ServerSettings(port=free_port(), models=("feconicral-mtp",), model_dir=mtp_model_dir, device="cpu")
    with RunningServer(settings) as running, Client(running.url, model="feconicral-mtp", progress=False) as client:
        client.wait_until_ready(timeout=120)
        results = client.predict([*structures, outsider], errors="return")
    for result, prediction in zip(results, expected, strict=False):
        assert result.ok and result.model["name"] == "feconicral-mtp" and result.model["dtype"] == "float64"
        # the server may batch differently, which changes only the order of floating-point sums
        assert result.energy == pytest.approx(prediction.energy, rel=1e-13, abs=1e-12)
        np.testing.assert_allclose(result.forces, prediction.forces, rtol=0, atol=1e-11)
        if prediction.stress is None:
            assert result.stress is None
        else:
            np.testing.assert_allclose(result.stress, prediction.stress, rtol=0, atol=1e-12)
    assert results[-1].error is not None and results[-1].error.code == "element_not_covered"
