"""Model cards and the registry: built-ins, user cards, and the rules that keep pickles from running unchecked."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from mlipserve.errors import ErrorCode
from mlipserve.models import AtomicSystem, CardError, ModelCard, ModelRegistry, StructureRejected, UnknownModel
from mlipserve.models.loading import BackendUnavailable, load_backend, load_model
from mlipserve.models.potential import Potential, check_card, check_elements
from mlipserve.models.registry import FAMILIES

from .conftest import FIXTURES, write_card
from .toy_potential import LennardJonesPotential

CHECKPOINT = FIXTURES / "sevennet" / "tests" / "cp_0.pth"


def test_builtin_cards_are_installed_and_verified(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    # Every model the sevenn and chgnet wheels ship has a built-in card.
    shipped = {
        "7net-0": 89,
        "7net-l3i5": 89,
        "7net-0-22may2024": 89,
        "7net-mf-0": 89,
        "7net-mf-0-r2scan": 88,
        "chgnet-0.3.0": 89,
        "chgnet-0.2.0": 89,
        "chgnet-r2scan": 88,
    }
    assert set(shipped) <= set(registry.names())
    assert registry.problems == {}
    # The PBE models cover 89 elements (CHGNet's embedding reaches H to Pu; its cards narrow it to MPtrj's);
    # the r2SCAN ones 88, as their r2SCAN data hold no Yb.
    for name, n_elements in shipped.items():
        card = registry.card(name)
        assert card.is_installed() and card.verified_checkpoint().is_file()
        assert len(card.elements) == n_elements and card.license and card.citation


def test_user_card_is_found_and_its_checkpoint_resolved(tmp_path: Path) -> None:
    write_card(tmp_path, "mine", CHECKPOINT)
    card = ModelRegistry(tmp_path).card("mine")
    assert card.family == "sevennet" and card.elements == ("Hf", "O")
    assert card.verified_checkpoint() == (tmp_path / "cp_0.pth").resolve()


def test_wrong_hash_is_refused_before_loading(tmp_path: Path) -> None:
    write_card(tmp_path, "tampered", CHECKPOINT, sha256="ab" * 32)
    with pytest.raises(CardError, match="refusing to load"):
        load_model(ModelRegistry(tmp_path), "tampered", "cpu")


def test_checkpoint_outside_the_model_dir_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    write_card(model_dir, "escape", CHECKPOINT, checkpoint="../cp_0.pth")
    (tmp_path / "cp_0.pth").write_bytes(CHECKPOINT.read_bytes())
    with pytest.raises(CardError, match="outside the model directory"):
        load_model(ModelRegistry(model_dir), "escape", "cpu")
    write_card(model_dir, "absolute", CHECKPOINT, checkpoint=str(CHECKPOINT))
    with pytest.raises(CardError, match="outside the model directory"):
        ModelRegistry(model_dir).card("absolute").verified_checkpoint()
    # found when the cards are read, before anything asks for them
    problems = ModelRegistry(model_dir).problems
    assert set(problems) == {"escape", "absolute"}
    assert all("outside the model directory" in reason for reason in problems.values())


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
        load_model(registry, "absent", "cpu")


def test_malformed_cards_are_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\nfamily: sevennet\n")
    (tmp_path / "elements.yaml").write_text(
        "name: e\nfamily: sevennet\nversion: 1\ncheckpoint: x\nsha256: 0\nlicense: MIT\nelements: Hf Zz\ncutoff: 4\n"
    )
    (tmp_path / "unreadable.yaml").write_text("name: [unclosed\n")
    registry = ModelRegistry(tmp_path)
    assert "broken" not in registry.names()
    assert any("lacks" in problem for problem in registry.problems.values())
    assert any("unknown elements ['Zz']" in problem for problem in registry.problems.values())
    # by the card's name where the file gives one, else by the file's stem
    assert set(registry.problems) == {"broken", "e", "unreadable"}
    assert "lacks" in registry.problems["broken"] and "not valid YAML" in registry.problems["unreadable"]
    with pytest.raises(UnknownModel, match=r"model card 'e' \(.*elements\.yaml\) could not be used: .*'Zz'"):
        registry.card("e")


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
    assert rows["7net-0"][5:9] == ["5", "float32", "0.724", "main"]  # cutoff, dtype, F1, environment
    listed = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
    assert {row["name"] for row in listed} >= {"7net-0", "chgnet-0.3.0", "mine"}
    by_name = {row["name"]: row for row in listed}
    assert by_name["7net-l3i5"]["matbench_f1"] == 0.760 and by_name["mine"]["matbench_f1"] is None
    assert by_name["mace-mp-0-medium"]["environment"] == ".venv-mace (make env-mace)"
    assert {row["dtype"] for row in listed if row["family"] in ("mtp", "ace")} <= {"float64"}


def test_every_backend_matches_the_loader_protocol() -> None:
    """Each family's ``load_potential`` has the signature of :class:`~mlipserve.models.potential.Backend`."""
    checked = 0
    for family in FAMILIES:
        try:
            backend = load_backend(family)
        except BackendUnavailable:  # MACE lives in its own environment
            continue
        loader = backend.load_potential
        hints = typing.get_type_hints(loader)
        assert list(inspect.signature(loader).parameters) == ["card", "checkpoint", "device"], family
        assert (hints["card"], hints["checkpoint"], hints["device"]) == (ModelCard, Path, torch.device), family
        assert issubclass(hints["return"], Potential), family
        checked += 1
    assert checked >= 5


def test_card_may_narrow_the_potentials_elements_but_not_widen_them() -> None:
    potential = LennardJonesPotential(rc=3.0)
    check_card(potential.card, potential)
    wider = dataclasses.replace(potential.card, elements=("H", "He", "Cu", "Zr"))
    with pytest.raises(CardError) as caught:
        check_card(wider, potential)
    message = str(caught.value)
    assert "'toy-lj' lists elements H He Cu Zr" in message and "covers H He Ar Cu Og" in message
    assert "only in the card: Zr" in message
    with pytest.raises(CardError, match=r"'toy-lj' says cutoff 3\.5 Å, .* cutoff is 3\.0 Å; set `cutoff: 3\.0`"):
        check_card(dataclasses.replace(potential.card, cutoff=3.5), potential)
    check_card(dataclasses.replace(potential.card, cutoff=3.0 + 1e-9), potential)  # within the tolerance
    narrower = dataclasses.replace(potential.card, elements=("Ar", "Cu"))
    check_card(narrower, potential)
    assert potential.elements == {18, 29}
    with pytest.raises(StructureRejected, match=r"element\(s\) He not covered by model 'toy-lj'"):
        potential.check(AtomicSystem.from_arrays([2, 18], [[0, 0, 0], [2, 0, 0]]))


def test_chgnet_is_narrowed_to_its_training_elements() -> None:
    """CHGNet's embedding reaches Pu; its card lists MPtrj's 89 elements, and the loaded model covers those alone."""
    potential = load_model(ModelRegistry(), "chgnet-0.3.0", "cpu")
    assert len(potential.elements) == 89 and 84 not in potential.elements  # Po: in the embedding, not in MPtrj
    assert potential.elements == potential.card.atomic_numbers


def test_one_element_check_with_one_code() -> None:
    with pytest.raises(StructureRejected) as caught:
        check_elements("m", np.array([29, 14, 0, 14, 8]), {8, 29})
    assert caught.value.code is ErrorCode.ELEMENT_NOT_COVERED and caught.value.code == "element_not_covered"
    assert caught.value.message == "element(s) 0, Si not covered by model 'm'"
    check_elements("m", np.array([8, 29]), {8, 29})


class _NoLonelyAtoms(LennardJonesPotential):
    def check_structure(self, system: AtomicSystem) -> None:
        if system.n_atoms == 1:
            raise StructureRejected(ErrorCode.ISOLATED_ATOM, "one atom")


def test_predict_checks_every_system_before_the_batch() -> None:
    potential = _NoLonelyAtoms()
    dimer = AtomicSystem.from_arrays([18, 18], [[0, 0, 0], [0, 0, 1.1]])
    assert potential.predict([dimer])[0].forces.shape == (2, 3)
    zinc = AtomicSystem.from_arrays([18, 30], [[0, 0, 0], [0, 0, 1.1]])
    with pytest.raises(StructureRejected, match=r"^element\(s\) Zn not covered by model 'toy-lj'$") as caught:
        potential.predict([dimer, zinc])
    assert caught.value.code == ErrorCode.ELEMENT_NOT_COVERED
    with pytest.raises(StructureRejected) as caught:
        potential.predict([dimer, AtomicSystem.from_arrays([18], [[0, 0, 0]])])
    assert caught.value.code == ErrorCode.ISOLATED_ATOM
    assert potential.calls == 1  # neither rejected batch reached predict_batch


def test_a_card_whose_hash_is_no_sha256_is_refused_when_read(tmp_path: Path) -> None:
    """YAML reads an unquoted all-digit hash as a number: the card is refused at once, saying to quote it."""
    write_card(tmp_path, "digits", FIXTURES / "sevennet" / "tests" / "cp_0.pth", sha256="0" * 64)
    write_card(tmp_path, "short", FIXTURES / "sevennet" / "tests" / "cp_0.pth", sha256="abc")
    problems = ModelRegistry(tmp_path).problems
    assert "is not text (YAML read it as int); quote its 64 hex digits" in problems["digits"]
    assert "sha256 must be 64 hex digits, got 'abc'" in problems["short"]
