"""MTP extrapolation grades (models/backends/mtp_grade.py) against motep 0.2.0's ``motep.grade.Grader`` and MaxVol.

Potentials: the trained Cu MTPs of the shared motep fixtures (levels 02 and 06); active-set source: the mlearn Cu DFT
frames (extxyz, and the same frames written as an MLIP ``.cfg``). Graded structures are ones the active set does not
contain: held-out mlearn frames, strained copies and other phases.
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
from ase.io import read, write
from mlipserve.models.active_sets import maxvol, qr_start
from mlipserve.models.backends.mtp_grade import rows_of
from mlipserve.models.cards import CardError, ModelCard, file_sha256
from mlipserve.models.loading import load_potential
from mlipserve.models.potential import PropertyNotImplemented, StructureRejected
from mlipserve.models.system import AtomicSystem

from .conftest import DATASETS, FIXTURES, torch_threads

motep_grade = pytest.importorskip("motep.grade", reason="motep (Python >= 3.11) is the reference")
from motep.grade.maxvol import MaxVol  # noqa: E402
from motep.io.mlip.mtp import read_mtp as motep_read_mtp  # noqa: E402

CU = FIXTURES / "mtp" / "motep" / "crystals_cubic_Cu_1species"
FRAMES = DATASETS / "mlearn_Cu_test_DFT.DERIVED.extxyz"
GRADE_RTOL = 1e-8


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def frames() -> list[Atoms]:
    return read(FRAMES, index=":")


def split(frames: list[Atoms]) -> tuple[list[Atoms], list[Atoms]]:
    """Two of every three frames form the active set's source; the third are held out."""
    return [a for i, a in enumerate(frames) if i % 3 != 2], [a for i, a in enumerate(frames) if i % 3 == 2]


def far_structures(held_out: list[Atoms]) -> list[Atoms]:
    """Strongly strained copies of held-out frames, and another phase: compressed bcc Cu (nearest neighbours 2.34 Å;
    at a = 2.87 Å, bcc Cu's neighbourhoods come within the active set of this training set, grade 0.97)."""
    strained = []
    for atoms in held_out[2:4]:
        copy = atoms.copy()
        copy.set_cell(atoms.cell * 1.3, scale_atoms=True)
        strained.append(copy)
    return [*strained, bulk("Cu", "bcc", a=2.7, cubic=True).repeat(3)]


def model_dir_with(tmp_path: Path, level: str, source: Path, **options) -> ModelCard:
    """A model directory holding the Cu MTP of ``level`` and ``source`` as its active set, and its card."""
    checkpoint = tmp_path / "pot.mtp"
    shutil.copy(CU / level / "pot.mtp", checkpoint)
    target = tmp_path / source.name
    if source != target:
        shutil.copy(source, target)
    data = {
        "name": f"cu-{level}",
        "family": "mtp",
        "version": "test",
        "checkpoint": checkpoint.name,
        "sha256": file_sha256(checkpoint),
        "license": "MIT",
        "elements": "Cu",
        "cutoff": 5.0,
        "options": {"active_set": target.name, "active_set_sha256": file_sha256(target)} | options,
    }
    return ModelCard.from_dict(data, root=tmp_path)


def motep_grader(level: str, mode: str, training: list[Atoms]):
    data = motep_read_mtp(str(CU / level / "pot.mtp"))
    data.species = [29]
    grader = motep_grade.Grader(data, seed=1, mode=mode)
    grader.update(training)
    return grader


def systems(images: list[Atoms]) -> list[AtomicSystem]:
    return [AtomicSystem.from_ase(atoms) for atoms in images]


@pytest.mark.parametrize(("level", "mode"), [("02", "configuration"), ("06", "neighborhood")])
def test_grades_equal_motep_given_its_selection(tmp_path, frames, level, mode) -> None:
    training, held_out = split(frames) if mode == "neighborhood" else (frames, frames[2::3])
    reference = motep_grader(level, mode, training)
    source = tmp_path / "training.extxyz"
    write(source, training, format="extxyz")
    # The parameter derivatives have a null space (the MTP's parameterisation is redundant), so which rows the QR
    # start picks among near-ties is decided by rounding: the grades are compared given motep's selection, which
    # the card records as active_set_rows.
    rows = reference.maxvol_result.indices.tolist()
    ours = load_potential(model_dir_with(tmp_path, level, source, active_set_mode=mode, active_set_rows=rows), "cpu")
    np.testing.assert_array_equal(ours.grader.training_rows, np.sort(rows))
    candidates = [*(a.copy() for a in held_out), *far_structures(held_out)]
    for k, atoms in enumerate(candidates[: len(held_out)]):
        atoms.rattle(0.02, seed=k)
    expected = reference.grade(candidates)
    predictions = ours.predict(systems(candidates), ["energy"])
    for prediction, atoms in zip(predictions, expected, strict=True):
        assert prediction.uncertainty.kind == "grade"
        assert prediction.uncertainty.value == pytest.approx(atoms.calc.results["MV_grade"], rel=GRADE_RTOL)
        if mode == "neighborhood":
            np.testing.assert_allclose(prediction.uncertainty.per_atom, atoms.calc.results["nbh_grades"], GRADE_RTOL)
        else:
            assert prediction.uncertainty.per_atom is None


@pytest.mark.parametrize(("level", "mode"), [("02", "configuration"), ("06", "neighborhood")])
def test_maxvol_selection_equals_motep_on_the_same_matrix(tmp_path, frames, level, mode) -> None:
    potential = load_potential(model_dir_with(tmp_path, level, FRAMES, active_set_mode=mode), "cpu")
    matrix = rows_of(potential, systems(frames), mode)
    expected = MaxVol(threshold=1e-9).run(matrix).indices
    np.testing.assert_array_equal(np.sort(maxvol(matrix, qr_start(matrix), 1 + 1e-9)), expected)
    np.testing.assert_array_equal(potential.grader.training_rows, expected)


def test_training_like_below_one_far_above(tmp_path, frames) -> None:
    training, held_out = split(frames)
    training_file = tmp_path / "training.extxyz"
    write(training_file, training, format="extxyz")
    potential = load_potential(model_dir_with(tmp_path, "06", training_file, active_set_mode="neighborhood"), "cpu")
    assert potential.uncertainty_kind == "grade"
    bulk_like = [a for a in held_out if a.info["config_type"] in ("AIMD-NVT", "Elastic")]
    assert len(bulk_like) >= 4
    near = [p.uncertainty.value for p in potential.predict(systems(bulk_like))]
    far = [p.uncertainty.value for p in potential.predict(systems(far_structures(held_out)))]
    assert max(near) < 1 < min(far), (near, far)


def test_cfg_source_gives_the_extxyz_grades(tmp_path, frames) -> None:
    cfg = tmp_path / "cfg" / "train.cfg"
    cfg.parent.mkdir()
    cfg.write_text("".join(cfg_text(atoms) for atoms in frames))
    from_cfg = load_potential(model_dir_with(cfg.parent, "02", cfg), "cpu")
    from_xyz = load_potential(model_dir_with(tmp_path, "02", FRAMES), "cpu")
    np.testing.assert_array_equal(from_cfg.grader.training_rows, from_xyz.grader.training_rows)
    probe = systems(far_structures(frames[2::3]))
    for a, b in zip(from_cfg.predict(probe), from_xyz.predict(probe), strict=True):
        assert a.uncertainty.value == pytest.approx(b.uncertainty.value, rel=1e-10)


def cfg_text(atoms: Atoms) -> str:
    """One MLIP .cfg configuration (species index 0 = Cu)."""
    lines = ["BEGIN_CFG", " Size", f"    {len(atoms)}", " Supercell"]
    lines += ["    " + " ".join(f"{v:.12f}" for v in row) for row in atoms.cell.array]
    lines.append(" AtomData:  id type       cartes_x      cartes_y      cartes_z")
    lines += [f"    {i + 1} 0 " + " ".join(f"{v:.12f}" for v in p) for i, p in enumerate(atoms.positions)]
    return "\n".join([*lines, "END_CFG", ""]) + "\n"


def test_select_equals_motep_maxvol_against_the_active_set(tmp_path, frames) -> None:
    _, held_out = split(frames)
    potential = load_potential(model_dir_with(tmp_path, "06", FRAMES, active_set_mode="neighborhood"), "cpu")
    candidates = [*held_out[:4], *far_structures(held_out)]
    selection = potential.select(systems(candidates), max_count=-1, threshold=1.0)

    rows = rows_of(potential, systems(candidates), "neighborhood")
    owners = np.repeat(np.arange(len(candidates)), [len(a) for a in candidates])
    chosen = MaxVol(threshold=1e-9).run(np.vstack([rows, potential.grader.active_set.matrix])).indices
    assert sorted(selection.selected) == sorted({int(owners[i]) for i in chosen if i < len(rows)})
    assert selection.selected, "the far structures extend the active set"
    assert set(range(4, len(candidates))) <= set(selection.selected)
    assert selection.above == [i for i, g in enumerate(selection.grades) if g > 1.0]
    assert potential.select(systems(candidates), max_count=2).selected == selection.selected[:2]


def test_card_errors_and_models_without_active_set(tmp_path, frames) -> None:
    with pytest.raises(CardError, match="active_set_mode"):
        load_potential(model_dir_with(tmp_path, "02", FRAMES, active_set_mode="atoms"), "cpu")
    small = tmp_path / "small" / "few.extxyz"
    small.parent.mkdir()
    write(small, frames[:5], format="extxyz")
    with pytest.raises(CardError, match="at least as many configuration rows"):
        load_potential(model_dir_with(small.parent, "02", small), "cpu")
    with pytest.raises(StructureRejected, match="Ag"):
        load_potential(model_dir_with(tmp_path, "02", FRAMES), "cpu").select(systems([bulk("Ag")]), 1)
    plain = load_potential(dataclasses.replace(model_dir_with(tmp_path, "02", FRAMES), options={}), "cpu")
    assert plain.uncertainty_kind is None
    assert plain.predict(systems(frames[:1]))[0].uncertainty is None
    with pytest.raises(PropertyNotImplemented, match="no active set"):
        plain.select(systems(frames[:1]), 1)
