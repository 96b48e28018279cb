"""Committees of served models: means and spreads checked against the members' own answers over HTTP.

Members: three MTPs of Cu (levels 06, 10, 16, fitted by MLIP-2 to the same EMT data; shared/fixtures/mtp/motep).
``cu-committee`` is served by its members apart (the front end fans out); ``cu-committee-local`` names the same
members and is served itself (one worker loads all three), so it can relax. Structures are built here (rattled,
strained fcc Cu), not taken from the fixtures.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from ase.build import bulk
from mlipserve.models.cards import file_sha256
from mlipserve.models.registry import ModelRegistry

from .conftest import FIXTURES, ready_server, torch_threads

CU = FIXTURES / "mtp" / "motep" / "crystals_cubic_Cu_1species"
MEMBERS = ("cu-06", "cu-10", "cu-16")


def write_committee_dir(folder: Path) -> Path:
    """Cards for the three Cu MTPs, the fanned-out committee and the in-process one."""
    for member in MEMBERS:
        checkpoint = folder / f"{member}.mtp"
        shutil.copy(CU / member.removeprefix("cu-") / "pot.mtp", checkpoint)
        card = {
            "name": member,
            "family": "mtp",
            "version": "test",
            "checkpoint": checkpoint.name,
            "sha256": f'"{file_sha256(checkpoint)}"',
            "license": "MIT",
            "elements": "Cu",
            "cutoff": 5.0,
        }
        (folder / f"{member}.yaml").write_text("".join(f"{key}: {value}\n" for key, value in card.items()))
    for name in ("cu-committee", "cu-committee-local"):
        (folder / f"{name}.yaml").write_text(
            f'name: {name}\nfamily: committee\nversion: "1"\noptions: {{members: [{", ".join(MEMBERS)}]}}\n'
        )
    return folder


@pytest.fixture(scope="module")
def committee_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_committee_dir(tmp_path_factory.mktemp("committee"))


@pytest.fixture(scope="module")
def url(committee_dir: Path) -> Iterator[str]:
    models = (*MEMBERS, "cu-committee-local")
    with torch_threads(1), ready_server(timeout=120, models=models, model_dir=committee_dir, device="cpu") as served:
        yield served


def cu_structures() -> list[dict]:
    """Rattled fcc Cu at and far from equilibrium (a = 3.61 Å), as request dicts."""
    structures = []
    for a, seed in [(3.61, 1), (3.45, 2), (3.25, 3)]:
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.05, seed=seed)
        structures.append(
            {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(), "cell": atoms.cell.tolist()}
        )
    return structures


def predict(url: str, model: str, structures: list[dict], **fields) -> dict:
    body = {"model": model, "structures": structures} | fields
    response = httpx.post(f"{url}/v1/predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_fanned_out_committee_is_the_members_mean_and_spread(url: str) -> None:
    structures = cu_structures()
    members = [predict(url, name, structures)["results"] for name in MEMBERS]
    answer = predict(url, "cu-committee", structures, uncertainty="per_atom")
    assert answer["model"]["name"] == "cu-committee"
    for index, entry in enumerate(answer["results"]):
        own = [results[index] for results in members]
        n_atoms = len(structures[index]["numbers"])
        energies = np.array([r["energy"] for r in own])
        forces = np.array([r["forces"] for r in own])  # (members, atoms, 3)
        stresses = np.array([r["stress"] for r in own])
        assert entry["energy"] == pytest.approx(energies.mean(), abs=1e-10)
        np.testing.assert_allclose(entry["forces"], forces.mean(axis=0), atol=1e-10)
        np.testing.assert_allclose(entry["stress"], stresses.mean(axis=0), atol=1e-12)
        # population spread over members: per atom, RMS distance of a member's force vector from the mean
        spread = np.sqrt(np.mean(np.sum((forces - forces.mean(axis=0)) ** 2, axis=2), axis=0))
        uncertainty = entry["uncertainty"]
        assert uncertainty["kind"] == "committee"
        assert uncertainty["members"] == 3
        np.testing.assert_allclose(uncertainty["per_atom"], spread, atol=1e-10)
        assert uncertainty["value"] == pytest.approx(spread.max(), abs=1e-10)
        assert uncertainty["forces_std_max"] == pytest.approx(spread.max(), abs=1e-10)
        assert uncertainty["energy_std_per_atom"] == pytest.approx(energies.std() / n_atoms, abs=1e-12)
        assert uncertainty["stress_std_max"] == pytest.approx(stresses.std(axis=0).max(), abs=1e-12)
    spreads = [entry["uncertainty"]["value"] for entry in answer["results"]]
    # the members agree near the equilibrium they were trained around and part ways under strong compression
    assert spreads[0] < 0.05 < spreads[2]
    assert spreads[0] < spreads[1] < spreads[2]


def test_in_process_committee_answers_as_the_fanned_out_one(url: str) -> None:
    structures = cu_structures()
    fanned = predict(url, "cu-committee", structures, properties=["energy"])["results"]
    local = predict(url, "cu-committee-local", structures, properties=["energy"])["results"]
    for a, b in zip(fanned, local, strict=True):
        assert "forces" not in a and "forces" not in b  # asked for energy only; the spread still uses forces
        assert a["energy"] == pytest.approx(b["energy"], abs=1e-10)
        assert "per_atom" not in a["uncertainty"]
        for key in ("value", "energy_std_per_atom", "forces_std_mean"):
            assert a["uncertainty"][key] == pytest.approx(b["uncertainty"][key], abs=1e-10)


def test_a_member_failure_fails_that_structure_only(url: str) -> None:
    structures = [*cu_structures()[:1], {"symbols": ["Al"], "positions": [[0, 0, 0]], "cell": [4, 4, 4]}]
    results = predict(url, "cu-committee", structures)["results"]
    assert "energy" in results[0]
    assert results[1]["error"]["code"] == "element_not_covered"


def test_fanned_out_committee_refuses_relaxing_and_selecting(url: str) -> None:
    body = {"model": "cu-committee", "structures": cu_structures()[:1]}
    for path in ("/v1/relax", "/v1/select", "/v1/jobs"):
        payload = body | ({"relax": {}} if path == "/v1/jobs" else {})
        response = httpx.post(f"{url}{path}", json=payload, timeout=30)
        assert response.status_code == 422, (path, response.text)
        assert "committee" in response.json()["error"]["message"]


def test_relaxing_with_the_in_process_committee_reports_its_spread(url: str) -> None:
    structures = cu_structures()[:2]
    body = {"model": "cu-committee-local", "structures": structures, "fmax": 0.05, "max_steps": 200}
    response = httpx.post(f"{url}/v1/relax", json=body, timeout=120)
    assert response.status_code == 200, response.text
    for entry in response.json()["results"]:
        uncertainty = entry["uncertainty"]
        assert entry["stop_reason"] == "converged"
        assert uncertainty["max_along_path"] >= uncertainty["value"] > 0
        final = predict(url, "cu-committee", [entry["structure"] | {"pbc": [True] * 3}])["results"][0]
        assert uncertainty["value"] == pytest.approx(final["uncertainty"]["value"], rel=1e-8)


def test_max_grade_stops_a_relaxation_that_leaves_the_confidence_region(url: str) -> None:
    compressed = cu_structures()[2]  # spread ≈ 1 eV/Å at the start
    start = predict(url, "cu-committee", [compressed])["results"][0]["uncertainty"]["value"]
    body = {"model": "cu-committee-local", "structures": [compressed], "max_grade": start / 2, "max_steps": 50}
    entry = httpx.post(f"{url}/v1/relax", json=body, timeout=60).json()["results"][0]
    assert entry["stop_reason"] == "extrapolating"
    assert entry["converged"] is False
    assert entry["steps"] == 0
    np.testing.assert_allclose(entry["structure"]["positions"], compressed["positions"], atol=1e-12)
    assert entry["uncertainty"]["value"] == pytest.approx(start, rel=1e-8)


def test_max_grade_needs_a_model_with_an_uncertainty(url: str) -> None:
    body = {"model": "cu-10", "structures": cu_structures()[:1], "max_grade": 1.0}
    entry = httpx.post(f"{url}/v1/relax", json=body, timeout=60).json()["results"][0]
    assert entry["error"]["code"] == "invalid_request"
    assert "max_grade" in entry["error"]["message"]


def test_jobs_carry_the_uncertainty(url: str) -> None:
    structures = cu_structures()
    body = {"model": "cu-committee", "structures": structures, "uncertainty": "per_atom"}
    with httpx.Client(base_url=url, timeout=60) as http:
        job = http.post("/v1/jobs", json=body).json()
        lines = [line for line in http.get(f"/v1/jobs/{job['id']}/results").text.splitlines() if line]
    direct = predict(url, "cu-committee", structures)["results"]
    for line, entry in zip(lines, direct, strict=True):
        uncertainty = json.loads(line)["uncertainty"]
        assert uncertainty["value"] == pytest.approx(entry["uncertainty"]["value"], abs=1e-10)
        assert len(uncertainty["per_atom"]) == len(structures[0]["numbers"])


def test_models_lists_the_committee_with_its_members(url: str) -> None:
    models = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
    committee = models["cu-committee"]
    assert committee["members"] == list(MEMBERS)
    assert committee["installed"] is True and committee["served"] is True
    assert committee["state"] == "ready"
    assert {worker["member"] for worker in committee["workers"]} == set(MEMBERS)
    assert committee["dtype"] == "float64"


def test_registry_refuses_a_committee_with_an_unknown_member(tmp_path: Path) -> None:
    write_committee_dir(tmp_path)
    (tmp_path / "bad.yaml").write_text('name: bad\nfamily: committee\nversion: "1"\noptions: {members: [cu-06, x]}\n')
    (tmp_path / "one.yaml").write_text('name: one\nfamily: committee\nversion: "1"\noptions: {members: [cu-06]}\n')
    registry = ModelRegistry(tmp_path)
    assert "member 'x' is no usable model card" in registry.problems["bad"]
    assert "two or more distinct members" in registry.problems["one"]
    card = registry.card("cu-committee")
    assert card.elements == ("Cu",) and card.cutoff == 5.0 and len(card.sha256) == 64
