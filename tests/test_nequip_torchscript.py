"""Legacy NequIP TorchScript (nequip-deploy, nequip 0.5.6): served numbers against the module evaluated directly.

The reference feeds the TorchScript module one structure at a time, exactly as nequip 0.5.6's ASE calculator
does (``AtomicData.from_ase``: positions rounded to float32, ASE neighbour list with home-cell self edges removed,
``atom_types`` of shape (N, 1)). The server evaluates whole batches; energies must agree within 1e-6 eV/atom.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.geometry import complete_cell  # noqa: E402
from ase.io import read  # noqa: E402
from ase.neighborlist import primitive_neighbor_list  # noqa: E402
from mlipserve.clients import Client  # noqa: E402
from mlipserve.models.cards import CardError, file_sha256  # noqa: E402
from mlipserve.models.loading import load_model  # noqa: E402
from mlipserve.models.potential import StructureRejected  # noqa: E402
from mlipserve.models.registry import ModelRegistry  # noqa: E402
from mlipserve.models.system import AtomicSystem  # noqa: E402

from .conftest import FIXTURES, ready_server  # noqa: E402

FOLDER = FIXTURES / "nequip" / "nequip-lr_LiCl_nequip0.5.6"
DEPLOYED = FOLDER / "deployed.pth"
MODEL = "licl-nequip056"
E_TOL = 1e-6  # eV/atom, the acceptance bound
F_TOL = 1e-3  # eV/Å; forces reach 250 eV/Å in these frames, so this is ~4e-6 relative (float32)

pytestmark = pytest.mark.skipif(not DEPLOYED.is_file(), reason=f"fixture not found: {DEPLOYED}")


def write_card(folder: Path, name: str = MODEL, source: Path = DEPLOYED, **fields: object) -> None:
    if not (folder / source.name).exists():
        shutil.copy(source, folder / source.name)
    card = {
        "name": name,
        "family": "nequip",
        "version": "nequip-0.5.6",
        "checkpoint": source.name,
        "sha256": file_sha256(folder / source.name),
        "license": "MIT",
        "elements": "Li Cl",
        "cutoff": 4.0,
    } | fields
    (folder / f"{name}.yaml").write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in card.items()))


def training_frames() -> list[Atoms]:
    """The model's own 21 LiCl frames (data of the fixture), without their labels."""
    frames = read(FOLDER / "output.extxyz", index=":", format="extxyz")
    for atoms in frames:
        atoms.calc = None
    return frames


def structures() -> list[Atoms]:
    """The training frames, a strained rattled supercell, a non-orthogonal cell and a molecule."""
    supercell = bulk("LiCl", "rocksalt", a=5.14) * (2, 2, 2)
    supercell.set_cell(supercell.cell.array @ np.diag([1.02, 0.99, 1.0]), scale_atoms=True)
    supercell.rattle(0.05, seed=1)
    primitive = bulk("LiCl", "rocksalt", a=5.1)
    primitive.rattle(0.05, seed=2)
    molecule = Atoms("LiCl2Li", positions=[[0, 0, 0], [2.1, 0, 0], [0, 2.2, 0.1], [2.0, 2.3, 0.2]])
    return [*training_frames(), supercell, primitive, molecule]


def min_distance(atoms: Atoms) -> float:
    distances = atoms.get_all_distances(mic=True)
    return float(distances[~np.eye(len(atoms), dtype=bool)].min())


def nequip_056_inputs(atoms: Atoms, type_names: list[str], r_max: float) -> dict[str, torch.Tensor]:
    """One structure as nequip 0.5.6's ``AtomicData.from_ase(...).to_AtomicDataDict()`` (float32 model)."""
    pos = torch.as_tensor(atoms.positions, dtype=torch.float32)
    i, j, shift = primitive_neighbor_list(
        "ijS", atoms.pbc, complete_cell(atoms.cell), pos.numpy(), cutoff=r_max, self_interaction=True
    )
    keep = ~((i == j) & (shift == 0).all(axis=1))
    return {
        "pos": pos,
        "edge_index": torch.as_tensor(np.stack([i[keep], j[keep]]), dtype=torch.long),
        "edge_cell_shift": torch.as_tensor(shift[keep], dtype=torch.float32),
        "cell": torch.as_tensor(atoms.cell.array, dtype=torch.float32),
        "pbc": torch.as_tensor(atoms.pbc),
        "atom_types": torch.as_tensor([type_names.index(s) for s in atoms.get_chemical_symbols()]).view(-1, 1),
    }


def direct_evaluation(sample: list[Atoms]) -> list[tuple[float, np.ndarray]]:
    """Energy and forces of each structure from the TorchScript module called directly, one structure per call."""
    extra = {"type_names": "", "r_max": ""}
    module = torch.jit.load(str(DEPLOYED), map_location="cpu", _extra_files=extra)
    type_names, r_max = extra["type_names"].decode().split(), float(extra["r_max"])
    results = []
    for atoms in sample:
        out = module(nequip_056_inputs(atoms, type_names, r_max))
        results.append((float(out["total_energy"].item()), out["forces"].detach().double().numpy()))
    return results


@pytest.fixture(scope="module")
def reference() -> list[tuple[float, np.ndarray]]:
    return direct_evaluation(structures())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nequip_models")
    write_card(folder)
    return folder


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[str]:
    with ready_server(timeout=120, models=(MODEL,), model_dir=model_dir, device="cpu", torch_threads=2) as running:
        yield running


def test_served_batch_equals_direct_torchscript_evaluation(served: str, reference) -> None:
    sample = structures()
    with Client(served, model=MODEL, progress=False) as client:
        results = client.predict(sample, errors="return")
    assert len(results) == len(sample)
    # Some training frames have atoms closer than the server's 0.5 Å limit: those, and only those, are refused.
    refused = [index for index, result in enumerate(results) if result.error is not None]
    assert refused == [index for index, atoms in enumerate(sample) if min_distance(atoms) < 0.5]
    assert {results[index].error.code for index in refused} <= {"atoms_too_close"}
    assert len(refused) < len(sample) // 2
    for index, (atoms, result, (energy, forces)) in enumerate(zip(sample, results, reference, strict=True)):
        if index in refused:
            continue
        assert abs(result.energy - energy) / len(atoms) <= E_TOL, f"structure {index}: {result.energy} vs {energy}"
        np.testing.assert_allclose(result.forces, forces, rtol=0, atol=F_TOL, err_msg=f"structure {index}")
        assert result.stress is None  # this model was deployed without a stress output
    assert results[0].model["dtype"] == "float32"


def test_reference_reproduces_the_fixture_helpers_independent_run(reference) -> None:
    """The fixture's helper ran the same file through ase.neighborlist.neighbor_list on torch 2.15 (DERIVED json)."""
    helper = json.loads((FOLDER / "helper_predictions_torch2.DERIVED.json").read_text())
    frames = training_frames()
    assert len(helper) == len(frames)
    for atoms, (energy, forces), row in zip(frames, reference[: len(frames)], helper, strict=True):
        assert abs(energy - row["E_model"]) / len(atoms) < 1e-4
        np.testing.assert_allclose(forces, row["F_model"], rtol=0, atol=1e-2)


def test_metadata_is_read_from_the_file(model_dir: Path) -> None:
    potential = load_model(ModelRegistry(model_dir), MODEL, "cpu")
    assert potential.cutoff == 4.0
    assert potential.dtype == torch.float32
    assert potential.type_index == {3: 0, 17: 1}  # type_names "Li Cl" in the file
    assert potential.model.nequip_version == "0.5.6"
    assert potential.elements == frozenset({3, 17}) == potential.card.atomic_numbers
    with pytest.raises(StructureRejected, match=rf"element\(s\) Na not covered by model '{MODEL}'") as caught:
        potential.check(AtomicSystem.from_ase(bulk("NaCl", "rocksalt", a=5.6)))
    assert caught.value.code == "element_not_covered"


def test_single_and_batched_evaluation_agree(model_dir: Path) -> None:
    potential = load_model(ModelRegistry(model_dir), MODEL, "cpu")
    systems = [AtomicSystem.from_ase(atoms) for atoms in structures()[-3:]]
    batched = potential.predict(systems)
    for system, prediction in zip(systems, batched, strict=True):
        (single,) = potential.predict([system])
        assert abs(single.energy - prediction.energy) / system.n_atoms <= E_TOL
        np.testing.assert_allclose(single.forces, prediction.forces, rtol=0, atol=F_TOL)


def test_energy_only_request(model_dir: Path) -> None:
    """The deployed module computes forces in its forward pass whatever is asked; they are not returned."""
    potential = load_model(ModelRegistry(model_dir), MODEL, "cpu")
    systems = [AtomicSystem.from_ase(atoms) for atoms in structures()[-3:]]
    for full, energy_only in zip(potential.predict(systems), potential.predict(systems, ["energy"]), strict=True):
        assert energy_only.forces is None and energy_only.stress is None
        assert energy_only.energy == full.energy


def test_server_rejects_an_element_outside_the_card(served: str) -> None:
    with Client(served, model=MODEL, progress=False) as client:
        (result,) = client.predict([bulk("NaCl", "rocksalt", a=5.6)], errors="return")
    assert result.error is not None and result.error.code == "element_not_covered"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cutoff": 5.0}, "cutoff 5.0"),
        ({"elements": "Li Na Cl"}, "lists elements Li Na Cl, but the loaded potential covers Li Cl"),
        ({"options": {"type_names": {"Li": "Li", "Cl": "chloride"}}}, "chloride"),
        ({"options": {"type_names": {"Li": "Li"}}}, "lists elements Li Cl, but the loaded potential covers Li"),
        ({"options": {"type_names": {"Xx": "Li", "Cl": "Cl"}}}, "must map element symbols"),
        ({"options": {"species": ["Li", "Cl"]}}, "unknown options"),
    ],
)
def test_card_is_checked_against_the_file(tmp_path: Path, fields: dict, message: str) -> None:
    write_card(tmp_path, **fields)
    with pytest.raises(CardError, match=message):
        load_model(ModelRegistry(tmp_path), MODEL, "cpu")


def test_explicit_type_name_map_is_used(tmp_path: Path) -> None:
    write_card(tmp_path, options={"type_names": {"Li": "Cl", "Cl": "Li"}})  # deliberately swapped
    potential = load_model(ModelRegistry(tmp_path), MODEL, "cpu")
    assert potential.type_index == {3: 1, 17: 0}


def _torchscript_without_metadata(path: Path, extra: dict[str, str]) -> Path:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path), _extra_files=extra)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"not a model") and p, "not a zip archive"),
        (lambda p: torch.save({"state_dict": {}}, p) or p, "pickled checkpoint"),
        (lambda p: _torchscript_without_metadata(p, {}), "without nequip metadata"),
        (lambda p: _torchscript_without_metadata(p, {"nequip_version": "0.16.0"}), r"nequip 0\.16\.0"),
    ],
    ids=["not-zip", "checkpoint", "plain-torchscript", "new-torchscript"],
)
def test_unsupported_files_are_named(tmp_path: Path, make, message: str) -> None:
    source = tmp_path / "source" / "model.pth"
    source.parent.mkdir()
    make(source)
    assert zipfile.is_zipfile(source) or message == "not a zip archive"
    write_card(tmp_path, source=source)
    with pytest.raises(CardError, match=message):
        load_model(ModelRegistry(tmp_path), MODEL, "cpu")
