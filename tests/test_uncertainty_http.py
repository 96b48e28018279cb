"""Uncertainty across the Redis transport: the codec carries it, and a committee's members on separate workers.

The Redis codec must carry ``Prediction.uncertainty``, a relaxation's largest uncertainty, selection tasks and
their outcome (round trips below). End to end: a front end in Redis mode, two worker processes (Cu MTPs of levels
06 and 10, the latter with an active set) and a committee card of the two served by neither: the front end fans
out to both workers and combines their answers; grades, selections and ``max_grade`` stops come back through Redis.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from ase.build import bulk
from mlipserve.errors import ErrorCode
from mlipserve.models.active_sets import Selection
from mlipserve.models.cards import file_sha256
from mlipserve.models.prediction import Prediction, Uncertainty
from mlipserve.models.system import AtomicSystem
from mlipserve.server.config import ServerSettings
from mlipserve.server.engine.tasks import SelectSpec, Task, TaskResult
from mlipserve.server.transport.redis.codec import decode_result, decode_task, encode_result, encode_task

from .conftest import FIXTURES, RunningServer, free_port
from .redis_fixtures import WorkerProcess, wait_for_workers
from .test_select import write_model_dir

CU = FIXTURES / "mtp" / "motep" / "crystals_cubic_Cu_1species"


def system(a: float = 3.61, seed: int = 1) -> AtomicSystem:
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.04, seed=seed)
    return AtomicSystem.from_ase(atoms)


def test_codec_carries_uncertainty_and_its_largest_value() -> None:
    per_atom = np.array([0.1, 0.25, 0.2])
    uncertainty = Uncertainty("committee", 0.25, per_atom, {"energy_std_per_atom": 0.01, "members": 3.0})
    prediction = Prediction(energy=-1.5, forces=np.ones((3, 3)), uncertainty=uncertainty)
    result = decode_result(encode_result(TaskResult("t", prediction=prediction, uncertainty_max=0.7)))
    assert result.uncertainty_max == 0.7
    back = result.prediction.uncertainty
    assert (back.kind, back.value, back.components) == ("committee", 0.25, uncertainty.components)
    np.testing.assert_array_equal(back.per_atom, per_atom)
    plain = decode_result(encode_result(TaskResult("t", prediction=Prediction(energy=1.0))))
    assert plain.prediction.uncertainty is None and plain.uncertainty_max is None


def test_codec_carries_selection_tasks_and_their_outcome() -> None:
    candidates = (system(3.61, 1), system(3.3, 2))
    task = Task("t", "m", candidates[0], ("energy",), select=SelectSpec(candidates, 5, 1.5))
    back, reply = decode_task(encode_task(task, "reply-stream"))
    assert reply == "reply-stream" and back.select.max_count == 5 and back.select.threshold == 1.5
    for a, b in zip(back.select.candidates, candidates, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.numbers, b.numbers)
    assert back.n_atoms == 16
    selection = Selection(np.array([0.5, 3.0]), [np.array([0.4, 0.5]), np.array([3.0, 1.0])], [1], [1, 0])
    result = decode_result(encode_result(TaskResult("t", selection=selection)))
    assert result.ok and result.prediction is None
    np.testing.assert_array_equal(result.selection.grades, selection.grades)
    assert (result.selection.above, result.selection.selected) == ([1], [1, 0])
    np.testing.assert_array_equal(result.selection.per_atom[1], selection.per_atom[1])
    failed = decode_result(encode_result(TaskResult.failure("t", ErrorCode.INVALID_REQUEST, "no active set")))
    assert not failed.ok and failed.error_code is ErrorCode.INVALID_REQUEST


@pytest.fixture(scope="module")
def redis_mode(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """A front end in Redis mode and one worker process for each of cu-06 and cu-10-al."""
    folder = write_model_dir(tmp_path_factory.mktemp("redis-uncertainty"))
    shutil.copy(CU / "06" / "pot.mtp", folder / "cu-06.mtp")
    (folder / "cu-06.yaml").write_text(
        f'name: cu-06\nfamily: mtp\nversion: test\ncheckpoint: cu-06.mtp\nsha256: "{file_sha256(folder / "cu-06.mtp")}"'
        "\nlicense: MIT\nelements: Cu\ncutoff: 5.0\n"
    )
    (folder / "cu-pair.yaml").write_text(
        'name: cu-pair\nfamily: committee\nversion: "1"\noptions: {members: [cu-06, cu-10-al]}\n'
    )
    settings = ServerSettings(port=free_port(), models=(), model_dir=folder, redis_url=redis_url)
    workers = [WorkerProcess(name, redis_url, folder) for name in ("cu-06", "cu-10-al")]
    try:
        with RunningServer(settings) as running:
            for name in ("cu-06", "cu-10-al"):
                wait_for_workers(running.url, name, 1)
            yield running.url
    finally:
        for worker in workers:
            worker.stop()


def as_dict(s: AtomicSystem) -> dict:
    return {"numbers": s.numbers.tolist(), "positions": s.positions.tolist(), "cell": s.cell.tolist()}


def test_committee_of_members_on_two_workers(redis_mode: str) -> None:
    structures = [as_dict(system(3.61, 1)), as_dict(system(3.35, 2))]
    with httpx.Client(base_url=redis_mode, timeout=60) as http:
        members = [
            http.post("/v1/predict", json={"model": name, "structures": structures, "uncertainty": "per_atom"}).json()
            for name in ("cu-06", "cu-10-al")
        ]
        committee = http.post("/v1/predict", json={"model": "cu-pair", "structures": structures}).json()
    assert committee["model"]["name"] == "cu-pair"
    for index, entry in enumerate(committee["results"]):
        own = [member["results"][index] for member in members]
        forces = np.array([r["forces"] for r in own])
        spread = np.sqrt(np.mean(np.sum((forces - forces.mean(axis=0)) ** 2, axis=2), axis=0))
        assert entry["energy"] == pytest.approx(np.mean([r["energy"] for r in own]), abs=1e-10)
        np.testing.assert_allclose(entry["forces"], forces.mean(axis=0), atol=1e-10)
        assert entry["uncertainty"]["value"] == pytest.approx(spread.max(), abs=1e-10)
        # the graded member's own answer came through Redis with its per-atom grades
        graded = own[1]["uncertainty"]
        assert graded["kind"] == "grade" and graded["value"] == pytest.approx(max(graded["per_atom"]), rel=1e-12)
    assert members[0]["results"][0].get("uncertainty") is None


def test_select_and_max_grade_through_redis(redis_mode: str) -> None:
    structures = [as_dict(system(3.61, 1)), as_dict(system(3.3, 2)), as_dict(system(3.9, 3))]
    with httpx.Client(base_url=redis_mode, timeout=60) as http:
        grades = [
            r["uncertainty"]["value"]
            for r in http.post("/v1/predict", json={"model": "cu-10-al", "structures": structures}).json()["results"]
        ]
        selected = http.post("/v1/select", json={"model": "cu-10-al", "structures": structures, "max_count": 1}).json()
        relax = {"model": "cu-10-al", "structures": structures[:2], "max_grade": 1.0, "relax_cell": False}
        relaxed = http.post("/v1/relax", json=relax).json()["results"]
    # the grades solve an ill-conditioned least-squares problem (the MTP Jacobian is singular by construction:
    # models/backends/mtp_grade.py), so two batches of different make-up agree to the 1e-8, not to 1e-12
    assert [r["grade"] for r in selected["results"]] == pytest.approx(grades, rel=1e-8)
    assert selected["above"] == [i for i, g in enumerate(grades) if g > 1] and len(selected["selected"]) == 1
    assert relaxed[0]["stop_reason"] == "converged" and relaxed[0]["uncertainty"]["max_along_path"] <= 1
    assert relaxed[1]["stop_reason"] == "extrapolating" and relaxed[1]["steps"] == 0
