"""Redis faults: Redis SIGKILLed in the middle of a job, with every write fsynced to its append-only file.

During the outage the API refuses new work with 503 ``redis_unavailable`` and ``Retry-After``; once Redis is back
(same port, same folder: it replays its append-only file) the server and the workers reconnect by themselves, the job
finishes, and every structure has exactly one result entry. Tasks that were in flight at the kill are persisted and
may still run after the restart, while the job has already resubmitted their chunk under new task ids: their results
must be dropped, never recorded twice.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from mlipserve.models.prediction import Prediction
from mlipserve.models.system import AtomicSystem
from mlipserve.server.config import RedisWorkerSettings, ServerSettings
from mlipserve.server.engine.tasks import Task, TaskResult
from mlipserve.server.transport.redis import layout
from mlipserve.server.transport.redis.codec import decode_result, encode_task
from mlipserve.server.transport.redis.source import RedisTaskSource

from .conftest import RunningServer, free_port
from .test_operations import MODEL, LoggedWorker
from .test_redis import hafnia

#: Structures in the job: about 20-40 s of work for two CPU workers of the small HfO2 model on a shared machine.
STRUCTURES = 2500
#: Seconds a worker waits before taking over tasks another consumer left idle: short, so that tasks whose
#: delivery failed at the kill are taken again soon and the test can see the queue empty.
CLAIM_IDLE = 5
#: How long Redis stays down: longer than the Retry-After of the 503s, so that the job's retries meet the dead Redis
#: too; than the workers' heartbeat TTL (10 s), so that their heartbeats have expired when Redis replays its file;
#: and than CLAIM_IDLE, so that the tasks the workers hold look abandoned when Redis is back.
OUTAGE = 12.0


class DurableRedis:
    """A redis-server of our own that fsyncs every write to its append-only file, killed and restarted in place."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary, self.folder = binary, folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = folder / "redis.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start (or restart: the same port and folder, so the append-only file is replayed) and wait for it."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", str(self.log)]
        command += ["--maxmemory-policy", "noeviction"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        # A Redis loading its append-only file answers LOADING (a ConnectionError in redis-py) until it is done.
        wait_for("redis-server to answer", lambda: _pings(client), timeout=20, step=0.02)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def wait_for(what: str, condition: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """The first truthy value of ``condition()``, checked every ``step`` s; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if value := condition():
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(step)


@pytest.fixture()
def durable_redis(tmp_path: Path) -> Iterator[DurableRedis]:
    server = DurableRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def logs_on_failure(logs: list[Path]) -> Iterator[None]:
    """Print the tail of every log when the block fails, so a failure in CI says what the processes saw."""
    try:
        yield
    except BaseException:
        for path in logs:
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            print(f"\n--- {path.name} ---\n{text[-4000:]}")
        raise


def structure_json(atoms: Any) -> dict[str, Any]:
    return {
        "numbers": atoms.numbers.tolist(),
        "positions": atoms.positions.tolist(),
        "cell": atoms.cell.array.tolist(),
        "pbc": atoms.pbc.tolist(),
    }


def _ready(url: str) -> bool:
    return httpx.get(f"{url}/readyz").status_code == 200


def _worker_saw_outage(worker: LoggedWorker) -> bool:
    return "Redis unreachable" in worker.log.read_text(errors="replace")


@pytest.mark.slow
def test_redis_killed_mid_job_gives_503_then_the_job_finishes_with_each_result_once(
    durable_redis: DurableRedis, model_dir: Path, tmp_path: Path
) -> None:
    settings = ServerSettings(port=free_port(), models=(MODEL,), model_dir=model_dir, redis_url=durable_redis.url)
    options = ("--claim-idle", str(CLAIM_IDLE))  # the last --claim-idle given wins over LoggedWorker's default
    workers = [LoggedWorker(durable_redis.url, model_dir, tmp_path / f"worker-{i}.log", *options) for i in range(2)]
    probe = {"model": MODEL, "structures": [structure_json(atoms) for atoms in hafnia(2, seed=1)]}
    queue = redis.Redis.from_url(durable_redis.url)  # reconnects by itself after the restart
    stream = layout.task_stream(MODEL)
    try:
        with (
            logs_on_failure([durable_redis.log, *(worker.log for worker in workers)]),
            RunningServer(settings) as server,
            httpx.Client(base_url=server.url, timeout=30) as http,
        ):
            for worker in workers:
                wait_for(f"worker {worker.log.name} to load the model", worker.ready, timeout=120)
            wait_for("the API to be ready", lambda: _ready(server.url), timeout=30)

            submitted = http.post(
                "/v1/jobs", json={"model": MODEL, "structures": [structure_json(a) for a in hafnia(STRUCTURES)]}
            )
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            started = time.monotonic()

            def status() -> dict[str, Any]:
                return http.get(f"/v1/jobs/{job_id}").json()

            def mid_job() -> dict[str, Any] | None:
                # Part done, and tasks both queued and held by the workers: what the kill must not lose or repeat.
                if (current := status())["done"] < STRUCTURES // 4:
                    return None
                held = queue.xpending(stream, layout.GROUP)["pending"]
                return current if held and queue.xlen(stream) > held else None

            before = wait_for("a quarter of the job to be done, with work queued and held", mid_job, 120)
            assert before["state"] == "running", before
            durable_redis.kill()
            killed = time.monotonic()
            print(f"\nRedis SIGKILLed {killed - started:.1f} s into the job, at {before['done']}/{STRUCTURES} done")

            refused = http.post("/v1/predict", json=probe)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "redis_unavailable", refused.text
            assert float(refused.headers["Retry-After"]) > 0
            assert http.get("/readyz").status_code == 503
            # Keep Redis down until both workers have noticed: their blocking reads broke, not merely timed out.
            for worker in workers:
                wait_for(f"worker {worker.log.name} to see the outage", lambda w=worker: _worker_saw_outage(w), 15)
            time.sleep(max(0.0, killed + OUTAGE - time.monotonic()))  # the outage itself, not a wait for an event
            during = status()
            assert during["state"] == "running", during  # refused chunks are retried, not failed
            assert http.get("/readyz").status_code == 503

            durable_redis.start()
            restarted = time.monotonic()
            # The file restored the queue: its tasks, and the consumer group with what each worker held.
            [group] = queue.xinfo_groups(stream)
            print(f"outage: {restarted - killed:.1f} s; Redis back with {queue.xlen(stream)} task(s) queued or held")
            assert group["name"] == layout.GROUP.encode()

            wait_for("the API to be ready again", lambda: _ready(server.url), timeout=30)
            print(f"/readyz 200 again {time.monotonic() - restarted:.1f} s after the restart")
            wait_for("the job to make progress again", lambda: status()["done"] > during["done"], 60)
            print(f"job progressing again {time.monotonic() - restarted:.1f} s after the restart")
            final = wait_for("the job to end", lambda: (s := status())["state"] in {"done", "failed"} and s, 180)
            ended = time.monotonic()
            assert final["state"] == "done", final
            assert (final["total"], final["done"], final["errors"]) == (STRUCTURES, STRUCTURES, 0), final
            print(f"job done {ended - restarted:.1f} s after the restart ({ended - started:.1f} s in all)")

            lines = http.get(f"/v1/jobs/{job_id}/results").content.splitlines()
            entries = [orjson.loads(line) for line in lines if line.strip()]
            assert [entry["index"] for entry in entries] == list(range(STRUCTURES))  # each once, in order
            assert not [entry for entry in entries if "error" in entry]
            assert all(isinstance(entry["energy"], float) for entry in entries)

            assert _ready(server.url)
            answered = http.post("/v1/predict", json=probe)
            assert answered.status_code == 200, answered.text

            # Tasks in flight at the kill were persisted: they run after the restart (their results are dropped,
            # their chunks having been resubmitted) or are taken over once idle; none is stranded in the queue.
            wait_for("every task left from before the kill to end", lambda: queue.xlen(stream) == 0, 60)
            print(f"queue empty {time.monotonic() - restarted:.1f} s after the restart")
            for worker in workers:  # both rode out the outage: neither crashed nor stopped
                assert worker.process.poll() is None and worker.ready(), worker.log.name
    finally:
        for worker in workers:
            worker.stop()


# --- a worker's task source across a kill, step by step -----------------------------------------------------


def _queue_tasks(url: str, count: int, settings: RedisWorkerSettings, reply_to: str) -> None:
    client = redis.Redis.from_url(url)
    for i, atoms in enumerate(hafnia(count)):
        task = Task(f"t{i}", settings.model, AtomicSystem.from_ase(atoms), ("energy",))
        client.xadd(layout.task_stream(settings.model), {"m": encode_task(task, reply_to)})


def test_a_worker_keeps_what_it_took_and_delivers_it_once_redis_is_back(durable_redis: DurableRedis) -> None:
    settings = RedisWorkerSettings(redis_url=durable_redis.url, model="faults-test", claim_idle=0.05)
    source = RedisTaskSource(redis.Redis.from_url(durable_redis.url), settings, consumer="survivor")
    source.ensure_group()
    reply_to = layout.reply_stream("faults-test-server")
    _queue_tasks(durable_redis.url, 3, settings, reply_to)
    tasks = source.fetch(8, timeout=1.0)
    assert [task.id for task in tasks] == ["t0", "t1", "t2"]

    durable_redis.kill()
    # A fetch while a batch is being filled must not raise: the tasks taken before would be dropped, still held.
    assert source.fetch(8, timeout=0.0) == []
    with pytest.raises(redis.ConnectionError):
        source.raise_if_unreachable()
    source.raise_if_unreachable()  # raised once only
    results = [TaskResult(task.id, prediction=Prediction(energy=float(i))) for i, task in enumerate(tasks)]
    with pytest.raises(redis.ConnectionError):
        source.deliver(results)
    assert len(source.undelivered) == 3 and len(source.held) == 3  # kept, not lost

    durable_redis.start()  # replays the file: the tasks are still pending for this consumer
    time.sleep(0.1)  # longer than claim_idle: the held tasks look abandoned to XAUTOCLAIM
    assert source.fetch(8, timeout=0.0) == []  # its own tasks are not taken a second time, nor dead-lettered
    source.flush()
    client = redis.Redis.from_url(durable_redis.url)
    replies = [decode_result(fields[b"m"]) for _, fields in client.xrange(reply_to)]
    assert [(r.task_id, r.prediction.energy) for r in replies] == [("t0", 0.0), ("t1", 1.0), ("t2", 2.0)]
    assert client.xlen(source.stream) == 0 and client.xpending(source.stream, layout.GROUP)["pending"] == 0
    assert source.held == {} and source.undelivered == []
    assert client.xlen(layout.dead_letter_stream(settings.model)) == 0


def test_a_task_queued_twice_runs_once(durable_redis: DurableRedis) -> None:
    """The server's client resends a pipeline of XADDs when the connection drops after Redis applied it."""
    settings = RedisWorkerSettings(redis_url=durable_redis.url, model="faults-twice", claim_idle=60)
    source = RedisTaskSource(redis.Redis.from_url(durable_redis.url), settings, consumer="only")
    source.ensure_group()
    reply_to = layout.reply_stream("faults-twice-server")
    task = Task("twice", settings.model, AtomicSystem.from_ase(hafnia(1)[0]), ("energy",))
    client = redis.Redis.from_url(durable_redis.url)
    for _ in range(2):
        client.xadd(source.stream, {"m": encode_task(task, reply_to)})
    assert [t.id for t in source.fetch(8, timeout=1.0)] == ["twice"]
    assert client.xlen(source.stream) == 1  # the second entry was acknowledged and deleted
    source.deliver([TaskResult("twice", prediction=Prediction(energy=1.0))])
    assert client.xlen(source.stream) == 0 and client.xlen(reply_to) == 1
