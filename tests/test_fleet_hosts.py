"""A fleet across "hosts" (network namespaces): a worker whose host drops off the network, one that drains.

Redis runs on host A ("redis"), the API on host B ("api"), workers on hosts C and D, and the test talks to them
all from a fifth, "client"; the hosts share one bridged segment (see :mod:`tests.netns`). A 500-structure job runs
while host C is unplugged and its worker killed (its tasks must be reclaimed by the others), and host D's worker is
sent SIGTERM (it must drain: exit 0, nothing left pending, nothing redelivered); a worker started afterwards finishes
the job, whose 500 results must each arrive exactly once.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from ase.build import bulk
from mlipserve.clients.encoding import encode_structure

from .netns import Host, Network, Process, unavailable_reason

_unavailable = unavailable_reason() or (None if shutil.which("redis-server") else "redis-server is not installed")
pytestmark = [pytest.mark.skipif(_unavailable is not None, reason=f"no fleet across hosts here: {_unavailable}")]

MODEL = "7net-0"
STRUCTURES = 500
#: The ports are fixed: every host is a fresh namespace with nothing else listening.
REDIS_PORT, API_PORT, METRICS_PORT = 16379, 8000, 9100
CLAIM_IDLE = 5.0
DRAIN_TIMEOUT = 30.0
#: Progress (results done) at which host C is lost, and at which host D's worker is asked to stop. The API records a
#: job's results a chunk (64 structures) at a time, so these are crossed at 64 and 256.
LOSE_C_AT, STOP_D_AT = 50, 250
TASKS = f"mlipserve:tasks:{MODEL}"
GROUP = "workers"

T = TypeVar("T")


def job_structures(count: int) -> list[dict]:
    """``count`` different rattled 16-atom crystals: big enough that two single-thread workers need ~40-60 s."""
    cells = [
        bulk("Si", cubic=True).repeat((2, 1, 1)),
        bulk("Cu", cubic=True).repeat((2, 2, 1)),
        bulk("Al", cubic=True).repeat((2, 2, 1)),
        bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 1, 1)),
        bulk("MgO", "rocksalt", a=4.21, cubic=True).repeat((2, 1, 1)),
        bulk("GaAs", "zincblende", a=5.65, cubic=True).repeat((2, 1, 1)),
        bulk("C", cubic=True).repeat((2, 1, 1)),
    ]
    structures = []
    for i in range(count):
        atoms = cells[i % len(cells)].copy()
        atoms.rattle(0.04, seed=i)
        structures.append(encode_structure(atoms))
    return structures


class Fleet:
    """The hosts, the processes on them, and clients for Redis and the API (used from the client host)."""

    def __init__(self, network: Network, hosts: dict[str, Host]):
        self.network = network
        self.hosts = hosts
        self.redis_url = f"redis://{hosts['redis'].address}:{REDIS_PORT}/0"
        self.api_url = f"http://{hosts['api'].address}:{API_PORT}"
        # Ids, names and heartbeats are read as text; task payloads (msgpack) are never looked at, hence "replace".
        self.redis = redis.Redis(
            host=hosts["redis"].address,
            port=REDIS_PORT,
            decode_responses=True,
            encoding_errors="replace",
            socket_timeout=5,
        )
        self.http = httpx.Client(base_url=self.api_url, timeout=60)
        #: Processes that must stay up; a wait fails at once, with the logs, when one of them exits.
        self.essential: list[Process] = []
        self.workers: dict[str, Process] = {}

    def close(self) -> None:
        self.http.close()
        self.redis.close()

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
        """Poll ``check`` until it returns something truthy, which is returned; fail with the logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for process in self.essential:
                if not process.alive():
                    pytest.fail(
                        f"{process.name} exited ({process.popen.returncode}) while waiting for {what}\n{self.logs()}"
                    )
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")
            time.sleep(interval)

    def logs(self) -> str:
        return self.network.logs()

    def start_redis(self) -> Process:
        host = self.hosts["redis"]
        argv = [shutil.which("redis-server") or "redis-server", "--bind", host.address, "--port", str(REDIS_PORT)]
        argv += ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.network.log_dir)]
        process = host.start("redis", argv)
        self.essential.append(process)
        self.wait_for("Redis to answer PING", self._pings, timeout=20)
        return process

    def _pings(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.ConnectionError:
            return False

    def start_api(self) -> Process:
        argv = [sys.executable, "-m", "mlipserve.server.cli", "serve", "--host", "0.0.0.0", "--port", str(API_PORT)]
        argv.append("--insecure")  # an open API on the test hosts' private segment
        process = self.hosts["api"].start("api", [*argv, "--redis", self.redis_url, "--model", MODEL])
        self.essential.append(process)
        return process

    def start_worker(self, host: str, name: str) -> Process:
        argv = [sys.executable, "-m", "mlipserve.server.cli", "worker", "--model", MODEL, "--redis", self.redis_url]
        argv += ["--device", "cpu", "--threads", "1", "--claim-idle", str(CLAIM_IDLE), "--log-level", "info"]
        argv += ["--metrics-port", str(METRICS_PORT), "--drain-timeout", str(DRAIN_TIMEOUT)]
        process = self.hosts[host].start(name, argv, env={"PYTHONUNBUFFERED": "1"})
        self.essential.append(process)
        self.workers[name] = process
        return process

    def get(self, path: str) -> httpx.Response | None:
        """GET from the API; None while it does not answer yet."""
        try:
            return self.http.get(path)
        except httpx.TransportError:
            return None

    def api_ready(self) -> bool:
        response = self.get("/readyz")
        return response is not None and response.status_code == 200

    def workers_seen(self) -> int:
        response = self.get("/v1/models")
        if response is None or response.status_code != 200:
            return 0
        models = {model["name"]: model for model in response.json()["models"]}
        return len(models.get(MODEL, {}).get("workers") or [])

    def consumer_of(self, process: Process) -> str:
        """The worker id (its consumer name in the group) that ``process`` announced in its heartbeat."""

        def announced() -> str | None:
            for key in self.redis.scan_iter(match=f"mlipserve:workers:{MODEL}:*"):
                beat = self.redis.get(key)
                if beat and json.loads(beat).get("pid") == process.pid:
                    return json.loads(beat)["id"]
            return None

        return self.wait_for(f"the heartbeat of {process.name} (pid {process.pid})", announced, timeout=120)

    def pending_of(self, consumer: str) -> list[str]:
        """Stream entries delivered to ``consumer`` and not acknowledged yet."""
        entries = self.redis.xpending_range(TASKS, GROUP, min="-", max="+", count=10_000, consumername=consumer)
        return [str(entry["message_id"]) for entry in entries]

    def owners(self, entry_ids: list[str]) -> dict[str, str]:
        """The consumer holding each of ``entry_ids`` that is still pending in the group."""
        pending = self.redis.xpending_range(TASKS, GROUP, min="-", max="+", count=100_000)
        wanted = set(entry_ids)
        return {str(e["message_id"]): str(e["consumer"]) for e in pending if str(e["message_id"]) in wanted}

    def in_stream(self, entry_id: str) -> bool:
        """Whether a task entry is still in the stream (a worker deletes it once its result is delivered)."""
        return bool(self.redis.xrange(TASKS, min=entry_id, max=entry_id))

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Redis on host A, the API on B, workers on C and D, all started and ready; the test runs on the client host."""
    with Network(tmp_path) as network:
        hosts = {label: network.add_host(label) for label in ("redis", "api", "c", "d", "client")}
        # The rest of the test, this fixture's teardown excepted, runs with this thread on the client host, where
        # the Redis and HTTP clients make their connections.
        with hosts["client"].entered():
            fleet = Fleet(network, hosts)
            try:
                fleet.start_redis()
                fleet.start_api()
                fleet.start_worker("c", "worker-c")
                fleet.start_worker("d", "worker-d")
                fleet.wait_for("/readyz to answer 200", fleet.api_ready, timeout=180)
                fleet.wait_for(f"two workers of {MODEL} in /v1/models", lambda: fleet.workers_seen() == 2, 60)
                yield fleet
            finally:
                fleet.close()
        print(f"\nprocess logs are in {tmp_path}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_job_survives_a_lost_host_and_a_drained_worker(fleet: Fleet, tmp_path: Path) -> None:
    worker_c, worker_d = fleet.workers["worker-c"], fleet.workers["worker-d"]
    consumer_c, consumer_d = fleet.consumer_of(worker_c), fleet.consumer_of(worker_d)

    submitted = time.monotonic()
    created = fleet.http.post("/v1/jobs", json={"model": MODEL, "structures": job_structures(STRUCTURES)})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    def progress(at_least: int) -> Callable[[], bool]:
        def check() -> bool:
            status = fleet.job(job_id)
            assert status["state"] in ("queued", "running"), (
                f"the job ended ({status}) before {at_least} results: the scenario needs it still running, "
                f"so the structures are too small for this machine\n{fleet.logs()}"
            )
            return status["done"] >= at_least

        return check

    # --- host C drops off the network, then its worker dies; what it held must be reclaimed by the others.
    fleet.wait_for(f"{LOSE_C_AT} results", progress(LOSE_C_AT), timeout=180)
    for _ in range(5):
        # Unplug C while it holds tasks; in the rare case it had just delivered a batch, plug it back and retry.
        fleet.wait_for("host C's worker to hold tasks", lambda: fleet.pending_of(consumer_c), timeout=60, interval=0.02)
        fleet.hosts["c"].set_link(up=False)
        lost_c = time.monotonic()
        if fleet.pending_of(consumer_c):
            break
        fleet.hosts["c"].set_link(up=True)
    fleet.essential.remove(worker_c)
    worker_c.kill()
    held_by_c = fleet.pending_of(consumer_c)  # C can no longer ack anything: this is what it took down with it
    assert held_by_c, f"host C's worker held no task when unplugged\n{fleet.logs()}"

    # Reclaiming goes in rounds (a worker takes at most a batch's worth per fetch): note the first and the last.
    first_reclaim: list[float] = []

    def reclaimed() -> bool:
        still_c = sum(owner == consumer_c for owner in fleet.owners(held_by_c).values())
        if still_c < len(held_by_c) and not first_reclaim:
            first_reclaim.append(time.monotonic() - lost_c)
        return still_c == 0

    fleet.wait_for(
        f"the {len(held_by_c)} tasks of the lost host to be reclaimed", reclaimed, timeout=120, interval=0.05
    )
    all_reclaimed_after = time.monotonic() - lost_c
    fleet.wait_for(
        "a result of a reclaimed task",
        lambda: not all(fleet.in_stream(entry) for entry in held_by_c),
        timeout=180,
        interval=0.05,
    )
    first_reclaimed_result_after = time.monotonic() - lost_c

    # --- host D's worker is asked to stop while it works: it drains, and nothing of it is redelivered.
    fleet.wait_for(f"{STOP_D_AT} results", progress(STOP_D_AT), timeout=300)
    metrics = _worker_metrics(fleet.hosts["d"])
    held_by_d = fleet.pending_of(consumer_d)
    worker_d.signal(signal.SIGTERM)
    asked_d = time.monotonic()
    fleet.essential.remove(worker_d)
    # The drain itself ends within the timeout (plus the batch in progress); stopping the heartbeat thread and the
    # interpreter then takes a few seconds more, hence the margin.
    fleet.wait_for(
        f"host D's worker to exit after SIGTERM, within the drain timeout ({DRAIN_TIMEOUT:.0f} s) and a margin",
        lambda: not worker_d.alive(),
        timeout=DRAIN_TIMEOUT + 10,
        interval=0.05,
    )
    drain_s = time.monotonic() - asked_d
    log_d = worker_d.text()
    assert worker_d.popen.returncode == 0, f"the drained worker exited {worker_d.popen.returncode}\n{log_d}"
    assert "drained" in log_d, f"host D's worker did not log that it drained\n{log_d}"
    consumers = {consumer["name"]: consumer for consumer in fleet.redis.xinfo_consumers(TASKS, GROUP)}
    assert consumer_d not in consumers, f"the drained worker left its consumer in the group: {consumers[consumer_d]}"
    assert not fleet.owners(held_by_d), f"tasks of the drained worker are still pending: {fleet.owners(held_by_d)}"
    assert not fleet.redis.exists(f"mlipserve:workers:{MODEL}:{consumer_d}"), "the drained worker left its heartbeat"

    # --- a worker started later, on host C plugged back in, picks the work up and the job ends.
    fleet.hosts["c"].set_link(up=True)
    left = STRUCTURES - fleet.job(job_id)["done"]
    assert left > 0, "the job ended before the later worker started: nothing is left to check it picks work up"
    later_started = time.monotonic()
    fleet.start_worker("c", "worker-c-later")

    def ended() -> dict[str, Any] | None:
        status = fleet.job(job_id)
        return None if status["state"] in ("queued", "running") else status

    status = fleet.wait_for("the job to end", ended, timeout=400, interval=0.25)
    job_s = time.monotonic() - submitted
    assert status["state"] == "done", f"{status}\n{fleet.logs()}"
    assert (status["total"], status["done"], status["errors"]) == (STRUCTURES, STRUCTURES, 0), status

    with fleet.http.stream("GET", f"/v1/jobs/{job_id}/results") as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    indexes = [line["index"] for line in lines]
    assert sorted(indexes) == list(range(STRUCTURES)), "each structure must have exactly one result"
    errors = [line for line in lines if "error" in line]
    assert not errors, f"{len(errors)} results are errors, the first: {errors[0]}"
    assert fleet.redis.xlen(TASKS) == 0, "tasks are left in the stream"
    assert fleet.redis.xpending(TASKS, GROUP)["pending"] == 0, "tasks are left pending"
    assert fleet.redis.xlen(f"mlipserve:dead:{MODEL}") == 0, "tasks were dead-lettered"

    # Who reclaimed what: C's tasks, each exactly once; and the later worker reclaimed none of what D held when
    # stopped (D may hold tasks it reclaimed from C itself, so D's own log does not count here).
    reclaims = {name: reclaimed_entries(fleet.workers[name].text()) for name in ("worker-d", "worker-c-later")}
    taken = Counter(entry for entries in reclaims.values() for entry in entries)
    twice = {entry: count for entry, count in taken.items() if count > 1}
    assert not twice, f"tasks reclaimed more than once: {twice}\n{fleet.logs()}"
    assert set(held_by_c) <= set(taken), f"tasks of the lost host never reclaimed: {set(held_by_c) - set(taken)}"
    redelivered = set(held_by_d) & set(reclaims["worker-c-later"])
    assert not redelivered, f"tasks of the drained worker were reclaimed, not handed back: {sorted(redelivered)}"

    drained = re.search(r"drained in ([\d.]+) s: finished (\d+) task\(s\), handed back (\d+)", log_d)
    figures = {
        "structures": STRUCTURES,
        "host_c_lost_at_s": round(lost_c - submitted, 1),
        "worker_d_stopped_at_s": round(asked_d - submitted, 1),
        "later_worker_started_at_s": round(later_started - submitted, 1),
        "results_left_for_later_worker": left,
        "tasks_held_by_lost_host": len(held_by_c),
        "lost_host_to_first_reclaim_s": round(first_reclaim[0], 2),
        "lost_host_to_all_reclaimed_s": round(all_reclaimed_after, 2),
        "lost_host_to_first_reclaimed_result_s": round(first_reclaimed_result_after, 2),
        "reclaimed_by": {name: len(set(entries) & set(held_by_c)) for name, entries in reclaims.items()},
        "tasks_held_by_drained_worker": len(held_by_d),
        "drain_s": round(drain_s, 2),
        "drain_log": drained.group(0) if drained else None,
        "job_s": round(job_s, 1),
        "claim_idle_s": CLAIM_IDLE,
    }
    (tmp_path / "fleet_figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfleet figures ({tmp_path / 'fleet_figures.json'}):\n{json.dumps(figures, indent=2)}")
    print(f"\nworker /metrics sample (host D before SIGTERM):\n{metrics}")
    assert metrics.startswith("#") or "mlipserve_" in metrics, f"no Prometheus text on the worker's /metrics: {metrics}"


def reclaimed_entries(log: str) -> list[str]:
    """The stream entry ids that a worker's log says it reclaimed ("reclaimed task b'1700000000000-0' ...")."""
    return re.findall(r"reclaimed task b?'?(\d+-\d+)", log)


def _worker_metrics(host: Host) -> str:
    """The first lines of a worker's /metrics (histogram buckets left out, for brevity), or why there are none."""
    try:
        response = httpx.get(f"http://{host.address}:{METRICS_PORT}/metrics", timeout=5)
    except httpx.TransportError as error:
        return f"(no answer: {error!r})"
    if response.status_code != 200:
        return f"(HTTP {response.status_code})"
    lines = [line for line in response.text.splitlines() if "_bucket{" not in line]
    return "\n".join(lines[:30])
