"""A worker's own HTTP port: Prometheus ``/metrics``, and ``/healthz`` and ``/readyz`` for orchestrators' probes.

``/healthz`` answers 200 while the process runs; ``/readyz`` answers 200 once the model is loaded and until the
worker starts draining, so that a rollout waits for the model and stops counting a draining worker. The server is
the standard library's threaded one: a worker has no event loop, and a scrape must not wait for a batch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from ...engine.loop import RoundStats

log = logging.getLogger(__name__)
disable_created_metrics()  # the *_created series only double what a scrape needs

#: Batch sizes in structures and atoms: powers of two, from one small structure to a large GPU batch.
SIZE_BUCKETS = tuple(2.0**k for k in range(18))
#: Model time per batch, from a cached small batch on a GPU to a large batch on a CPU, seconds.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    """The metrics of one worker process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.batch_structures = Histogram(
            "mlipserve_worker_batch_structures", "Structures in a batch", buckets=SIZE_BUCKETS, registry=registry
        )
        self.batch_atoms = Histogram(
            "mlipserve_worker_batch_atoms", "Atoms in a batch", buckets=SIZE_BUCKETS, registry=registry
        )
        self.batch_seconds = Histogram(
            "mlipserve_worker_batch_seconds", "Model time per batch", buckets=SECONDS_BUCKETS, registry=registry
        )
        self.finished = Counter("mlipserve_worker_tasks_finished", "Tasks finished and delivered", registry=registry)
        self.relax_steps = Counter(
            "mlipserve_worker_relaxation_steps", "Optimizer steps of relaxations finished here", registry=registry
        )
        self.reclaimed = Counter(
            "mlipserve_worker_tasks_reclaimed",
            "Tasks taken over from workers that stopped answering",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "mlipserve_worker_tasks_dead_lettered", "Tasks given up after too many deliveries", registry=registry
        )
        self.handed_back = Counter(
            "mlipserve_worker_tasks_handed_back", "Tasks put back on the queue by a drain", registry=registry
        )
        self.heartbeat = Gauge(
            "mlipserve_worker_heartbeat_timestamp_seconds", "Unix time of the last heartbeat written", registry=registry
        )
        self.draining = Gauge("mlipserve_worker_draining", "1 while the worker drains", registry=registry)
        self.batch_budget = Gauge(
            "mlipserve_worker_batch_atoms_budget",
            "Atoms a batch may hold, and where that budget came from (measured, default, option)",
            ["source"],
            registry=registry,
        )
        self.info = Gauge(
            "mlipserve_worker_info",
            "The worker's model and where it runs (always 1)",
            ["worker", "model", "version", "device", "dtype"],
            registry=registry,
        )

    def observe(self, stats: RoundStats) -> None:
        """Record one round of the engine (the worker loop's ``observe`` hook)."""
        self.batch_structures.observe(stats.structures)
        self.batch_atoms.observe(stats.atoms)
        self.batch_seconds.observe(stats.seconds)
        self.finished.inc(stats.finished)
        self.relax_steps.inc(stats.relax_steps)

    def watch_gpu_memory(self, device_index: int) -> None:
        """Export the CUDA memory torch holds on the worker's device, read at each scrape."""
        import torch

        memory = Gauge(
            "mlipserve_worker_gpu_memory_bytes", "CUDA memory held by torch", ["kind"], registry=self.registry
        )
        memory.labels("allocated").set_function(lambda: torch.cuda.memory_allocated(device_index))
        memory.labels("reserved").set_function(lambda: torch.cuda.memory_reserved(device_index))
        memory.labels("peak_allocated").set_function(lambda: torch.cuda.max_memory_allocated(device_index))


class ProbeServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` from a daemon thread."""

    def __init__(self, metrics: WorkerMetrics, ready: Callable[[], bool], host: str = "0.0.0.0", port: int = 9100):
        self.metrics = metrics
        self.ready = ready
        self.started = time.monotonic()
        self.http = ThreadingHTTPServer((host, port), self._handler())
        self.http.daemon_threads = True
        self.port = self.http.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.http.serve_forever, name="mlipserve-probes", daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        probes = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(probes.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send_json(200, {"status": "ok", "uptime_s": round(time.monotonic() - probes.started, 1)})
                elif path == "/readyz":
                    ready = probes.ready()
                    self._send_json(200 if ready else 503, {"ready": ready})
                else:
                    self._send_json(404, {"error": f"no {path} here; try /metrics, /healthz or /readyz"})

            def _send_json(self, status: int, body: dict) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not worth a line
                log.debug("probe: " + format, *args)

        return Handler
