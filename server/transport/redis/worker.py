"""A standalone worker: takes tasks for one model from Redis, runs them in batches, writes results, then acks.

The worker needs mlipserve's core, redis-py and its own model family's package, nothing of the HTTP server, so it
can run in another virtualenv or container than the server. How it reads the stream, and what it does with tasks
of dead workers, is :mod:`.source`.

SIGTERM (or SIGINT) drains the worker: it stops fetching, finishes the tasks it holds for up to
``drain_timeout`` seconds, puts the rest back on the stream (re-added and acknowledged in one transaction, so
another worker takes them at once and none is lost or answered twice), leaves the consumer group and exits.
A second signal cuts the drain short: what is unfinished is handed back at once.

When Redis goes away (a restart, a crash), the worker keeps every task it took: a batch being formed is still
evaluated, and results it cannot deliver are kept and delivered first once Redis answers again, so that with a
persistent Redis (append-only file) the tasks held at the outage are acknowledged by this worker and not run again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .... import __version__
from ....models.registry import ModelRegistry
from ...config import RedisWorkerSettings
from ...engine.budget import budgeted_policy
from ...engine.device_options import load_with_options
from ...engine.loop import Worker
from ...engine.tuning import tune_process
from . import layout
from .monitor import ProbeServer, WorkerMetrics
from .source import UNREACHABLE, RedisTaskSource

log = logging.getLogger(__name__)

#: First and longest wait between attempts to reach Redis again, seconds: short, so that a worker is back at work
#: soon after Redis is, and a connection attempt a second or two costs Redis nothing.
RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY = 0.25, 2.0


class RedisWorker:
    """One worker process: load the model, announce it, serve batches until stopped, then drain."""

    def __init__(self, settings: RedisWorkerSettings, registry: ModelRegistry):
        self.settings = settings
        self.registry = registry
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis = redis.Redis.from_url(
            settings.redis_url,
            socket_keepalive=True,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.metrics = WorkerMetrics()
        #: Set by the first SIGTERM/SIGINT: stop taking work and drain.
        self.stop = threading.Event()
        #: Set by a second signal: end the drain now.
        self.hurry = threading.Event()
        #: Set once drained: the heartbeat stops.
        self.done = threading.Event()
        self.loaded = False
        self.draining = False
        self.announcement: dict[str, object] = {"id": self.id, "model": settings.model}

    def signal(self) -> None:
        """A stop signal: the first drains, a second cuts the drain short."""
        if self.stop.is_set():
            log.warning("second stop signal: handing back what is unfinished now")
            self.hurry.set()
        self.stop.set()

    def run(self) -> int:
        """Serve until stopped; return the exit status (0: drained cleanly)."""
        probes = self._start_probes()
        try:
            return self._run()
        finally:
            if probes is not None:
                probes.stop()

    def _run(self) -> int:
        tune_process(self.settings.torch_threads)
        card = self.registry.card(self.settings.model)
        potential = load_with_options(self.registry, card.name, self.settings.device, self.settings.device_options)
        source = RedisTaskSource(self.redis, self.settings, consumer=self.id, metrics=self.metrics)
        policy, budget = budgeted_policy(self.settings.batch, potential)
        worker = Worker(potential, source, policy, observe=self.metrics.observe, budget=budget)
        self.announcement = {
            "id": self.id,
            "model": card.name,
            "version": card.version,
            "sha256": card.sha256,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **worker.info,
            "mlipserve": __version__,
            "batch_budget": budget.as_dict(),
        }
        self.metrics.batch_budget.labels(budget.source).set(budget.max_atoms)
        self.metrics.info.labels(self.id, card.name, card.version, worker.info["device"], worker.info["dtype"]).set(1)
        if potential.device.type == "cuda":
            self.metrics.watch_gpu_memory(potential.device.index or 0)
        heartbeat = threading.Thread(target=self._beat, args=(source,), name="mlipserve-heartbeat", daemon=True)
        heartbeat.start()
        self.loaded = True
        log.info("worker %s serving %s on %s from %s", self.id, card.name, potential.device, self.settings.redis_url)
        self._serve(worker, source)
        clean = self._drain(worker, source)
        self.done.set()
        heartbeat.join(5.0)
        with contextlib.suppress(redis.RedisError):
            self.redis.delete(layout.heartbeat_key(card.name, self.id))
        return 0 if clean else 1

    def _serve(self, worker: Worker, source: RedisTaskSource) -> None:
        backoff = RECONNECT_FIRST_DELAY
        outage = False
        while not self.stop.is_set():
            try:
                source.ensure_group()
                source.keep_alive()  # the tasks held through an outage are ours: before others take them over
                source.flush()  # what was finished while Redis was away
                if outage:
                    log.info("Redis reachable again")
                    # Every worker's tasks went stale during the outage: give the others claim_idle to come back
                    # and refresh theirs before taking any over as a dead worker's.
                    source.defer_reclaim()
                outage, backoff = False, RECONNECT_FIRST_DELAY
                while not self.stop.is_set():
                    worker.step()
                    source.raise_if_unreachable()
            except UNREACHABLE as error:
                outage = True
                source.unreachable = None  # what a fetch saw belongs to this same outage
                log.warning("Redis unreachable (%s); retrying in %.1f s", error, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_DELAY)

    def _drain(self, worker: Worker, source: RedisTaskSource) -> bool:
        """Finish what is held within the drain timeout, hand back the rest, leave the group; False on failure."""
        started = time.monotonic()
        deadline = started + self.settings.drain_timeout
        self.draining = True
        self.metrics.draining.set(1)
        source.closed = True
        log.info("draining: %d task(s) held; finishing them within %g s", worker.holding, self.settings.drain_timeout)
        finished_before = worker.tasks_finished
        while worker.holding and time.monotonic() < deadline and not self.hurry.is_set():
            try:
                worker.step()
            except UNREACHABLE as error:
                log.warning("Redis unreachable while draining (%s)", error)
                self.hurry.wait(0.5)
        unfinished = worker.release()
        try:
            source.flush()
            source.hand_back(unfinished)
            source.leave()
        except redis.RedisError as error:
            log.error(
                "drain could not hand back %d task(s) (%s); other workers reclaim them after %g s",
                len(unfinished),
                error,
                self.settings.claim_idle,
            )
            return False
        seconds = time.monotonic() - started
        log.info(
            "drained in %.1f s: finished %d task(s), handed back %d",
            seconds,
            worker.tasks_finished - finished_before,
            len(unfinished),
            extra={"drain_seconds": round(seconds, 3), "handed_back": len(unfinished)},
        )
        return True

    def _beat(self, source: RedisTaskSource) -> None:
        key = layout.heartbeat_key(self.settings.model, self.id)
        while not self.done.is_set():
            try:
                now = time.time()
                beat = self.announcement | {"time": now, "draining": self.draining}
                self.redis.set(key, json.dumps(beat), px=int(self.settings.heartbeat_ttl * 1000))
                source.keep_alive()
                self.metrics.heartbeat.set(now)
            except redis.RedisError as error:
                log.debug("heartbeat failed: %s", error)
            # Often enough that held tasks never look idle for claim_idle, which would hand them to another worker.
            self.done.wait(min(self.settings.heartbeat_interval, self.settings.claim_idle / 3))

    def _start_probes(self) -> ProbeServer | None:
        if self.settings.metrics_port is None:
            return None
        probes = ProbeServer(
            self.metrics, ready=lambda: self.loaded and not self.draining, port=self.settings.metrics_port
        )
        probes.start()
        log.info("metrics and probes on port %d (/metrics, /healthz, /readyz)", probes.port)
        return probes


def run_worker(settings: RedisWorkerSettings, registry: ModelRegistry) -> int:
    """Run a worker until SIGINT or SIGTERM, then drain; return the exit status."""
    worker = RedisWorker(settings, registry)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: worker.signal())
    return worker.run()
