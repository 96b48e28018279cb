"""The `gap` family (QUIP/GAP XML: distance_2b + SOAP, sparse GP) against quippy on structures no fixture contains.

Three potentials: QUIP's own 2-body water test GAP (distance_2b, ARD SE kernel, sparse points in separate files),
LAMMPS' Si example (SOAP, dot-product kernel, sparse points in a separate file, summed with QUIP's Glue potential)
and a small Hf-O fit made here (``tests/data/gap/make_hfo2_gap.py``: distance_2b per element pair plus one
two-species SOAP per centre element, sparse points inline). Each is loaded through a card as the server does and
compared with ``quippy.potential.Potential`` (quippy-ase, a test-only reference) on rattled, strained, triclinic
cells and molecules, in one batch. The water file's own reference frame and the LAMMPS log's energy are checked too.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read, write
from mlipserve.models.cards import CardError, file_sha256
from mlipserve.models.loading import load_model
from mlipserve.models.potential import Potential
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.options import RelaxOptions, RelaxSpec
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.loop import Worker
from mlipserve.server.engine.tasks import Task

from .conftest import DATASETS, FIXTURES, torch_threads, write_card
from .test_graph_and_worker import ListSource

WATER = FIXTURES / "gap" / "quip_tests_water_2b"
SILICON = FIXTURES / "gap" / "lammps_examples_quip_Si"
HFO2 = Path(__file__).resolve().parent / "data" / "gap" / "HfO2_2b_soap.xml"
SI_LABEL = "GAP_2015_2_20_0_10_54_35_765"
#: Agreement with quippy: energy relative (and 1e-8 eV absolute), forces eV/Å, stress eV/Å³.
ENERGY_RTOL, FORCE_ATOL, STRESS_ATOL = 1e-9, 1e-7, 1e-9


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def quippy_calculator(*args: str, **kwargs: str):
    """quippy's ASE calculator: the reference (quippy-ase, in the dev extra; the test is skipped without it)."""
    quippy = pytest.importorskip("quippy.potential", reason="quippy-ase (the dev extra) is the GAP reference")
    return quippy.Potential(*args, **kwargs)


def install_water(model_dir: Path, hashes: dict[str, str] | None = None) -> Potential:
    sparse = sorted(WATER.glob("GAP.xml.sparseX.*"))
    for path in sparse:
        shutil.copy(path, model_dir / path.name)
    hashes = {path.name: file_sha256(path) for path in sparse} if hashes is None else hashes
    options = "{sparse_files: {" + ", ".join(f"{name}: {digest}" for name, digest in hashes.items()) + "}}"
    write_card(model_dir, "water-2b", WATER / "GAP.xml", family="gap", elements="H O", cutoff=4.0, options=options)
    return load_model(ModelRegistry(model_dir), "water-2b", "cpu")


def install_silicon(model_dir: Path) -> Potential:
    sparse = SILICON / "gap_example_sparse.dat"
    shutil.copy(sparse, model_dir / sparse.name)
    options = f"{{sparse_files: {{{sparse.name}: {file_sha256(sparse)}}}}}"
    write_card(model_dir, "si-gap", SILICON / "gap_example.xml", family="gap", elements="Si O", cutoff=4.0,
               options=options)  # fmt: skip
    return load_model(ModelRegistry(model_dir), "si-gap", "cpu")


def install_hfo2(model_dir: Path) -> Potential:
    write_card(model_dir, "hfo2-gap", HFO2, family="gap", elements="Hf O", cutoff=4.5)
    return load_model(ModelRegistry(model_dir), "hfo2-gap", "cpu")


def strained(atoms: Atoms, seed: int, rattle: float = 0.05, strain: float = 0.03) -> Atoms:
    """A rattled copy with a random (triclinic) strain of its cell."""
    atoms = atoms.copy()
    atoms.calc = None
    rng = np.random.default_rng(seed)
    atoms.rattle(rattle, seed=seed)
    atoms.set_cell(atoms.cell @ (np.eye(3) + strain * rng.standard_normal((3, 3))), scale_atoms=True)
    return atoms


def assert_matches_quippy(potential: Potential, sample: list[Atoms], calculator) -> None:
    """One batch of ``sample`` through ``potential`` equals quippy structure by structure."""
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for atoms in sample])
    for atoms, prediction in zip(sample, predictions, strict=True):
        atoms = atoms.copy()
        atoms.calc = calculator
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        assert prediction.energy == pytest.approx(energy, rel=ENERGY_RTOL, abs=1e-8)
        np.testing.assert_allclose(prediction.forces, forces, rtol=0, atol=FORCE_ATOL)
        assert np.abs(forces).max() > 0.1  # forces large enough to tell a wrong one
        if atoms.pbc.all():
            np.testing.assert_allclose(prediction.stress, atoms.get_stress(voigt=False), rtol=0, atol=STRESS_ATOL)
        else:
            assert prediction.stress is None


def test_water_2b_matches_the_fixture_frame_and_quippy(tmp_path: Path) -> None:
    """distance_2b with sparse points in separate files: QUIP's reference frame, then unseen water boxes."""
    potential = install_water(tmp_path)
    frame = read(WATER / "gap_sample.xyz")
    prediction = potential.predict([AtomicSystem.from_ase(frame)])[0]
    assert prediction.energy == pytest.approx(frame.calc.results["energy"], abs=1e-7)
    np.testing.assert_allclose(prediction.forces, frame.arrays["force"], atol=1e-7)

    molecule = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0.1, 0], [-0.2, 0.93, 0.1]])
    small = Atoms(frame.numbers[:12], frame.positions[:12], cell=np.diag([4.6, 4.9, 5.2]), pbc=True)
    sample = [strained(frame, 1), strained(frame, 2, rattle=0.1, strain=0.05), strained(small, 3), molecule]
    assert_matches_quippy(potential, sample, quippy_calculator(param_filename=str(WATER / "GAP.xml")))


def test_silicon_soap_plus_glue_matches_quippy_and_the_lammps_log(tmp_path: Path) -> None:
    """SOAP (dot product, zeta 4) + QUIP's Glue core, served as their sum; Si-O cells use the Glue's O type too."""
    potential = install_silicon(tmp_path)
    lammps = read(SILICON / "data_gap", format="lammps-data", atom_style="atomic")
    lammps.numbers[:] = 14
    assert potential.predict([AtomicSystem.from_ase(lammps)])[0].energy == pytest.approx(-10412.677, abs=1e-3)

    rng = np.random.default_rng(5)
    diamond = bulk("Si", "diamond", a=5.43)
    oxide = strained(diamond * (2, 2, 2), 7, rattle=0.2)
    oxide.numbers[rng.choice(len(oxide), 5, replace=False)] = 8
    oxide.positions[1] = oxide.positions[0] + [0.8, 0.3, 0.2]  # inside the Glue's pair range, below its first knot
    dimer = Atoms("Si2", positions=[[0, 0, 0], [1.9, 0.3, 0.1]])
    sample = [strained(lammps, 1, rattle=0.1), strained(diamond * (2, 1, 1), 2, rattle=0.15, strain=0.05), oxide,
              dimer]  # fmt: skip
    reference = quippy_calculator(f"Potential xml_label={SI_LABEL}", param_filename=str(SILICON / "gap_example.xml"))
    assert_matches_quippy(potential, sample, reference)


def test_two_species_soap_fit_matches_quippy(tmp_path: Path) -> None:
    """The Hf-O fit: per-pair distance_2b, one SOAP per centre element over both species, inline sparse points."""
    potential = install_hfo2(tmp_path)
    frames = read(DATASETS / "SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz", index=":", format="extxyz")
    cluster = Atoms("Hf2O3", positions=[[0, 0, 0], [3.1, 0.2, 0], [1.5, 1.2, 0.3], [1.6, -1.1, 0.2], [1.4, 0.1, 1.9]])
    sample = [strained(frames[0], 1), strained(frames[5], 2, rattle=0.1), strained(frames[4], 3, strain=0.05), cluster]
    assert_matches_quippy(potential, sample, quippy_calculator(param_filename=str(HFO2)))


def test_gto_and_poly_radial_bases_match_quippy_on_a_fit_made_here(tmp_path: Path) -> None:
    """gap_fit (quippy's) fits one GAP with two Si SOAPs, one in the GTO radial basis and one in POLY, on four mlearn
    Si frames; the fit is then served and compared on strained, rattled copies."""
    pytest.importorskip("quippy", reason="gap_fit comes with quippy-ase (the dev extra)")
    frames = sorted(read(DATASETS / "mlearn_Si_test_DFT.DERIVED.extxyz", index=":", format="extxyz"), key=len)[:4]
    for atoms in frames:
        atoms.info["dft_energy"] = atoms.get_potential_energy()
        atoms.arrays["dft_forces"] = atoms.get_forces()
        atoms.calc = None
    write(tmp_path / "train.xyz", frames, format="extxyz")
    soap = ("soap radial_basis={} l_max=3 n_max=4 atom_sigma=0.5 cutoff=4.0 cutoff_transition_width=0.8 "
            "delta=0.5 zeta=2 covariance_type=dot_product n_sparse=10 sparse_method=cur_points")  # fmt: skip
    command = [
        str(Path(sys.executable).with_name("gap_fit")), "at_file=train.xyz",
        f"gap={{{soap.format('GTO')} : {soap.format('POLY')}}}", "default_sigma={0.005 0.1 0.05 0.0}",
        "e0_method=average", "energy_parameter_name=dft_energy", "force_parameter_name=dft_forces",
        "sparse_jitter=1e-8", "sparse_separate_file=F", "do_copy_at_file=F", "rnd_seed=3", "gp_file=si.xml",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=tmp_path, stdout=subprocess.DEVNULL, timeout=300)
    write_card(tmp_path, "si-bases", tmp_path / "si.xml", family="gap", elements="Si", cutoff=4.0)
    potential = load_model(ModelRegistry(tmp_path), "si-bases", "cpu")
    assert {term.descriptor.radial_basis for term in potential.terms} == {"GTO", "POLY"}
    sample = [strained(frames[0], 1), strained(frames[2], 2, rattle=0.1), strained(frames[3], 3, strain=0.05)]
    assert_matches_quippy(potential, sample, quippy_calculator(param_filename=str(tmp_path / "si.xml")))


def test_sparse_files_are_hash_checked(tmp_path: Path) -> None:
    """A sparse point file must be listed in options.sparse_files with its sha256, and must match it."""
    names = sorted(path.name for path in WATER.glob("GAP.xml.sparseX.*"))
    hashes = {name: file_sha256(WATER / name) for name in names}
    with pytest.raises(CardError, match=names[0]):
        install_water(tmp_path, {name: digest for name, digest in hashes.items() if name != names[0]})
    with pytest.raises(CardError, match="sha256"):
        install_water(tmp_path, hashes | {names[1]: "0" * 64})


@pytest.mark.parametrize(
    ("old", "new", "refused"),
    [
        ("distance_2b cutoff=4.0", "angle_3b cutoff=4.0", "angle_3b"),
        ("soap l_max=2", "soap radial_basis=BESSEL l_max=2", "radial_basis=BESSEL"),
        ("soap l_max=2", "soap diagonal_radial=T l_max=2", "diagonal_radial"),
        ('init_args="IP GAP', 'init_args="IP SW', "SW"),
        ('covariance_type="2"', 'covariance_type="4"', "pp"),
    ],
)
def test_unsupported_features_are_refused_by_name(tmp_path: Path, old: str, new: str, refused: str) -> None:
    text = HFO2.read_text()
    assert old in text
    path = tmp_path / "edited.xml"
    path.write_text(text.replace(old, new))
    write_card(tmp_path, "edited", path, family="gap", elements="Hf O", cutoff=4.5)
    with pytest.raises(CardError, match=refused):
        load_model(ModelRegistry(tmp_path), "edited", "cpu")


def test_relaxation_through_the_engine_ends_at_a_minimum_of_quippys_surface(tmp_path: Path) -> None:
    """A worker relaxes rattled, strained silicon (SOAP GAP + Glue, positions and cell); where it stops, quippy finds
    the same energy, forces below fmax and a lower energy than at the start."""
    potential = install_silicon(tmp_path)
    options = RelaxOptions(fmax=0.02, max_steps=150)
    atoms = strained(bulk("Si", "diamond", a=5.43), 11, rattle=0.1, strain=0.03)
    task = Task("relax-si", "si-gap", AtomicSystem.from_ase(atoms), (), RelaxSpec(options))
    source = ListSource([task])
    worker = Worker(potential, source, BatchPolicy(max_atoms=1000, max_wait=0.0, idle_poll=0.01))
    for _ in itertools.count():
        worker.step()
        if source.delivered:
            break
    result = source.delivered[0]
    outcome = result.relaxation
    assert outcome is not None and outcome.converged and outcome.steps > 10
    calculator = quippy_calculator(f"Potential xml_label={SI_LABEL}",
                                            param_filename=str(SILICON / "gap_example.xml"))  # fmt: skip
    start, end = atoms.copy(), outcome.system.to_ase()
    start.calc = end.calc = calculator
    assert result.prediction.energy == pytest.approx(end.get_potential_energy(), rel=ENERGY_RTOL)
    assert np.abs(end.get_forces()).max() < options.fmax
    assert end.get_potential_energy() < start.get_potential_energy() - 0.01
    assert np.abs(end.get_stress()).max() * end.get_volume() < 3 * options.fmax  # the cell relaxed too
