"""The torch ACE backend against python-ace's own evaluator (``PyACECalculator``) on the same potential files.

Potentials: three small pacemaker fits (``tests/data/ace``, each as B-basis ``.yaml`` and as pacemaker-converted
C-tilde ``.yace``) that together cover the SBessel / ChebExpCos / ChebPow radial bases, both embeddings and the
ZBL / density / distance inner-cutoff regimes, and the ACEpotentials.jl Ti-Al ``.yace`` with its pair table from
``../shared``. Structures: random periodic cells (rattled, sheared, some compressed into the core region) and
random molecules. python-ace has no pair tables: there the reference adds a SciPy cubic spline of the table.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pyace = pytest.importorskip("pyace")

import ase.io  # noqa: E402
import yaml  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.neighborlist import neighbor_list  # noqa: E402
from mlipserve.clients import Client  # noqa: E402
from mlipserve.models.backends.ace import AcePotential, load_potential  # noqa: E402
from mlipserve.models.backends.ace_format import (  # noqa: E402
    AceFormatError,
    load_yaml,
    read_pair_table,
    read_potential,
)
from mlipserve.models.cards import CardError, ModelCard, file_sha256  # noqa: E402
from mlipserve.models.loading import load_model  # noqa: E402
from mlipserve.models.potential import StructureRejected, check_card  # noqa: E402
from mlipserve.models.registry import ModelRegistry  # noqa: E402
from mlipserve.models.system import AtomicSystem  # noqa: E402
from mlipserve.server.config import ServerSettings  # noqa: E402
from scipy.interpolate import CubicSpline  # noqa: E402

from tests.conftest import RunningServer, free_port  # noqa: E402
from tests.toy_potential import saved_for_backward  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "ace"
SHARED_ACE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "ace" / "acepotentials_jl"
TIAL_YACE = SHARED_ACE / "TiAl_tutorial_pot.yace"
TIAL_TABLE = SHARED_ACE / "TiAl_tutorial_pot_pairpot.table"
FITTED = ("Cu_sbessel", "HfO_chebexpcos", "TiAl_chebpow")

E_TOL = 1e-6  # eV/atom
F_TOL = 1e-5  # eV/Å
S_TOL = 1e-6  # eV/Å³


def random_structures(elements: tuple[str, ...], seed: int) -> list[Atoms]:
    """Periodic cells at a normal and a compressed density, molecules, and two atoms out of each other's reach."""
    rng = np.random.default_rng(seed)
    structures = []
    for index, (lattice, nearest, repeat) in enumerate(
        [("fcc", 2.6, (2, 2, 2)), ("bcc", 2.5, (2, 2, 2)), ("fcc", 1.95, (2, 2, 1)), ("sc", 2.3, (3, 3, 2))]
    ):
        if lattice == "fcc":
            basis, a = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], nearest * np.sqrt(2)
        elif lattice == "bcc":
            basis, a = [[0, 0, 0], [0.5, 0.5, 0.5]], nearest * 2 / np.sqrt(3)
        else:
            basis, a = [[0, 0, 0]], nearest
        atoms = Atoms("X" * len(basis), scaled_positions=basis, cell=np.eye(3) * a, pbc=True).repeat(repeat)
        atoms.set_chemical_symbols(rng.choice(elements, len(atoms)))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.04 * rng.standard_normal((3, 3))), scale_atoms=True)
        atoms.rattle(0.12, seed=seed + index)
        structures.append(atoms)
    for n_atoms, box, closest in ((9, 5.0, 1.7), (5, 3.5, 1.5)):
        positions = []
        while len(positions) < n_atoms:
            trial = rng.uniform(0, box, 3)
            if all(np.linalg.norm(trial - p) > closest for p in positions):
                positions.append(trial)
        structures.append(Atoms(rng.choice(elements, n_atoms), positions=positions))
    structures.append(Atoms(elements[-1] * 2, positions=[[0, 0, 0], [9, 0, 0]]))  # no neighbours: E0 only
    return structures


def card_for(path: Path, cutoff: float, **options) -> ModelCard:
    model = read_potential(path)
    return ModelCard.from_dict(
        {
            "name": path.stem,
            "family": "ace",
            "version": "test",
            "checkpoint": path.name,
            "sha256": file_sha256(path),
            "license": "MIT",
            "elements": list(model.elements),
            "cutoff": cutoff,
            "options": options,
        },
        root=path.parent,
    )


def torch_potential(path: Path) -> AcePotential:
    model = read_potential(path)
    return AcePotential(card_for(path, model.cutoff), model)


def reference(path: Path, structures: list[Atoms]) -> list[tuple[float, np.ndarray, np.ndarray | None]]:
    calculator = pyace.PyACECalculator(str(path))
    results = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        stress = atoms.get_stress(voigt=False) if atoms.pbc.any() else None
        results.append((atoms.get_potential_energy(), atoms.get_forces(), stress))
    return results


def assert_matches(structures, predictions, expected, label: str) -> dict[str, float]:
    worst = {"energy": 0.0, "forces": 0.0, "stress": 0.0}
    for index, (atoms, prediction, (energy, forces, stress)) in enumerate(
        zip(structures, predictions, expected, strict=True)
    ):
        de = abs(prediction.energy - energy) / len(atoms)
        df = float(np.abs(prediction.forces - forces).max())
        assert de < E_TOL, f"{label}[{index}]: energy off by {de:.2e} eV/atom"
        assert df < F_TOL, f"{label}[{index}]: forces off by {df:.2e} eV/Å"
        worst["energy"], worst["forces"] = max(worst["energy"], de), max(worst["forces"], df)
        if stress is not None:
            ds = float(np.abs(prediction.stress - stress).max())
            assert ds < S_TOL, f"{label}[{index}]: stress off by {ds:.2e} eV/Å³"
            worst["stress"] = max(worst["stress"], ds)
        else:
            assert prediction.stress is None
    return worst


@pytest.mark.parametrize("suffix", [".yaml", ".yace"])
@pytest.mark.parametrize("name", FITTED)
def test_fitted_potentials_match_python_ace(name: str, suffix: str) -> None:
    path = DATA / f"{name}{suffix}"
    potential = torch_potential(path)
    structures = random_structures(potential.model.elements, seed=len(name))
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for atoms in structures])
    worst = assert_matches(structures, predictions, reference(path, structures), path.name)
    print(f"{path.name}: max |dE| {worst['energy']:.1e} eV/atom, |dF| {worst['forces']:.1e} eV/Å")


@pytest.mark.parametrize("name", FITTED)
def test_exact_radial_functions_differ_from_pacemaker_only_by_its_splines(name: str) -> None:
    """``radial: exact`` skips pacemaker's 0.001 Å look-up tables: a small, real difference, largest in the core."""
    path = DATA / f"{name}.yace"
    model = read_potential(path)
    exact = AcePotential(card_for(path, model.cutoff), model, radial="exact")
    structures = random_structures(model.elements, seed=len(name))
    predictions = exact.predict([AtomicSystem.from_ase(atoms) for atoms in structures])
    expected = reference(path, structures)
    de = max(abs(p.energy - e) / len(a) for p, (e, _, _), a in zip(predictions, expected, structures, strict=True))
    df = max(float(np.abs(p.forces - f).max()) for p, (_, f, _) in zip(predictions, expected, strict=True))
    print(f"{path.name} exact radial functions vs pacemaker's splines: |dE| {de:.1e} eV/atom, |dF| {df:.1e} eV/Å")
    assert 0 < de < 1e-8
    assert 1e-12 < df < 2e-4


def test_rank_six_couplings_match_python_ace(tmp_path: Path) -> None:
    """Rank-6 B-functions (beyond the fits' rank 5), coupled by our Clebsch-Gordan code, against pacemaker's."""
    data = load_yaml(DATA / "Cu_sbessel.yaml")
    block = data["species"][0]
    rng = np.random.default_rng(0)
    for ls, lint in (
        ([1, 1, 1, 1, 1, 1], [2, 2, 2, 2]),
        ([2, 1, 1, 2, 1, 1], [1, 2, 2, 2]),
        ([0, 2, 1, 1, 2, 2], [2, 0, 2, 2]),
    ):
        block["nbody"].append(
            {
                "type": "Cu " * 6 + "Cu",
                "nr": [1, 1, 2, 1, 2, 3],
                "nl": ls,
                "lint": lint,
                "c": rng.normal(size=2).tolist(),
            }
        )
    path = tmp_path / "Cu_rank6.yaml"
    path.write_text(yaml.safe_dump(data, default_flow_style=None))
    potential = torch_potential(path)
    assert max(f.rank for f in potential.model.functions[0]) == 6
    structures = random_structures(("Cu",), seed=6)
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for atoms in structures])
    worst = assert_matches(structures, predictions, reference(path, structures), path.name)
    print(f"{path.name}: max |dE| {worst['energy']:.1e} eV/atom, |dF| {worst['forces']:.1e} eV/Å")


@pytest.mark.parametrize("name", FITTED)
def test_yaml_and_yace_of_one_fit_are_the_same_model(name: str) -> None:
    """Our own B -> C-tilde coupling of the .yaml against pacemaker's conversion stored in the .yace."""
    from_yaml, from_yace = torch_potential(DATA / f"{name}.yaml"), torch_potential(DATA / f"{name}.yace")
    systems = [AtomicSystem.from_ase(a) for a in random_structures(from_yaml.model.elements, seed=7)]
    for a, b in zip(from_yaml.predict(systems), from_yace.predict(systems), strict=True):
        assert abs(a.energy - b.energy) < 1e-9
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-9)


def test_chunked_products_give_the_same_result() -> None:
    """Large batches evaluate the products in chunks of atoms; the chunking must not change the numbers."""
    whole, chunked = torch_potential(DATA / "HfO_chebexpcos.yace"), torch_potential(DATA / "HfO_chebexpcos.yace")
    chunked.product_chunk_elements = 64  # a few atoms per chunk
    systems = [AtomicSystem.from_ase(a) for a in random_structures(("Hf", "O"), seed=4)]
    for a, b in zip(whole.predict(systems), chunked.predict(systems), strict=True):
        assert abs(a.energy - b.energy) < 1e-10
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-10)
        if a.stress is not None:
            np.testing.assert_allclose(a.stress, b.stress, atol=1e-12)


def test_fitted_set_covers_the_variants() -> None:
    """The fixtures really exercise each radial basis, embedding and inner-cutoff regime."""
    models = [read_potential(DATA / f"{name}.yaml") for name in FITTED]
    assert {b.radial_basis for m in models for b in m.bonds.values()} == {"SBessel", "ChebExpCos", "ChebPow"}
    assert {e.npoti for m in models for e in m.embeddings.values()} == {"FinnisSinclair", "FinnisSinclairShiftedScaled"}
    assert {m.inner_cutoff_type for m in models} == {"zbl", "density", "distance"}
    assert max(f.rank for m in models for fs in m.functions.values() for f in fs) >= 5
    assert any(len(m.elements) == 2 for m in models)


def pair_table_reference(structures: list[Atoms]) -> list[tuple[float, np.ndarray, np.ndarray | None]]:
    """Pair energies, forces and stress from a SciPy cubic spline through the table's energies."""
    table = read_pair_table(TIAL_TABLE)
    splines = {pair: CubicSpline(r, energy) for pair, (r, energy, _) in table.sections.items()}
    results = []
    for atoms in structures:
        i, j, d, vectors = neighbor_list("ijdD", atoms, table.cutoff)
        energy, forces, virial = 0.0, np.zeros((len(atoms), 3)), np.zeros((3, 3))
        symbols = atoms.get_chemical_symbols()
        for a, b, r, vector in zip(i, j, d, vectors, strict=True):
            spline = splines[frozenset((symbols[a], symbols[b]))]
            energy += 0.5 * float(spline(r))
            gradient = 0.5 * float(spline(r, 1)) * vector / r
            forces[a] += gradient
            forces[b] -= gradient
            virial += np.outer(vector, gradient)
        stress = virial / atoms.get_volume() if atoms.pbc.any() else None
        results.append((energy, forces, stress))
    return results


def test_acepotentials_jl_tial_with_pair_table_matches(tmp_path: Path) -> None:
    for source in (TIAL_YACE, TIAL_TABLE):
        shutil.copy(source, tmp_path / source.name)
    card = card_for(
        tmp_path / TIAL_YACE.name,
        7.0,
        pair_table=TIAL_TABLE.name,
        pair_table_sha256=file_sha256(TIAL_TABLE),
    )
    potential = load_potential(card, card.verified_checkpoint(), torch.device("cpu"))
    structures = random_structures(("Al", "Ti"), seed=3)
    ace_part, pair_part = reference(TIAL_YACE, structures), pair_table_reference(structures)
    expected = [
        (ea + ep, fa + fp, None if sa is None else sa + sp)
        for (ea, fa, sa), (ep, fp, sp) in zip(ace_part, pair_part, strict=True)
    ]
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for atoms in structures])
    worst = assert_matches(structures, predictions, expected, "TiAl+table")
    print(f"TiAl .yace + pair table: max |dE| {worst['energy']:.1e} eV/atom, |dF| {worst['forces']:.1e} eV/Å")
    assert all(abs(ep) > 1e-3 for ep, _, _ in pair_part[:2])  # the table does contribute


def test_tial_dft_errors_are_those_of_a_fitted_model(tmp_path: Path) -> None:
    """Energy and force RMSE of the Ti-Al potential (+ pair table) on its DFT subset: fitted-model sized."""
    for source in (TIAL_YACE, TIAL_TABLE):
        shutil.copy(source, tmp_path / source.name)
    card = card_for(
        tmp_path / TIAL_YACE.name, 7.0, pair_table=TIAL_TABLE.name, pair_table_sha256=file_sha256(TIAL_TABLE)
    )
    potential = load_potential(card, card.verified_checkpoint(), torch.device("cpu"))
    frames = ase.io.read(SHARED_ACE / "TiAl_tutorial_DB_tenth.xyz", index=":", format="extxyz")
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for atoms in frames])
    energies = [a.calc.results["energy"] if a.calc else a.info["energy"] for a in frames]
    forces = [a.calc.results["forces"] if a.calc and "forces" in a.calc.results else a.arrays["force"] for a in frames]
    energy_errors = [(p.energy - e) / len(a) for p, e, a in zip(predictions, energies, frames, strict=True)]
    force_errors = np.concatenate([(p.forces - f).ravel() for p, f in zip(predictions, forces, strict=True)])
    energy_rmse, force_rmse = (
        float(np.sqrt(np.mean(np.square(energy_errors)))),
        float(np.sqrt(np.mean(force_errors**2))),
    )
    print(f"Ti-Al DFT subset: energy RMSE {1000 * energy_rmse:.2f} meV/atom, force RMSE {force_rmse:.3f} eV/Å")
    # E0 alone is ~1000 eV/atom off a cohesive energy; a working potential is within tens of meV/atom
    assert energy_rmse < 0.05
    assert force_rmse < 0.5


def test_registry_loads_an_ace_card_with_its_pair_table(tmp_path: Path) -> None:
    for source in (TIAL_YACE, TIAL_TABLE):
        shutil.copy(source, tmp_path / source.name)
    (tmp_path / "tial.yaml").write_text(
        "name: tial\nfamily: ace\nversion: '0.2.3'\ncheckpoint: TiAl_tutorial_pot.yace\n"
        f"sha256: {file_sha256(TIAL_YACE)}\nlicense: MIT\nelements: Al Ti\ncutoff: 7.0\n"
        f"options: {{pair_table: {TIAL_TABLE.name}, pair_table_sha256: {file_sha256(TIAL_TABLE)}}}\n"
    )
    potential = load_model(ModelRegistry(tmp_path), "tial", device="cpu")
    atoms = random_structures(("Al", "Ti"), seed=1)[0]
    (prediction,) = potential.predict([AtomicSystem.from_ase(atoms)])
    assert prediction.forces.shape == (len(atoms), 3) and prediction.stress.shape == (3, 3)


def test_pair_table_must_be_inside_the_model_dir_and_unaltered(tmp_path: Path) -> None:
    inside = tmp_path / "models"
    inside.mkdir()
    shutil.copy(TIAL_YACE, inside / TIAL_YACE.name)
    shutil.copy(TIAL_TABLE, tmp_path / TIAL_TABLE.name)  # outside the model dir
    card = card_for(
        inside / TIAL_YACE.name, 7.0, pair_table=f"../{TIAL_TABLE.name}", pair_table_sha256=file_sha256(TIAL_TABLE)
    )
    with pytest.raises(CardError, match="outside the model directory"):
        load_potential(card, card.verified_checkpoint(), torch.device("cpu"))
    shutil.copy(TIAL_TABLE, inside / TIAL_TABLE.name)
    card = card_for(inside / TIAL_YACE.name, 7.0, pair_table=TIAL_TABLE.name, pair_table_sha256="0" * 64)
    with pytest.raises(CardError, match="sha256"):
        load_potential(card, card.verified_checkpoint(), torch.device("cpu"))
    card = card_for(inside / TIAL_YACE.name, 7.0, pair_table=TIAL_TABLE.name)
    with pytest.raises(CardError, match="pair_table_sha256"):
        load_potential(card, card.verified_checkpoint(), torch.device("cpu"))


def test_card_cutoff_and_elements_are_checked() -> None:
    path = DATA / "Cu_sbessel.yace"
    loaded = load_potential(card_for(path, 6.0), path, torch.device("cpu"))
    with pytest.raises(CardError, match="cutoff"):
        check_card(loaded.card, loaded)  # as the registry does once the file is loaded
    more = dataclasses.replace(loaded.card, elements=("Cu", "Ag"), cutoff=loaded.cutoff)
    with pytest.raises(CardError, match=r"lists elements Cu Ag, but the loaded potential covers Cu"):
        check_card(more, loaded)
    with pytest.raises(CardError, match="unknown ACE options"):
        load_potential(card_for(path, 4.5, modal="x"), path, torch.device("cpu"))


def test_unknown_element_is_rejected() -> None:
    potential = torch_potential(DATA / "Cu_sbessel.yace")
    with pytest.raises(ValueError, match=r"element\(s\) O not covered by model 'Cu_sbessel'") as caught:
        potential.check(AtomicSystem.from_arrays([8, 29], [[0, 0, 0], [2, 0, 0]]))
    assert isinstance(caught.value, StructureRejected) and caught.value.code == "element_not_covered"


def test_energy_only_builds_no_autograd_graph() -> None:
    potential = torch_potential(DATA / "HfO_chebexpcos.yace")
    systems = [AtomicSystem.from_ase(atoms) for atoms in random_structures(("Hf", "O"), seed=8)]
    full = potential.predict(systems)
    with saved_for_backward() as saved:
        energy_only = potential.predict(systems, ["energy"])
    assert saved == []
    for alone, together in zip(energy_only, full, strict=True):
        assert alone.forces is None and alone.stress is None
        assert alone.energy == pytest.approx(together.energy, rel=0, abs=1e-12)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("radbasename: ChebPow", "radbasename: ChebSqrt"), "radial basis 'ChebSqrt' is not supported"),
        (("npoti: FinnisSinclairShiftedScaled", "npoti: Polynomial"), "embedding 'Polynomial' is not supported"),
        (("inner_cutoff_type: distance", "inner_cutoff_type: fancy"), "inner_cutoff_type"),
    ],
)
def test_unsupported_variants_are_named(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = (DATA / "TiAl_chebpow.yace").read_text()
    assert edit[0] in text
    path = tmp_path / "edited.yace"
    path.write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(AceFormatError, match=message):
        read_potential(path)


def test_legacy_ace_text_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "Cu.ace"
    path.write_text("nelements=1\nelements: Cu\n\nlmax=2\n")
    with pytest.raises(AceFormatError, match="legacy"):
        read_potential(path)


def test_float32_option_is_close_to_float64(tmp_path: Path) -> None:
    source = DATA / "HfO_chebexpcos.yace"
    shutil.copy(source, tmp_path / source.name)
    model = read_potential(source)
    card32 = card_for(tmp_path / source.name, model.cutoff, dtype="float32")
    single = load_potential(card32, card32.verified_checkpoint(), torch.device("cpu"))
    double = torch_potential(source)
    assert single.dtype == torch.float32 and double.dtype == torch.float64
    systems = [AtomicSystem.from_ase(a) for a in random_structures(model.elements, seed=5)[:2]]
    for a, b in zip(single.predict(systems), double.predict(systems), strict=True):
        assert abs(a.energy - b.energy) / len(a.forces) < 1e-4
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    path = DATA / "TiAl_chebpow.yace"
    model = read_potential(path)
    cpu = torch_potential(path)
    gpu = AcePotential(card_for(path, model.cutoff), model, device="cuda")
    systems = [AtomicSystem.from_ase(a) for a in random_structures(model.elements, seed=2)]
    for a, b in zip(cpu.predict(systems), gpu.predict(systems), strict=True):
        assert abs(a.energy - b.energy) < 1e-9
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-9)


def test_served_over_http_like_any_model(tmp_path: Path) -> None:
    shutil.copy(DATA / "HfO_chebexpcos.yace", tmp_path / "HfO_chebexpcos.yace")
    (tmp_path / "hfo-ace.yaml").write_text(
        "name: hfo-ace\nfamily: ace\nversion: test\ncheckpoint: HfO_chebexpcos.yace\n"
        f"sha256: {file_sha256(DATA / 'HfO_chebexpcos.yace')}\nlicense: MIT\nelements: Hf O\ncutoff: 5.0\n"
    )
    structures = random_structures(("Hf", "O"), seed=11)
    expected = reference(DATA / "HfO_chebexpcos.yace", structures)
    settings = ServerSettings(port=free_port(), models=("hfo-ace",), model_dir=tmp_path, device="cpu")
    with RunningServer(settings) as running, Client(running.url, model="hfo-ace", progress=False) as client:
        client.wait_until_ready(timeout=120)
        results = client.predict(structures)
    assert results[0].model["name"] == "hfo-ace" and results[0].model["dtype"] == "float64"
    for result, (energy, forces, _) in zip(results, expected, strict=True):
        assert abs(result.energy - energy) < 1e-6 * len(forces)
        np.testing.assert_allclose(result.forces, forces, atol=F_TOL)
