"""Picking structures for DFT over HTTP (``POST /v1/select``, ``Client.select``, ``mlipserve select``) and
grades everywhere a structure is evaluated (predictions, relaxations with ``max_grade``).

The model: MLIP-2's level-10 MTP of Cu (shared/fixtures/mtp/motep) with an active set in neighbourhood mode,
selected at load from every 25th of the 1001 EMT-MD configurations of its ``out.cfg`` (written here). Whether the
grades and the subset equal motep's is test_mtp_grade.py's business; here the endpoint must answer exactly what the
in-process ``Potential.select`` does on the same candidates, with the request's indices. Candidates are built here:
rattled fcc Cu near the training lattice constant (3.61 Å) and strained far from it.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write
from mlipserve.clients import Client
from mlipserve.models.cards import file_sha256
from mlipserve.models.loading import load_model
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.protocol import RelaxOptions
from mlipserve.server.cli import main

from .conftest import FIXTURES, ready_server, torch_threads

CU10 = FIXTURES / "mtp" / "motep" / "crystals_cubic_Cu_1species" / "10"


def write_model_dir(folder: Path) -> Path:
    """``cu-10-al`` (with an active set) and ``cu-10`` (without) in ``folder``."""
    shutil.copy(CU10 / "pot.mtp", folder / "cu-10.mtp")
    blocks = [block for block in (CU10 / "out.cfg").read_text().split("BEGIN_CFG") if block.strip()]
    (folder / "cu-train.cfg").write_text("".join("BEGIN_CFG" + block for block in blocks[::25]))
    common = (
        f'family: mtp\nversion: test\ncheckpoint: cu-10.mtp\nsha256: "{file_sha256(folder / "cu-10.mtp")}"\n'
        "license: MIT\nelements: Cu\ncutoff: 5.0\n"
    )
    (folder / "cu-10.yaml").write_text("name: cu-10\n" + common)
    active_set = (
        f'options: {{active_set: cu-train.cfg, active_set_sha256: "{file_sha256(folder / "cu-train.cfg")}", '
        "active_set_mode: neighborhood}\n"
    )
    (folder / "cu-10-al.yaml").write_text("name: cu-10-al\n" + common + active_set)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("select"))


@pytest.fixture(scope="module")
def url(model_dir: Path) -> Iterator[str]:
    with (
        torch_threads(1),
        ready_server(timeout=120, models=("cu-10-al", "cu-10"), model_dir=model_dir, device="cpu") as served,
    ):
        yield served


def candidates() -> list:
    """Rattled fcc Cu: near the training lattice constant, and strained far from it (compressed, stretched)."""
    frames = []
    for a, seed in [(3.61, 1), (3.40, 2), (3.61, 3), (3.20, 4), (3.95, 5), (3.55, 6)]:
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.04, seed=seed)
        frames.append(atoms)
    return frames


def as_dict(atoms) -> dict:
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(), "cell": atoms.cell.tolist()}


def test_select_answers_as_the_potential_does(url: str, model_dir: Path) -> None:
    frames = candidates()
    structures = [as_dict(a) for a in frames]
    structures.insert(2, {"symbols": ["Al"], "positions": [[0, 0, 0]], "cell": [4, 4, 4]})  # not covered
    body = {"model": "cu-10-al", "structures": structures, "max_count": 2, "threshold": 1.0, "uncertainty": "per_atom"}
    response = httpx.post(f"{url}/v1/select", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()

    with torch_threads(1):
        potential = load_model(ModelRegistry(model_dir), "cu-10-al", "cpu")
        systems = [AtomicSystem.from_ase(a) for a in frames]
        reference = potential.select(systems, 2, 1.0)
    request_index = [0, 1, 3, 4, 5, 6]  # the candidates' places in the request (the Al one is 2)
    assert answer["results"][2]["error"]["code"] == "element_not_covered"
    for j, index in enumerate(request_index):
        assert answer["results"][index]["grade"] == pytest.approx(reference.grades[j], rel=1e-12)
        np.testing.assert_allclose(answer["results"][index]["per_atom"], reference.per_atom[j], rtol=1e-12)
    assert answer["above"] == [request_index[j] for j in reference.above]
    assert answer["selected"] == [request_index[j] for j in reference.selected]
    assert 0 < len(answer["selected"]) <= 2

    # near the training data below 1, strained far from it above
    grades = reference.grades
    assert grades[0] < 1 and grades[2] < 1
    assert grades[1] > 1 and grades[3] > 1 and grades[4] > 1

    picked = read(io.StringIO(answer["extxyz"]), index=":", format="extxyz")
    assert [atoms.info["index"] for atoms in picked] == answer["selected"]
    for atoms in picked:
        j = request_index.index(atoms.info["index"])
        np.testing.assert_allclose(atoms.positions, frames[j].positions, atol=1e-8)
        assert atoms.info["grade"] == pytest.approx(grades[j], rel=1e-8)


def test_client_select_and_max_count(url: str) -> None:
    frames = candidates()
    with Client(url, model="cu-10-al", progress=False) as client:
        one = client.select(frames, max_count=1)
        every = client.select(frames, max_count=100, threshold=1e9)
    assert len(one.selected) == 1
    assert one.selected[0] in every.selected
    assert every.above == []
    np.testing.assert_allclose(one.grades, every.grades)
    assert [a.info["index"] for a in every.atoms()] == every.selected


def test_select_needs_a_model_with_an_active_set(url: str) -> None:
    body = {"model": "cu-10", "structures": [as_dict(candidates()[0])]}
    response = httpx.post(f"{url}/v1/select", json=body, timeout=30)
    assert response.status_code == 422
    assert "active set" in response.json()["error"]["message"]


def test_predictions_carry_the_grade(url: str) -> None:
    frames = candidates()[:2]
    body = {"model": "cu-10-al", "structures": [as_dict(a) for a in frames], "uncertainty": "per_atom"}
    results = httpx.post(f"{url}/v1/predict", json=body, timeout=30).json()["results"]
    with Client(url, model="cu-10-al", progress=False) as client:
        summaries = client.predict(frames)
    for entry, summary in zip(results, summaries, strict=True):
        assert entry["uncertainty"]["kind"] == "grade"
        assert entry["uncertainty"]["value"] == pytest.approx(max(entry["uncertainty"]["per_atom"]), rel=1e-12)
        assert len(entry["uncertainty"]["per_atom"]) == len(frames[0])
        assert summary.uncertainty == {k: v for k, v in entry["uncertainty"].items() if k != "per_atom"}
    plain = httpx.post(f"{url}/v1/predict", json=body | {"model": "cu-10"}, timeout=30).json()["results"]
    assert "uncertainty" not in plain[0]


def test_max_grade_stops_a_relaxation_at_the_first_extrapolating_geometry(url: str) -> None:
    near, strained = candidates()[0], candidates()[1]
    # atoms only: relaxing the cell takes this MTP to a = 3.597 Å, where its grade passes 1 (the training
    # configurations are MD frames at a = 3.61 Å), so that relaxation would stop as extrapolating too
    body = {"model": "cu-10-al", "structures": [as_dict(near), as_dict(strained)], "max_grade": 1.0}
    body["relax_cell"] = False
    near_entry, strained_entry = httpx.post(f"{url}/v1/relax", json=body, timeout=120).json()["results"]
    assert strained_entry["stop_reason"] == "extrapolating" and strained_entry["steps"] == 0
    assert strained_entry["uncertainty"]["value"] > 1.0
    np.testing.assert_allclose(strained_entry["structure"]["positions"], strained.positions, atol=1e-12)
    assert near_entry["stop_reason"] == "converged"
    assert near_entry["uncertainty"]["max_along_path"] <= 1.0
    assert near_entry["uncertainty"]["max_along_path"] >= near_entry["uncertainty"]["value"]


def test_mlipserve_select_writes_the_subset_for_dft(url: str, tmp_path: Path, capsys) -> None:
    candidates_file, output, above = tmp_path / "candidates.extxyz", tmp_path / "dft.extxyz", tmp_path / "above.extxyz"
    write(candidates_file, candidates(), format="extxyz")
    arguments = ["select", str(candidates_file), "-o", str(output), "--server", url, "--model", "cu-10-al"]
    main([*arguments, "--max-count", "2", "--above", str(above)])
    picked = read(output, index=":")
    flagged = read(above, index=":")
    assert 0 < len(picked) <= 2
    with Client(url, model="cu-10-al", progress=False) as client:
        selection = client.select(read(candidates_file, index=":"), max_count=2)  # as the command read them
    assert [atoms.info["candidate"] for atoms in picked] == selection.selected
    assert [atoms.info["candidate"] for atoms in flagged] == selection.above
    assert all(atoms.info["grade"] > 1 for atoms in flagged) and all(atoms.calc is None for atoms in picked)
    assert f"{len(selection.above)} above 1" in capsys.readouterr().err


def test_mlipserve_select_takes_a_relaxation_jobs_final_geometries(url: str, tmp_path: Path, capsys) -> None:
    """``--job ID``: the candidates are the job's relaxed structures, selected as if given in a file."""
    with Client(url, model="cu-10-al", progress=False) as client:
        job_id = client.submit_job(candidates()[:4], relax=RelaxOptions(fmax=0.1, max_steps=5))
        relaxed = [result.atoms for result in client.job_results(job_id)]
        selection = client.select(relaxed, max_count=2)
        prediction_job = client.submit_job(candidates()[:1])
        list(client.job_results(prediction_job))
    output = tmp_path / "dft.extxyz"
    main(["select", "--job", job_id, "-o", str(output), "--server", url, "--model", "cu-10-al", "--max-count", "2"])
    picked = read(output, index=":")
    assert [atoms.info["candidate"] for atoms in picked] == selection.selected
    assert all(atoms.info["source"] == f"job:{job_id}" for atoms in picked)
    with pytest.raises(SystemExit) as exited:
        main(["select", "--job", prediction_job, "-o", str(tmp_path / "none.extxyz"), "--server", url])
    assert exited.value.code == 1
    assert "prediction job" in capsys.readouterr().err
