"""Where a checkpoint may come from, and what reading it may do.

A user card's checkpoint must resolve inside the model directory, symbolic links followed: ``..``, an absolute path
and a link (the file or a parent folder) that lead out are refused when the cards are read, with the card's name
and the path, as the card's problem in ``ModelRegistry.problems``; paths that stay inside are served. Built-in
``package://`` cards must stay inside their package. SevenNet and CHGNet checkpoints are read with
``torch.load(weights_only=True)``: a file crafted to run code when unpickled is refused even when its hash is pinned
on the card, and the code never runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from mlipserve.models import CardError, ModelCard, ModelRegistry, UnusableCard
from mlipserve.models.cards import PACKAGE_SCHEME, file_sha256
from mlipserve.models.loading import load_backend, load_model
from mlipserve.models.registry import builtin_card_files

from .conftest import FIXTURES

CHECKPOINT = FIXTURES / "sevennet" / "tests" / "cp_0.pth"  # SevenNet's small HfO2 test model
DIGEST = file_sha256(CHECKPOINT)


def write_card(model_dir: Path, name: str, checkpoint: str, sha256: str = DIGEST, **fields: object) -> None:
    """A sevennet card for the HfO2 test model in ``model_dir``, naming ``checkpoint`` exactly as given."""
    card = {
        "name": name,
        "family": "sevennet",
        "version": "test",
        "checkpoint": checkpoint,
        "sha256": sha256,
        "license": "MIT",
        "elements": "Hf O",
        "cutoff": 4.0,
    } | fields
    (model_dir / f"{name}.yaml").write_text("".join(f"{key}: {value}\n" for key, value in card.items()))


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A model directory, and beside it (outside it) a folder holding a real copy of the checkpoint."""
    model_dir, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    model_dir.mkdir()
    elsewhere.mkdir()
    shutil.copy(CHECKPOINT, elsewhere / "cp_0.pth")
    return model_dir, elsewhere


def assert_refused(model_dir: Path, name: str, checkpoint: str, why: str) -> None:
    """The card is kept out with a reason naming it, its path and the cause, and loading it is refused."""
    registry = ModelRegistry(model_dir)
    assert name not in registry.names()
    reason = registry.problems[name]
    assert reason.startswith(f"{name}: checkpoint {checkpoint!r}")
    assert "outside the model directory" in reason and why in reason
    with pytest.raises(UnusableCard, match="outside the model directory"):
        load_model(registry, name, "cpu")


def test_dotdot_leaving_the_model_dir_is_refused(dirs: tuple[Path, Path]) -> None:
    model_dir, _ = dirs
    write_card(model_dir, "dotdot", "../elsewhere/cp_0.pth")
    assert_refused(model_dir, "dotdot", "../elsewhere/cp_0.pth", "'..' leads out")


def test_absolute_path_outside_the_model_dir_is_refused(dirs: tuple[Path, Path]) -> None:
    model_dir, elsewhere = dirs
    outside = str(elsewhere / "cp_0.pth")
    write_card(model_dir, "absolute", outside)
    assert_refused(model_dir, "absolute", outside, "an absolute path")


def test_symlinked_file_leaving_the_model_dir_is_refused(dirs: tuple[Path, Path]) -> None:
    model_dir, elsewhere = dirs
    (model_dir / "cp_0.pth").symlink_to(elsewhere / "cp_0.pth")
    write_card(model_dir, "linked-file", "cp_0.pth")
    assert_refused(model_dir, "linked-file", "cp_0.pth", "symbolic link")


def test_symlinked_parent_leaving_the_model_dir_is_refused(dirs: tuple[Path, Path]) -> None:
    model_dir, elsewhere = dirs
    (model_dir / "store").symlink_to(elsewhere, target_is_directory=True)
    write_card(model_dir, "linked-folder", "store/cp_0.pth")
    assert_refused(model_dir, "linked-folder", "store/cp_0.pth", "symbolic link")


def test_dangling_symlink_leaving_the_model_dir_is_refused(dirs: tuple[Path, Path]) -> None:
    """Where a link points is judged before the file exists: it cannot be placed there later and be served."""
    model_dir, elsewhere = dirs
    (model_dir / "later.pth").symlink_to(elsewhere / "not-yet.pth")
    write_card(model_dir, "dangling", "later.pth")
    assert_refused(model_dir, "dangling", "later.pth", "symbolic link")


def test_paths_that_stay_inside_are_served(dirs: tuple[Path, Path]) -> None:
    model_dir, _ = dirs
    (model_dir / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(CHECKPOINT, model_dir / "cp_0.pth")
    shutil.copy(CHECKPOINT, model_dir / "sub" / "deeper" / "cp_0.pth")
    (model_dir / "alias.pth").symlink_to("sub/deeper/cp_0.pth")  # a relative link that stays inside
    (model_dir / "shelf").symlink_to(model_dir / "sub", target_is_directory=True)  # a linked folder inside
    accepted = {
        "plain": ("cp_0.pth", model_dir / "cp_0.pth"),
        "subfolder": ("sub/deeper/cp_0.pth", model_dir / "sub" / "deeper" / "cp_0.pth"),
        "dotdot-inside": ("sub/../cp_0.pth", model_dir / "cp_0.pth"),
        "absolute-inside": (str(model_dir / "cp_0.pth"), model_dir / "cp_0.pth"),
        "linked-file-inside": ("alias.pth", model_dir / "sub" / "deeper" / "cp_0.pth"),
        "linked-folder-inside": ("shelf/deeper/cp_0.pth", model_dir / "sub" / "deeper" / "cp_0.pth"),
    }
    for name, (checkpoint, _) in accepted.items():
        write_card(model_dir, name, checkpoint)
    registry = ModelRegistry(model_dir)
    assert registry.problems == {}
    for name, (_, real) in accepted.items():
        assert registry.card(name).verified_checkpoint() == real.resolve()
    # A link inside is followed to the file it names, which is what is loaded.
    potential = load_model(registry, "linked-file-inside", "cpu")
    assert potential.cutoff == 4.0


def test_model_dir_reached_through_a_symlink_is_fine(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """The model directory itself may be a link (e.g. ~/.mlipserve/models -> /data/models)."""
    model_dir, _ = dirs
    shutil.copy(CHECKPOINT, model_dir / "cp_0.pth")
    write_card(model_dir, "via-link", "cp_0.pth")
    link = tmp_path / "models-link"
    link.symlink_to(model_dir, target_is_directory=True)
    card = ModelRegistry(link).card("via-link")
    assert card.verified_checkpoint() == (model_dir / "cp_0.pth").resolve()


def test_builtin_package_cards_stay_inside_their_package(tmp_path: Path) -> None:
    packaged = [ModelCard.from_yaml(path, builtin=True) for path in builtin_card_files()]
    packaged = [card for card in packaged if card.checkpoint.startswith(PACKAGE_SCHEME)]
    assert packaged
    for card in packaged:
        package = card.checkpoint[len(PACKAGE_SCHEME) :].split("/")[0]
        folder = Path(importlib.import_module(package).__file__).parent.resolve()
        assert card.checkpoint_path().is_relative_to(folder)
    # A built-in card whose package path climbs out of the package is refused, naming the package folder.
    escaping = dataclasses.replace(packaged[0], checkpoint="package://sevenn/../chgnet/__init__.py")
    with pytest.raises(CardError, match=r"outside the folder .* of its package \(its '\.\.' leads out\)"):
        escaping.checkpoint_path()


# --- weights_only: a checkpoint that would run code when unpickled ---------------------------------------------


class _RunsShell:
    """Unpickles into ``os.system(command)``: what an attacker's checkpoint would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def _trap(path: Path, marker: Path, family: str) -> Path:
    """A checkpoint shaped like the family's (so only the trap is wrong), with the trap deep inside its data."""
    trap = _RunsShell(f"touch {shlex.quote(str(marker))}")
    if family == "sevennet":
        contents = {"config": {"cutoff": 4.0, "shift": trap}, "model_state_dict": {"w": torch.zeros(2)}}
    else:
        contents = {"model": {"state_dict": {"w": torch.zeros(2)}, "model_args": {"atom_fea_dim": trap}}}
    torch.save(contents, path)
    return path


@pytest.mark.parametrize("family", ["sevennet", "chgnet"])
def test_checkpoint_that_runs_code_is_refused(family: str, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    checkpoint = _trap(tmp_path / f"{family}-trap.pth", marker, family)
    # The hash is pinned on the card, as if someone had trusted the file by mistake: only weights_only stands.
    write_card(tmp_path, "trap", checkpoint.name, sha256=file_sha256(checkpoint), family=family)
    with pytest.raises(CardError, match=r"weights_only=True\) and will not unpickle it") as refused:
        load_model(ModelRegistry(tmp_path), "trap", "cpu")
    message = str(refused.value)
    assert message.startswith(f"trap: {checkpoint.name} holds more than tensors and plain data")
    assert "system" in message  # the unpickler names the forbidden global
    assert "weights_only` set to `False`" not in message  # torch's advice to retry unsafely is not passed on
    assert not marker.exists()
    # Control: the trap is armed; a plain unpickling of the same file runs its code.
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


def test_file_swapped_after_the_hash_check_is_refused(tmp_path: Path) -> None:
    """The bytes unpickled are the bytes hashed: a file replaced between the check and the load is refused."""
    shutil.copy(CHECKPOINT, tmp_path / "cp_0.pth")
    write_card(tmp_path, "swapped", "cp_0.pth")
    card = ModelRegistry(tmp_path).card("swapped")
    checkpoint = card.verified_checkpoint()
    _trap(checkpoint, tmp_path / "code-ran", "sevennet")
    with pytest.raises(CardError, match="changed while it was loaded"):
        load_backend("sevennet").load_potential(card, checkpoint, torch.device("cpu"))
    assert not (tmp_path / "code-ran").exists()
