"""Every model the installed sevenn and chgnet wheels ship, loaded through its built-in card, against the package's
own ASE calculator on the same weights (SevenNetCalculator by pretrained name and head, CHGNetCalculator by
``CHGNet.load(model_name=...)``), on small rattled and strained crystals evaluated as one batch.

7net-0 and chgnet-0.3.0 are checked in their own test files; this file covers the others.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sevenn")
pytest.importorskip("chgnet")

from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator
from chgnet.model import CHGNet
from chgnet.model.dynamics import CHGNetCalculator
from mlipserve.clients import Client
from mlipserve.models.cards import CardError
from mlipserve.models.loading import load_model, load_potential
from mlipserve.models.potential import Potential, Prediction, StructureRejected
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from sevenn.calculator import SevenNetCalculator

from .conftest import ready_server, torch_threads

# The float32 tolerances of the 7net-0 and chgnet-0.3.0 tests.
E_TOL = 1e-5  # eV/atom
F_TOL = 1e-4  # eV/Å
S_TOL = 1e-5  # eV/Å³

#: Built-in card -> the package's own calculator for the same weights (and fidelity head).
SEVENNET = {
    "7net-l3i5": ("7net-l3i5", None),
    "7net-0-22may2024": ("7net-0_22may2024", None),
    "7net-mf-0": ("7net-mf-0", "PBE"),
    "7net-mf-0-r2scan": ("7net-mf-0", "R2SCAN"),
}
CHGNET = {"chgnet-0.2.0": "0.2.0", "chgnet-r2scan": "r2scan"}
#: Elements, beyond MPtrj's Po to Ra, that a card keeps out: the r2SCAN data sets hold no Yb.
NARROWED = {"7net-mf-0-r2scan": 70, "chgnet-r2scan": 70}


def crystals() -> list[tuple[str, Atoms]]:
    """Five small crystals (2 to 12 atoms), each strained and rattled off its ideal lattice."""
    cases = [
        ("Si", bulk("Si", "diamond", a=5.43, cubic=True), 1),  # 8 atoms
        ("NaCl", bulk("NaCl", "rocksalt", a=5.64), 2),  # 2 atoms, primitive (a non-orthogonal cell)
        ("HfO2", bulk("HfO2", "fluorite", a=5.1, cubic=True), 3),  # 12 atoms
        ("Cu", bulk("Cu", "fcc", a=3.61, cubic=True), 4),  # 4 atoms
        ("SrTiO3", perovskite(), 5),  # 5 atoms
    ]
    sample = []
    for label, atoms, seed in cases:
        rng = np.random.default_rng(seed)
        strain = np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(0.05, seed=seed)
        sample.append((label, atoms))
    return sample


def perovskite() -> Atoms:
    """Cubic SrTiO3, 5 atoms."""
    a = 3.905
    return Atoms(
        "SrTiO3",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        cell=np.eye(3) * a,
        pbc=True,
    )


def sevennet_calculator(model: str, modal: str | None) -> SevenNetCalculator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tensor product accelerator", torch.jit.script deprecation
        return SevenNetCalculator(model=model, device="cpu", modal=modal)


def chgnet_calculator(model_name: str) -> CHGNetCalculator:
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)
        # stress_weight converts chgnet's GPa to ASE's eV/Å³ (chgnet's documented default, made explicit).
        return CHGNetCalculator(model, use_device="cpu", stress_weight=units.GPa, on_isolated_atoms="error")


def reference_calculator(name: str) -> Calculator:
    if name in SEVENNET:
        return sevennet_calculator(*SEVENNET[name])
    return chgnet_calculator(CHGNET[name])


def reference(calc: Calculator, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    with contextlib.redirect_stdout(io.StringIO()):
        return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


def assert_matches(label: str, atoms: Atoms, ours: Prediction, energy: float, forces, stress) -> None:
    n = len(atoms)
    assert abs(ours.energy - energy) / n <= E_TOL, f"{label}: energy {ours.energy} vs {energy}"
    assert ours.forces is not None and ours.forces.shape == (n, 3) and ours.forces.dtype == np.float64
    np.testing.assert_allclose(ours.forces, forces, rtol=0, atol=F_TOL, err_msg=label)
    assert ours.stress is not None and ours.stress.shape == (3, 3)
    np.testing.assert_allclose(ours.stress, stress, rtol=0, atol=S_TOL, err_msg=label)


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def builtin_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")  # empty: only the built-in cards


@pytest.fixture(scope="module")
def loaded(builtin_only: Path) -> Callable[[str], Potential]:
    """Load each model once for the module."""
    cache: dict[str, Potential] = {}

    def load(name: str) -> Potential:
        if name not in cache:
            cache[name] = load_model(ModelRegistry(builtin_only), name, "cpu")
        return cache[name]

    return load


@pytest.mark.parametrize("name", [*SEVENNET, *CHGNET])
def test_shipped_model_matches_its_package_calculator(name: str, loaded) -> None:
    potential = loaded(name)
    card = potential.card
    assert card.builtin and card.checkpoint.startswith("package://")
    assert str(potential.dtype) == "torch.float32" and potential.cutoff == card.cutoff
    # the loaded model is narrowed to the card's elements: MPtrj's 89, or 88 for an r2SCAN model (no Yb)
    assert potential.elements == card.atomic_numbers
    assert len(potential.elements) == (88 if name in NARROWED else 89)
    assert {84, 85, 86, 87, 88}.isdisjoint(potential.elements)

    sample = crystals()
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for _, atoms in sample])  # one batch
    calc = reference_calculator(name)
    for (label, atoms), ours in zip(sample, predictions, strict=True):
        assert_matches(f"{name} {label}", atoms, ours, *reference(calc, atoms))


@pytest.mark.parametrize("name", sorted(NARROWED))
def test_r2scan_models_refuse_ytterbium(name: str, loaded) -> None:
    potential = loaded(name)
    assert NARROWED[name] not in potential.elements
    ytterbium = AtomicSystem.from_ase(bulk("Yb", "fcc", a=5.48))
    with pytest.raises(StructureRejected) as caught:
        potential.predict([ytterbium])
    assert caught.value.code == "element_not_covered"
    assert caught.value.message == f"element(s) Yb not covered by model '{name}'"


def test_mf_0_heads_differ_and_the_card_must_name_one(loaded) -> None:
    pbe, r2scan = loaded("7net-mf-0"), loaded("7net-mf-0-r2scan")
    assert (pbe.modal, r2scan.modal) == ("PBE", "R2SCAN")
    system = AtomicSystem.from_ase(crystals()[0][1])
    (e_pbe,), (e_r2scan,) = pbe.predict([system], ["energy"]), r2scan.predict([system], ["energy"])
    assert abs(e_pbe.energy - e_r2scan.energy) / system.n_atoms > 0.1  # two functionals, two energy scales
    card = pbe.card
    for options in ({}, {"modal": "mpa"}):  # no head, or another model's head name
        with pytest.raises(CardError, match=r"options\.modal in the card to one of \['PBE', 'R2SCAN'\]"):
            load_potential(replace(card, options=options), "cpu")


def test_7net_l3i5_over_http_equals_its_calculator(builtin_only: Path) -> None:
    name = "7net-l3i5"
    sample = [atoms for _, atoms in crystals()[:3]]
    with (
        ready_server(models=(name,), model_dir=builtin_only, device="cpu", torch_threads=1) as url,
        Client(url, model=name, progress=False) as client,
    ):
        results = client.predict(sample)
    calc = reference_calculator(name)
    for index, (atoms, result) in enumerate(zip(sample, results, strict=True)):
        energy, forces, stress = reference(calc, atoms)
        assert abs(result.energy - energy) / len(atoms) <= E_TOL, f"structure {index}: {result.energy} vs {energy}"
        np.testing.assert_allclose(result.forces, forces, rtol=0, atol=F_TOL, err_msg=f"structure {index}")
        np.testing.assert_allclose(result.stress, stress, rtol=0, atol=S_TOL, err_msg=f"structure {index}")
    assert results[0].model["name"] == name and results[0].model["dtype"] == "float32"
