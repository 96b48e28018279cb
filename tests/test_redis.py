"""Redis mode: standalone workers behind one HTTP endpoint, with a real Redis; failures lose no accepted job."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from ase.build import bulk, molecule
from mlipserve.clients import Client, RequestFailed
from mlipserve.models.system import AtomicSystem
from mlipserve.server.config import RedisWorkerSettings, ServerSettings
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.loop import Worker
from mlipserve.server.engine.tasks import Task
from mlipserve.server.transport.redis import layout
from mlipserve.server.transport.redis.broker import RedisBroker
from mlipserve.server.transport.redis.codec import decode_result, encode_task
from mlipserve.server.transport.redis.source import RedisTaskSource

from .conftest import RunningServer, free_port
from .redis_fixtures import WorkerProcess, wait_for_workers
from .toy_potential import POISON, LennardJonesPotential


def hafnia(count: int, seed: int = 0) -> list:
    """Rattled, strained HfO2 cells (the elements of the small ``hfo2-cp0`` test model)."""
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(count):
        atoms = bulk("Hf", "fcc", a=5.1, cubic=True)
        atoms += bulk("O", "sc", a=2.55, cubic=True) * (2, 2, 2)
        atoms.positions[4:] += 1.275
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        structures.append(atoms)
    return structures


@pytest.fixture()
def redis_server_app(redis_url: str, model_dir: Path) -> Iterator[RunningServer]:
    settings = ServerSettings(port=free_port(), models=(), model_dir=model_dir, redis_url=redis_url)
    with RunningServer(settings) as running:
        yield running


def test_no_worker_means_503_with_retry_after(redis_server_app: RunningServer) -> None:
    response = httpx.post(
        f"{redis_server_app.url}/v1/predict",
        json={"model": "chgnet-0.3.0", "structures": [{"symbols": ["Si"], "positions": [[0, 0, 0]], "cell": [3] * 3}]},
    )
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_workers"
    assert float(response.headers["Retry-After"]) > 0


def test_two_models_on_one_redis_are_routed_by_name(
    redis_server_app: RunningServer, redis_url: str, model_dir: Path, client: Client
) -> None:
    workers = [WorkerProcess(name, redis_url, model_dir) for name in ("hfo2-cp0", "chgnet-0.3.0")]
    try:
        wait_for_workers(redis_server_app.url, "hfo2-cp0", 1)
        wait_for_workers(redis_server_app.url, "chgnet-0.3.0", 1)
        with Client(redis_server_app.url, progress=False) as remote:
            for model, structures in (("hfo2-cp0", hafnia(3)), ("chgnet-0.3.0", [bulk("Si"), molecule("CH4")])):
                served = remote.predict(structures, model=model)
                embedded = client.predict(structures, model=model)  # the session's embedded server
                assert {r.model["name"] for r in served} == {model}
                for a, b in zip(served, embedded, strict=True):
                    assert a.energy == pytest.approx(b.energy, abs=1e-5)
                    np.testing.assert_allclose(a.forces, b.forces, atol=1e-5)
            models = {m["name"]: m for m in remote.models()}
            assert models["hfo2-cp0"]["workers"][0]["device"] == "cpu"
    finally:
        for worker in workers:
            worker.stop()


def test_redis_restart_gives_503_then_recovers(own_redis, model_dir: Path) -> None:
    settings = ServerSettings(port=free_port(), models=("hfo2-cp0",), model_dir=model_dir, redis_url=own_redis.url)
    worker = WorkerProcess("hfo2-cp0", own_redis.url, model_dir)
    structures = hafnia(2)
    try:
        with RunningServer(settings) as server:
            wait_for_workers(server.url, "hfo2-cp0", 1)
            with Client(server.url, model="hfo2-cp0", retries=0, progress=False) as once:
                before = once.predict(structures)
                own_redis.stop()
                with pytest.raises(RequestFailed) as raised:
                    once.predict(structures)
                assert raised.value.status == 503 and raised.value.code in {"redis_unavailable", "no_workers"}
                assert httpx.get(f"{server.url}/readyz").status_code == 503
                own_redis.start()  # same port, empty: the server and the worker must find their way back
            with Client(server.url, model="hfo2-cp0", retries=20, backoff=0.25, progress=False) as patient:
                after = patient.predict(structures)
            assert [r.energy for r in after] == pytest.approx([r.energy for r in before], abs=1e-6)
            assert httpx.get(f"{server.url}/readyz").status_code == 200
    finally:
        worker.stop()


def test_structure_that_makes_the_model_raise_gets_an_error_entry(redis_url: str) -> None:
    """A real Redis round trip with the Lennard-Jones toy model, which raises on any structure holding Og."""
    settings = RedisWorkerSettings(redis_url=redis_url, model="toy-lj", claim_idle=60)
    client = redis.Redis.from_url(redis_url)
    source = RedisTaskSource(client, settings, consumer="test-worker")
    source.ensure_group()
    worker = Worker(LennardJonesPotential(), source, BatchPolicy(max_atoms=1000, max_wait=0.05, idle_poll=0.1))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()

    argon = bulk("Ar", "fcc", a=1.6, cubic=True)
    poisoned = AtomicSystem.from_arrays([POISON, POISON], [[0, 0, 0], [2, 0, 0]])
    systems = [AtomicSystem.from_ase(argon), poisoned, AtomicSystem.from_ase(argon * (2, 1, 1))]
    tasks = [Task(f"toy-{i}", "toy-lj", s, ("energy", "forces", "stress")) for i, s in enumerate(systems)]

    async def submit() -> list:
        broker = RedisBroker(redis_url, timeout=60)
        await broker.start()
        try:
            return await broker.submit(tasks)
        finally:
            await broker.close()

    try:
        results = asyncio.run(submit())
    finally:
        stop.set()
        thread.join(5)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_code == "model_error" and "poisoned structure" in results[1].error_message
    assert results[2].prediction.energy == pytest.approx(2 * results[0].prediction.energy, rel=1e-9)
    assert client.xlen(layout.task_stream("toy-lj")) == 0  # acknowledged and deleted


def test_task_that_keeps_killing_workers_is_dead_lettered(redis_url: str) -> None:
    model = "dead-letter-test"
    settings = RedisWorkerSettings(redis_url=redis_url, model=model, claim_idle=0.05, max_deliveries=2)
    client = redis.Redis.from_url(redis_url)
    source = RedisTaskSource(client, settings, consumer="survivor")
    source.ensure_group()
    reply_to = layout.reply_stream("dead-letter-test-server")
    task = Task("doomed", model, AtomicSystem.from_ase(bulk("Si")), ("energy",))
    client.xadd(source.stream, {"m": encode_task(task, reply_to)})
    for crashed in ("crashed-1", "crashed-2"):  # two workers take the task and die without acking
        client.xreadgroup(layout.GROUP, crashed, {source.stream: ">"}, count=1)
        time.sleep(0.1)
        client.xautoclaim(source.stream, layout.GROUP, crashed, min_idle_time=50, start_id="0-0")
    time.sleep(0.1)
    assert source.fetch(10, timeout=0.1) == []  # delivered a third time: more than max_deliveries
    [(_, [(_, fields)])] = client.xread({reply_to: "0-0"})
    result = decode_result(fields[b"m"])
    assert result.task_id == "doomed" and result.error_code == "worker_crashed"
    assert client.xlen(layout.dead_letter_stream(model)) == 1
    assert client.xlen(source.stream) == 0


@contextlib.contextmanager
def two_workers(redis_url: str, model_dir: Path, batch_atoms: int) -> Iterator[tuple[Client, list[WorkerProcess]]]:
    """A Redis-mode server and two `mlipserve worker` processes of hfo2-cp0 (claiming idle tasks after 2 s)."""
    settings = ServerSettings(port=free_port(), models=("hfo2-cp0",), model_dir=model_dir, redis_url=redis_url)
    options = ("--claim-idle", "2", "--batch-atoms", str(batch_atoms))
    workers = [WorkerProcess("hfo2-cp0", redis_url, model_dir, *options) for _ in range(2)]
    try:
        with RunningServer(settings) as server, Client(server.url, model="hfo2-cp0", progress=False) as remote:
            wait_for_workers(server.url, "hfo2-cp0", 2)
            yield remote, workers
    finally:
        for worker in workers:
            worker.stop()


def test_job_survives_a_worker_killed_mid_run(redis_url: str, model_dir: Path, client: Client) -> None:
    """Two workers, 500 structures through /v1/jobs, one worker SIGKILLed: 500 results, each once, as embedded."""
    structures = hafnia(500, seed=7)
    with two_workers(redis_url, model_dir, batch_atoms=48) as (remote, workers):
        job_id = remote.submit_job(structures)
        deadline = time.monotonic() + 120
        while remote.job(job_id)["done"] < 100:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.02)
        workers[0].kill()
        while (status := remote.job(job_id))["state"] not in {"done", "failed", "cancelled"}:
            assert time.monotonic() < deadline + 180, f"the job did not finish: {status}"
            time.sleep(0.2)
        assert status["state"] == "done" and status["done"] == 500 and status["errors"] == 0, status
        served = list(remote.job_results(job_id))
    assert len(served) == 500 and all(result.ok for result in served)
    embedded = client.predict(structures, model="hfo2-cp0")
    np.testing.assert_allclose([r.energy for r in served], [r.energy for r in embedded], atol=1e-5)
    np.testing.assert_allclose(
        np.concatenate([r.forces for r in served]), np.concatenate([r.forces for r in embedded]), atol=1e-5
    )


def test_relaxations_survive_a_worker_killed_mid_run(redis_url: str, model_dir: Path, client: Client) -> None:
    """A relaxation job on two workers, one SIGKILLed after the first results: every relaxation still ends."""
    structures = hafnia(12, seed=11)
    for atoms in structures:
        atoms.rattle(0.15, seed=1)
    relax = {"fmax": 0.01, "max_steps": 100}
    with two_workers(redis_url, model_dir, batch_atoms=24) as (remote, workers):
        job_id = remote.submit_job(structures, relax=relax)
        deadline = time.monotonic() + 180
        while (status := remote.job(job_id))["done"] < 1:  # relaxation jobs record chunks of 4
            assert time.monotonic() < deadline, f"no relaxation ended: {status}"
            time.sleep(0.05)
        assert status["state"] == "running", "the job ended before a worker could be killed"
        workers[0].kill()
        while (status := remote.job(job_id))["state"] not in {"done", "failed", "cancelled"}:
            assert time.monotonic() < deadline + 180, f"the job did not finish: {status}"
            time.sleep(0.2)
        assert status["state"] == "done" and status["errors"] == 0, status
        served = list(remote.job_results(job_id))
    embedded = client.relax(structures, model="hfo2-cp0", **relax)
    for remote_result, local in zip(served, embedded, strict=True):
        assert remote_result.converged == local.converged
        assert abs(remote_result.steps - local.steps) <= max(2, 0.1 * local.steps)
        assert remote_result.energy_per_atom == pytest.approx(local.energy_per_atom, abs=1e-4)
