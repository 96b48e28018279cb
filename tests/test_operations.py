"""Operating a fleet: Prometheus metrics, /v1/status, request ids in JSON logs, `mlipserve status`, scaling from
zero workers, and a worker's graceful drain (SIGTERM), with real Redis and real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from ase.build import bulk
from mlipserve.clients import Client
from mlipserve.server.config import ServerSettings
from mlipserve.server.transport.redis import layout
from prometheus_client.parser import text_string_to_metric_families

from .conftest import RunningServer, free_port
from .test_redis import hafnia

MODEL = "hfo2-cp0"  # SevenNet's small HfO2 test checkpoint: a real model that loads in seconds


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``/metrics, by name and labels."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 60.0, logs: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    detail = f"\n--- {logs} ---\n{logs.read_text()[-3000:]}" if logs and logs.exists() else ""
    raise TimeoutError(f"{what} did not happen within {timeout} s{detail}")


class LoggedWorker:
    """`mlipserve worker` with its log in a file and its probes on a free port."""

    def __init__(self, redis_url: str, model_dir: Path, log: Path, *extra: str):
        self.port = free_port()
        self.log = log
        command = [sys.executable, "-m", "mlipserve.server.cli", "worker", "--model", MODEL, "--redis", redis_url]
        command += ["--model-dir", str(model_dir), "--device", "cpu", "--threads", "1", "--claim-idle", "60"]
        command += ["--metrics-port", str(self.port), *extra]
        with log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture()
def workers(tmp_path: Path) -> Iterator[list[LoggedWorker]]:
    started: list[LoggedWorker] = []
    yield started
    for worker in started:
        worker.stop()


# --- the front end: embedded mode, the session's server -------------------------------------------------------


def test_metrics_count_requests_by_route_template_and_the_work_done(server_url: str, client: Client) -> None:
    structures = [bulk("Si"), bulk("Cu", cubic=True), bulk("NaCl", "rocksalt", a=5.64)]
    before = scrape(server_url)
    client.predict(structures, model="7net-0")
    httpx.get(f"{server_url}/v1/jobs/no-such-job")
    after = scrape(server_url)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("mlipserve_structures_total", model="7net-0", outcome="ok") == 3
    assert grew("mlipserve_atoms_total", model="7net-0") == sum(len(atoms) for atoms in structures)
    assert grew("mlipserve_http_requests_total", method="POST", route="/v1/predict", status="200") >= 1
    # the route's template, never the raw path: one series however many job ids are asked for
    assert grew("mlipserve_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="404") == 1
    assert not any("no-such-job" in str(labels) for _, labels in after)
    assert grew("mlipserve_http_request_seconds_count", method="POST", route="/v1/predict") >= 1
    assert sample(after, "mlipserve_workers", model="7net-0") == 1
    assert sample(after, "mlipserve_queue_queued", model="7net-0") >= 0


def test_status_shows_models_workers_jobs_and_recent_errors(server_url: str, client: Client) -> None:
    refused = httpx.post(f"{server_url}/v1/predict", json={"model": "no-such-model", "structures": []})
    assert refused.status_code == 404
    job_id = client.submit_job([bulk("Si")] * 3, model="7net-0")
    wait_for("the job to end", lambda: client.job(job_id)["state"] == "done")

    status = httpx.get(f"{server_url}/v1/status").json()
    assert status["server"]["mode"] == "embedded" and status["server"]["uptime_s"] > 0
    models = {model["name"]: model for model in status["models"]}
    assert models["7net-0"]["state"] == "ready"
    assert models["7net-0"]["workers"][0]["device"] == "cpu"
    assert isinstance(models["7net-0"]["queued"], int) and isinstance(models["7net-0"]["pending"], int)
    job = next(job for job in status["jobs"] if job["id"] == job_id)
    assert (job["total"], job["done"], job["state"], job["kind"]) == (3, 3, "done", "predict")
    latest = status["recent_errors"][0]
    assert (latest["path"], latest["status"], latest["code"]) == ("/v1/predict", 404, "unknown_model")


def test_request_id_is_echoed_or_made(server_url: str) -> None:
    assert httpx.get(f"{server_url}/healthz", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == (
        "trace-42"
    )
    made = httpx.get(f"{server_url}/healthz").headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0


# --- Redis mode: processes of their own ----------------------------------------------------------------------


def test_json_logs_have_one_object_per_line_with_the_request_id(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "mlipserve.server.cli", "serve", "--port", str(port), "--redis", redis_url]
    with log.open("w") as out:
        server = subprocess.Popen([*command, "--log-format", "json"], stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("the API to answer", lambda: _answers(f"{url}/healthz"), logs=log)
        httpx.get(f"{url}/v1/models", headers={"X-Request-ID": "find-me-7"})
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line.get("request_id") == "find-me-7" and "/v1/models" in line["message"] for line in lines)


def test_scale_from_zero_queues_work_until_a_worker_starts(
    own_redis, model_dir: Path, workers: list[LoggedWorker], tmp_path: Path
) -> None:
    """With --scale-from-zero the API takes work for a model with no worker, as KEDA's scaler needs."""
    settings = ServerSettings(
        port=free_port(), models=(MODEL,), model_dir=model_dir, redis_url=own_redis.url, scale_from_zero=True
    )
    with RunningServer(settings) as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200  # no worker, yet ready to queue
        answers: list = []
        waiting = threading.Thread(
            target=lambda: answers.append(Client(server.url, model=MODEL, progress=False).predict(hafnia(2)))
        )
        waiting.start()
        depth = wait_for("the work to be queued", lambda: _model(server.url)["queued"] == 2)
        assert depth and not answers
        workers.append(LoggedWorker(own_redis.url, model_dir, tmp_path / "worker.log"))
        waiting.join(120)
        assert len(answers) == 1 and all(result.ok for result in answers[0])


def test_sigterm_drains_a_worker_and_hands_its_relaxations_back(
    own_redis, model_dir: Path, workers: list[LoggedWorker], tmp_path: Path
) -> None:
    settings = ServerSettings(port=free_port(), models=(MODEL,), model_dir=model_dir, redis_url=own_redis.url)
    with RunningServer(settings) as server:
        first = LoggedWorker(own_redis.url, model_dir, tmp_path / "first.log", "--drain-timeout", "1")
        workers.append(first)
        wait_for("the first worker to be ready", first.ready, logs=first.log)
        with Client(server.url, model=MODEL, progress=False) as client:
            # relaxations to a force no model reaches in a second: the drain must hand them back
            job_id = client.submit_job(hafnia(6, seed=3), relax={"fmax": 1e-4, "max_steps": 300})
            wait_for("the worker to hold every relaxation", lambda: _model(server.url)["pending"] == 6)

            fleet = json.loads(_cli("status", "--redis", own_redis.url, "--json"))
            (model,) = [m for m in fleet["models"] if m["name"] == MODEL]
            assert (model["pending"], len(model["workers"])) == (6, 1)
            assert model["workers"][0]["draining"] is False and model["workers"][0]["heartbeat_age_s"] < 10
            assert "serving" in _cli("status", "--redis", own_redis.url)

            started = time.monotonic()
            first.process.send_signal(signal.SIGTERM)
            assert first.process.wait(60) == 0
            drain_seconds = time.monotonic() - started
            log = first.log.read_text()
            assert "handed back 6" in log, log[-2000:]
            queue = redis.Redis.from_url(own_redis.url)
            stream = layout.task_stream(MODEL)
            assert queue.xinfo_consumers(stream, layout.GROUP) == []  # left the group, holding nothing
            assert (queue.xlen(stream), queue.xpending(stream, layout.GROUP)["pending"]) == (6, 0)
            assert queue.keys(layout.heartbeat_pattern(MODEL)) == []

            second = LoggedWorker(own_redis.url, model_dir, tmp_path / "second.log")
            workers.append(second)
            results = list(client.job_results(job_id))
            assert len(results) == 6 and all(result.ok for result in results)  # in input order, each once
            worker_metrics = scrape(second.url)
            assert sample(worker_metrics, "mlipserve_worker_tasks_reclaimed_total") == 0  # none redelivered
            assert sample(worker_metrics, "mlipserve_worker_batch_atoms_count") > 0
            print(f"drain: SIGTERM to exit {drain_seconds:.1f} s with --drain-timeout 1")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def _model(url: str) -> dict[str, Any]:
    return next(model for model in httpx.get(f"{url}/v1/status").json()["models"] if model["name"] == MODEL)


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mlipserve.server.cli", *args], capture_output=True, text=True, env=os.environ
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
