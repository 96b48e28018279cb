"""Server-side jobs (/v1/jobs): same numbers and errors as /v1/predict, results streamed in order, cancellation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import read, write
from mlipserve.clients import AsyncClient, Client, RequestFailed, StructureFailed
from mlipserve.clients.encoding import encode_structure
from mlipserve.server.config import ServerSettings

from .conftest import RunningServer, free_port

E_TOL = 1e-6  # eV


def small_structures(count: int, seed: int = 0) -> list:
    """Rattled small crystals and a few molecules, all different."""
    templates = [
        bulk("Si"),
        bulk("Cu"),
        bulk("Al", cubic=True),
        bulk("NaCl", "rocksalt", a=5.64),
        bulk("MgO", "rocksalt", a=4.21),
        bulk("GaAs", "zincblende", a=5.65),
        bulk("C"),
        molecule("H2O"),
        molecule("CH4"),
    ]
    structures = []
    for i in range(count):
        atoms = templates[i % len(templates)].copy()
        atoms.rattle(0.03, seed=seed + i)
        structures.append(atoms)
    return structures


def job_structures() -> tuple[list[dict], dict[int, str]]:
    """70 encoded structures (so the job spans two decoding slices) with bad ones at known places."""
    structures = [encode_structure(atoms) for atoms in small_structures(70)]
    overlapping = encode_structure(bulk("Si"))
    overlapping["positions"][1] = [0.1, 0.0, 0.0]
    structures[5] = overlapping
    structures[23] = {"symbols": ["Si", "Qq"], "positions": [[0, 0, 0], [1.5, 1.5, 1.5]]}
    structures[66] = {"symbols": ["Og"], "positions": [[0, 0, 0]], "cell": [4, 4, 4], "pbc": True}
    return structures, {5: "atoms_too_close", 23: "unknown_element", 66: "element_not_covered"}


def wait_for(url: str, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if status["state"] in ("done", "cancelled", "failed"):
            return status
        assert time.monotonic() < deadline, f"job still {status['state']} after {timeout} s: {status}"
        time.sleep(0.05)


def stream_lines(url: str, job_id: str) -> list[dict]:
    import json

    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/results", timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in response.iter_lines() if line]


def assert_same_entry(job_entry: dict, predict_entry: dict) -> None:
    if "error" in predict_entry:
        assert job_entry == predict_entry
        return
    assert set(job_entry) == set(predict_entry)
    assert abs(job_entry["energy"] - predict_entry["energy"]) <= E_TOL
    np.testing.assert_allclose(job_entry["forces"], predict_entry["forces"], atol=1e-6)
    if predict_entry["stress"] is None:
        assert job_entry["stress"] is None
    else:
        np.testing.assert_allclose(job_entry["stress"], predict_entry["stress"], atol=1e-6)


def test_job_streams_the_entries_of_predict_in_order(server_url: str) -> None:
    structures, bad = job_structures()
    body = {"model": "7net-0", "structures": structures}
    created = httpx.post(f"{server_url}/v1/jobs", json=body, timeout=60)
    assert created.status_code == 202, created.text
    job = created.json()
    assert set(job) == {"id", "state", "model", "total"}
    assert job["model"] == "7net-0" and job["total"] == len(structures)
    assert created.headers["location"] == f"/v1/jobs/{job['id']}"

    lines = stream_lines(server_url, job["id"])  # opened while the job runs: it follows the job to its end
    status = httpx.get(f"{server_url}/v1/jobs/{job['id']}").json()
    assert status["state"] == "done" and status["error"] is None and status["finished"] is not None
    assert (status["total"], status["done"], status["errors"]) == (len(structures), len(structures), len(bad))
    assert status["model_info"]["name"] == "7net-0" and status["model_info"]["device"] == "cpu"
    assert [line.pop("index") for line in lines] == list(range(len(structures)))

    predicted = httpx.post(f"{server_url}/v1/predict", json=body, timeout=120).json()
    assert status["model_info"] == predicted["model"]
    for index, (entry, reference) in enumerate(zip(lines, predicted["results"], strict=True)):
        assert_same_entry(entry, reference)
        if index in bad:
            assert entry["error"]["code"] == bad[index]
            assert entry["error"]["message"].startswith(f"structure {index}: ")
        else:
            assert "error" not in entry
    # a finished job streams again, from the start or from any index
    assert len(stream_lines(server_url, job["id"])) == len(structures)
    resumed = httpx.get(f"{server_url}/v1/jobs/{job['id']}/results", params={"start": 60}).text.splitlines()
    assert [int(line.split(",")[0].removeprefix('{"index":')) for line in resumed] == list(range(60, 70))


def test_extxyz_upload_matches_predict(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "frames.extxyz"
    write(path, small_structures(5, seed=100), format="extxyz")
    frames = read(path, index=":", format="extxyz")
    job_id = client.submit_job_file(path, model="7net-0", properties=("energy", "forces"))
    status = wait_for(client.settings.url, job_id)
    assert status["state"] == "done" and (status["total"], status["done"], status["errors"]) == (5, 5, 0)
    from_job = list(client.job_results(job_id))
    from_predict = client.predict(frames, model="7net-0", properties=("energy", "forces"))
    assert len(from_job) == len(frames)
    for a, b in zip(from_job, from_predict, strict=True):
        assert abs(a.energy - b.energy) <= E_TOL
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-6)
        assert a.stress is None


def test_unreadable_upload_is_refused(server_url: str) -> None:
    response = httpx.post(f"{server_url}/v1/jobs", files={"file": ("x.extxyz", b"not extxyz\n")}, data={})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unparsable_text" and "number of atoms" in error["message"]
    truncated = b'3\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3\nSi 0 0 0\n'
    response = httpx.post(f"{server_url}/v1/jobs", files={"file": ("x.extxyz", truncated)})
    assert response.status_code == 422 and response.json()["error"]["code"] == "unparsable_text"


def test_upload_with_a_bad_later_frame_fails_the_job(server_url: str, tmp_path: Path) -> None:
    path = tmp_path / "frames.extxyz"
    write(path, small_structures(2), format="extxyz")
    text = path.read_text() + "4\nbroken frame\nSi 0 0 0\n"
    response = httpx.post(f"{server_url}/v1/jobs", files={"file": ("x.extxyz", text)}, data={"model": "7net-0"})
    assert response.status_code == 202 and response.json()["total"] is None
    status = wait_for(server_url, response.json()["id"])
    assert status["state"] == "failed" and "could not read the extxyz file" in status["error"]
    assert stream_lines(server_url, status["id"]) == []


def test_cancel_stops_the_job_and_keeps_the_finished_prefix(client: Client, server_url: str) -> None:
    structures = [encode_structure(atoms) for atoms in small_structures(400, seed=7)]
    created = httpx.post(f"{server_url}/v1/jobs", json={"model": "chgnet-0.3.0", "structures": structures})
    assert created.status_code == 202
    job_id = created.json()["id"]
    cancelled = httpx.delete(f"{server_url}/v1/jobs/{job_id}")
    assert cancelled.status_code == 200
    status = cancelled.json()
    assert status["state"] == "cancelled" and status["finished"] is not None
    assert status["total"] == len(structures) and status["done"] < status["total"]

    lines = stream_lines(server_url, job_id)
    assert [line["index"] for line in lines] == list(range(len(lines)))
    assert len(lines) <= status["done"]
    time.sleep(0.5)
    later = httpx.get(f"{server_url}/v1/jobs/{job_id}").json()
    assert later["state"] == "cancelled" and later["done"] == status["done"]  # nothing more was submitted
    assert httpx.delete(f"{server_url}/v1/jobs/{job_id}").json()["state"] == "cancelled"

    result = client.predict(bulk("Si"), model="chgnet-0.3.0")
    assert result.energy < 0


def test_unknown_job(server_url: str) -> None:
    for method, path in [("GET", ""), ("GET", "/results"), ("DELETE", "")]:
        response = httpx.request(method, f"{server_url}/v1/jobs/no-such-job{path}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_job"


def test_unknown_model_and_bad_bodies_are_refused_before_a_job_exists(server_url: str) -> None:
    silicon = encode_structure(bulk("Si"))
    response = httpx.post(f"{server_url}/v1/jobs", json={"model": "7net-O", "structures": [silicon]})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_model" and "did you mean '7net-0'" in error["message"]
    upload = httpx.post(f"{server_url}/v1/jobs", files={"file": ("a.extxyz", "1\n\nSi 0 0 0\n")}, data={"model": "x"})
    assert upload.status_code == 404 and upload.json()["error"]["code"] == "unknown_model"
    empty = httpx.post(f"{server_url}/v1/jobs", json={"structures": []})
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "no_structures"
    wrong = httpx.post(f"{server_url}/v1/jobs", json={"structures": [silicon], "properties": ["magmoms"]})
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_request"
    form = httpx.post(f"{server_url}/v1/jobs", files={"file": ("a.xyz", "1\n\nSi 0 0 0\n")}, data={"properties": "dos"})
    assert form.status_code == 422 and form.json()["error"]["code"] == "invalid_request"


def test_run_job_returns_what_predict_returns(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    structures = small_structures(12, seed=50)
    bad = bulk("Si")
    bad.positions[1] = bad.positions[0]
    structures.insert(4, bad)
    with Client(server_url, model="7net-0", progress=False) as client:
        from_job = client.run_job(structures, errors="return", progress=True, poll=0.05)
        from_predict = client.predict(structures, errors="return")
        with pytest.raises(StructureFailed, match="structure 4: atoms 0 and 1") as raised:
            client.run_job(structures, poll=0.05)
    assert raised.value.index == 4 and raised.value.code == "atoms_too_close"
    assert f"{len(structures)}/{len(structures)}" in capsys.readouterr().err  # the progress bar reached the end
    assert len(from_job) == len(from_predict) == len(structures)
    for a, b in zip(from_job, from_predict, strict=True):
        assert a.model == b.model
        if b.error is not None:
            assert (a.error.index, a.error.code, a.error.message) == (b.error.index, b.error.code, b.error.message)
            continue
        assert abs(a.energy - b.energy) <= E_TOL and a.energy_per_atom == pytest.approx(b.energy_per_atom)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-6)
        if b.stress is None:
            assert a.stress is None
        else:
            np.testing.assert_allclose(a.stress, b.stress, atol=1e-6)


def test_async_client_jobs(server_url: str) -> None:
    structures = small_structures(4, seed=90)

    async def run() -> tuple[list, dict]:
        async with AsyncClient(server_url, model="chgnet-0.3.0", progress=False) as client:
            results = await client.run_job(structures, poll=0.05)
            job_id = await client.submit_job(structures)
            cancelled = await client.cancel_job(job_id)
            return results, cancelled

    results, cancelled = asyncio.run(run())
    with Client(server_url, model="chgnet-0.3.0", progress=False) as client:
        reference = client.predict(structures)
        with pytest.raises(RequestFailed) as raised:
            client.job("no-such-job")
    assert raised.value.status == 404 and raised.value.code == "unknown_job"
    assert [r.energy for r in results] == pytest.approx([r.energy for r in reference], abs=E_TOL)
    assert cancelled["state"] in ("cancelled", "done")


def test_job_limit_and_broker_refusals(model_dir: Path, tmp_path: Path) -> None:
    """A small server: at most 3 structures per job; its queue of 1 likely refuses some job chunks with 503 at first."""
    settings = ServerSettings(
        port=free_port(),
        models=("hfo2-cp0",),
        model_dir=model_dir,
        device="cpu",
        max_structures_per_job=3,
        queue_limit=1,
    )
    hafnia = bulk("HfO2", "fluorite", a=5.1)
    with RunningServer(settings) as running, Client(running.url, progress=False) as client:
        client.wait_until_ready(timeout=120)
        too_many = httpx.post(f"{running.url}/v1/jobs", json={"structures": [encode_structure(hafnia)] * 4})
        assert too_many.status_code == 413
        error = too_many.json()["error"]
        assert error["code"] == "too_many_structures" and "limit of 3 per job" in error["message"]

        path = tmp_path / "four.extxyz"
        write(path, [hafnia] * 4, format="extxyz")
        status = wait_for(running.url, client.submit_job_file(path))
        assert status["state"] == "failed" and "too_many_structures" in status["error"]

        rattled = [hafnia.copy() for _ in range(3)]
        for seed, atoms in enumerate(rattled):
            atoms.rattle(0.02, seed=seed)
        # chunks of one structure, several in flight, a queue of one: a refused chunk is retried until it is taken
        from_job = client.run_job(rattled, poll=0.05)
        with Client(running.url, chunk_size=1, concurrency=1, progress=False) as one_at_a_time:
            from_predict = one_at_a_time.predict(rattled)
    assert [r.energy for r in from_job] == pytest.approx([r.energy for r in from_predict], abs=E_TOL)
