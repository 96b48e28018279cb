"""ACE extrapolation grade γ (models/backends/ace_gamma.py) against python-ace 0.4.0rc1.

Potentials: the small fitted B-basis files of tests/data/ace (README.md there): Cu (one species) and Hf-O (two).
Their active sets are built here by python-ace itself from two of every three frames of a shared DFT set
(``compute_B_projections`` → ``compute_active_set`` → ``compute_A_active_inverse`` → ``save_active_inverse_set``,
what ``pace_activeset`` runs); graded are the held-out frames, strained copies and other phases.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read
from mlipserve.models.cards import CardError, ModelCard, file_sha256
from mlipserve.models.loading import load_potential
from mlipserve.models.potential import Potential, PropertyNotImplemented
from mlipserve.models.system import AtomicSystem

from .conftest import DATASETS, torch_threads

pyace = pytest.importorskip("pyace", reason="python-ace is the reference")
import pandas as pd  # noqa: E402  (python-ace depends on it)
from pyace.aceselect import select_structures_maxvol  # noqa: E402
from pyace.activelearning import (  # noqa: E402
    compute_A_active_inverse,
    compute_active_set,
    compute_B_projections,
    load_active_inverse_set,
    save_active_inverse_set,
)

DATA = Path(__file__).parent / "data" / "ace"
SETS = {
    "Cu_sbessel": "mlearn_Cu_test_DFT.DERIVED.extxyz",
    "HfO_chebexpcos": "SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz",
}
GAMMA_RTOL = 1e-5  # python-ace keeps γ in single precision


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    with torch_threads(1):
        yield


@dataclasses.dataclass
class Case:
    stem: str
    folder: Path
    held_out: list[Atoms]
    card: ModelCard


@pytest.fixture(scope="module", params=sorted(SETS))
def case(request, tmp_path_factory) -> Case:
    """A model directory with the potential and the .asi python-ace builds from two of every three frames."""
    stem = request.param
    folder = tmp_path_factory.mktemp(stem)
    shutil.copy(DATA / f"{stem}.yaml", folder / f"{stem}.yaml")
    frames = read(DATASETS / SETS[stem], index=":", format="extxyz")
    training = [atoms for i, atoms in enumerate(frames) if i % 3 != 2]
    bconf = pyace.BBasisConfiguration(str(folder / f"{stem}.yaml"))
    inverse = compute_A_active_inverse(compute_active_set(compute_B_projections(bconf, training), tol=1.01))
    save_active_inverse_set(str(folder / f"{stem}.asi"), inverse, pyace.ACEBBasisSet(bconf).elements_name)
    held_out = [atoms for i, atoms in enumerate(frames) if i % 3 == 2]
    return Case(stem, folder, held_out, card(folder, stem, f"{stem}.asi"))


def card(folder: Path, stem: str, asi: str | None, checkpoint: str | None = None) -> ModelCard:
    checkpoint = checkpoint or f"{stem}.yaml"
    options = {} if asi is None else {"active_set": asi, "active_set_sha256": file_sha256(folder / asi)}
    model = pyace.ACEBBasisSet(pyace.BBasisConfiguration(str(DATA / f"{stem}.yaml")))
    data = {
        "name": stem,
        "family": "ace",
        "version": "test",
        "checkpoint": checkpoint,
        "sha256": file_sha256(folder / checkpoint),
        "license": "MIT",
        "elements": " ".join(model.elements_name),
        "cutoff": float(model.cutoffmax),
        "options": options,
    }
    return ModelCard.from_dict(data, root=folder)


def strained(images: list[Atoms], factor: float = 1.3) -> list[Atoms]:
    copies = []
    for atoms in images:
        copy = atoms.copy()
        copy.set_cell(atoms.cell * factor, scale_atoms=True)
        copies.append(copy)
    return copies


def systems(images: list[Atoms]) -> list[AtomicSystem]:
    return [AtomicSystem.from_ase(atoms) for atoms in images]


@pytest.fixture(scope="module")
def potential(case) -> Potential:
    return load_potential(case.card, "cpu")


def test_gamma_equals_python_ace(case, potential) -> None:
    calculator = pyace.PyACECalculator(str(case.folder / f"{case.stem}.yaml"), gamma_upper_bound=np.inf)
    calculator.set_active_set(str(case.folder / f"{case.stem}.asi"))
    candidates = [*case.held_out[:6], *strained(case.held_out[:3], 1.2)]
    assert potential.uncertainty_kind == "gamma"
    for prediction, atoms in zip(potential.predict(systems(candidates)), candidates, strict=True):
        atoms = atoms.copy()
        atoms.calc = calculator
        atoms.get_potential_energy()
        expected = calculator.results["gamma"]
        assert prediction.uncertainty.kind == "gamma"
        np.testing.assert_allclose(prediction.uncertainty.per_atom, expected, rtol=GAMMA_RTOL)
        assert prediction.uncertainty.value == pytest.approx(expected.max(), rel=GAMMA_RTOL)


def test_select_equals_pace_select(case, potential) -> None:
    candidates = [*case.held_out, *strained(case.held_out[:3])]
    extra = compute_A_active_inverse(load_active_inverse_set(str(case.folder / f"{case.stem}.asi")))
    frame = pd.DataFrame({"ase_atoms": candidates})
    for max_count in (-1, 3):
        expected = select_structures_maxvol(frame, pyace.BBasisConfiguration(str(case.folder / f"{case.stem}.yaml")),
                                            extra, batch_size_option="none", max_structures=max_count)  # fmt: skip
        selection = potential.select(systems(candidates), max_count=max_count, threshold=1.0)
        assert selection.selected == [int(i) for i in expected.index]
    assert selection.selected, "the strained structures extend the active set"
    assert selection.above == [i for i, g in enumerate(selection.grades) if g > 1.0]
    assert len(selection.per_atom) == len(candidates)


def test_training_like_below_one_far_above(case, potential) -> None:
    if case.stem != "Cu_sbessel":
        pytest.skip("shown on Cu, whose data has labelled kinds of frames")
    near = [atoms for atoms in case.held_out if atoms.info["config_type"] == "Elastic"]
    near.append(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2))
    far = [*strained(case.held_out[2:4]), bulk("Cu", "diamond", a=5.0, cubic=True), bulk("Cu", "sc", a=2.5)]
    near_gamma = [p.uncertainty.value for p in potential.predict(systems(near))]
    far_gamma = [p.uncertainty.value for p in potential.predict(systems(far))]
    assert len(near) >= 3
    assert max(near_gamma) < 1 < min(far_gamma), (near_gamma, far_gamma)


def test_card_errors_and_models_without_active_set(case, tmp_path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(case.folder / f"{case.stem}.yaml", folder / f"{case.stem}.yaml")
    bad = {"Cu": np.eye(3)} if case.stem == "Cu_sbessel" else {"Hf": np.eye(3), "O": np.eye(3)}
    with open(folder / "bad.asi", "wb") as handle:
        np.savez(handle, **bad)
    with pytest.raises(CardError, match="B-functions"):
        load_potential(card(folder, case.stem, "bad.asi"), "cpu")
    yace = DATA / f"{case.stem}.yace"
    shutil.copy(yace, folder / yace.name)
    shutil.copy(case.folder / f"{case.stem}.asi", folder / f"{case.stem}.asi")
    with pytest.raises(CardError, match="B-basis"):
        load_potential(card(folder, case.stem, f"{case.stem}.asi", checkpoint=yace.name), "cpu")
    plain = load_potential(card(folder, case.stem, None), "cpu")
    assert plain.uncertainty_kind is None
    assert plain.predict(systems(case.held_out[:1]))[0].uncertainty is None
    with pytest.raises(PropertyNotImplemented):
        plain.select(systems(case.held_out[:1]), 1)
