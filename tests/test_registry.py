"""Model cards and the registry: built-ins, user cards, and the rules that keep pickles from running unchecked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlipserve.models import CardError, ModelRegistry, UnknownModel
from mlipserve.models.registry import BackendUnavailable, load_backend

from .conftest import FIXTURES, write_card

CHECKPOINT = FIXTURES / "sevennet" / "tests" / "cp_0.pth"


def test_builtin_cards_are_installed_and_verified(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    assert {"7net-0", "chgnet-0.3.0"} <= set(registry.names())
    for name in ("7net-0", "chgnet-0.3.0"):
        card = registry.card(name)
        assert card.is_installed() and card.verified_checkpoint().is_file()
        assert len(card.elements) == 89 and card.license and card.citation


def test_user_card_is_found_and_its_checkpoint_resolved(tmp_path: Path) -> None:
    write_card(tmp_path, "mine", CHECKPOINT)
    card = ModelRegistry(tmp_path).card("mine")
    assert card.family == "sevennet" and card.elements == ("Hf", "O")
    assert card.verified_checkpoint() == (tmp_path / "cp_0.pth").resolve()


def test_wrong_hash_is_refused_before_loading(tmp_path: Path) -> None:
    write_card(tmp_path, "tampered", CHECKPOINT, sha256="ab" * 32)
    with pytest.raises(CardError, match="refusing to load"):
        ModelRegistry(tmp_path).load("tampered", "cpu")


def test_checkpoint_outside_the_model_dir_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    write_card(model_dir, "escape", CHECKPOINT, checkpoint="../cp_0.pth")
    (tmp_path / "cp_0.pth").write_bytes(CHECKPOINT.read_bytes())
    with pytest.raises(CardError, match="outside the model directory"):
        ModelRegistry(model_dir).load("escape", "cpu")
    write_card(model_dir, "absolute", CHECKPOINT, checkpoint=str(CHECKPOINT))
    with pytest.raises(CardError, match="outside the model directory"):
        ModelRegistry(model_dir).card("absolute").verified_checkpoint()


def test_user_card_may_not_load_from_a_package(tmp_path: Path) -> None:
    write_card(tmp_path, "sneaky", CHECKPOINT, checkpoint="package://sevenn/pretrained_potentials/x.pth")
    with pytest.raises(CardError, match="only built-in cards"):
        ModelRegistry(tmp_path).card("sneaky").checkpoint_path()


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    write_card(tmp_path, "absent", CHECKPOINT)
    (tmp_path / "cp_0.pth").unlink()
    registry = ModelRegistry(tmp_path)
    assert not registry.card("absent").is_installed()
    with pytest.raises(CardError, match=r"cp_0\.pth not found"):
        registry.load("absent", "cpu")


def test_malformed_cards_are_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\nfamily: sevennet\n")
    (tmp_path / "elements.yaml").write_text(
        "name: e\nfamily: sevennet\nversion: 1\ncheckpoint: x\nsha256: 0\nlicense: MIT\nelements: Hf Zz\ncutoff: 4\n"
    )
    registry = ModelRegistry(tmp_path)
    assert "broken" not in registry.names()
    assert any("lacks" in problem for problem in registry.problems)
    assert any("unknown elements ['Zz']" in problem for problem in registry.problems)


def test_unknown_model_and_family(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="did you mean '7net-0'"):
        ModelRegistry(tmp_path).card("7net0")
    with pytest.raises(CardError, match="unknown model family 'allegro'"):
        load_backend("allegro")


def test_missing_family_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "chgnet"] + ["chgnet"]:
        monkeypatch.setitem(sys.modules, name, None)  # as in an environment without chgnet
    monkeypatch.delitem(sys.modules, "mlipserve.models.backends.chgnet", raising=False)
    with pytest.raises(BackendUnavailable, match=r"pip install 'mlipserve\[chgnet\]'"):
        load_backend("chgnet")


def test_cli_lists_models(tmp_path: Path) -> None:
    write_card(tmp_path, "mine", CHECKPOINT)
    (tmp_path / "cp_0.pth").unlink()
    command = [sys.executable, "-m", "mlipserve.server.cli", "models", "--model-dir", str(tmp_path)]
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows["7net-0"][3] == "yes" and rows["mine"][3] == "no"
    listed = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
    assert {row["name"] for row in listed} >= {"7net-0", "chgnet-0.3.0", "mine"}
