"""What the front end records about itself: Prometheus metrics, request ids and the latest errors.

Each app has a registry of its own (tests build many apps in one process; the global registry would mix them).
Request counts and latencies are recorded by :class:`ObservingMiddleware`, labelled with the route's template
(``/v1/jobs/{job_id}``), never the raw path, so the number of series stays bounded. Work done is counted from the
results as they come back (:meth:`ApiMetrics.count_results`); queue depths, workers and jobs are read afresh at
each scrape (:meth:`ApiMetrics.refresh`).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..engine.tasks import Task, TaskResult
from ..logs import REQUEST_ID
from ..transport.base import ModelStatus

disable_created_metrics()  # the *_created series only double what a scrape needs

REQUEST_ID_HEADER = "x-request-id"
#: Latency buckets from a cached single-structure answer to an hour-long relaxation request, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


def utc_iso(seconds: float, timespec: str = "auto") -> str:
    """A Unix time as ISO 8601 in UTC with a ``Z``, as the API writes times."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


@dataclass(frozen=True)
class RecordedError:
    time: float
    method: str
    path: str
    status: int
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": utc_iso(self.time, "seconds"),
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "code": self.code,
            "message": self.message,
        }


class ApiMetrics:
    """The front end's Prometheus metrics and its log of recent errors."""

    def __init__(self, recent_errors: int = 20):
        self.registry = CollectorRegistry()
        self.started = time.time()
        self.errors: deque[RecordedError] = deque(maxlen=recent_errors)
        registry = self.registry
        self.requests = Counter(
            "mlipserve_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "mlipserve_http_request_seconds",
            "Time to answer an HTTP request (to its last byte for streamed answers)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.structures = Counter(
            "mlipserve_structures", "Structures answered, by outcome", ["model", "outcome"], registry=registry
        )
        self.atoms = Counter("mlipserve_atoms", "Atoms in the structures evaluated", ["model"], registry=registry)
        self.relax_steps = Counter(
            "mlipserve_relaxation_steps", "Optimizer steps of finished relaxations", ["model"], registry=registry
        )
        self.queued = Gauge("mlipserve_queue_queued", "Tasks waiting for a worker", ["model"], registry=registry)
        self.pending = Gauge(
            "mlipserve_queue_pending", "Tasks held by a worker and not yet finished", ["model"], registry=registry
        )
        self.workers = Gauge("mlipserve_workers", "Live workers serving the model", ["model"], registry=registry)
        self.jobs = Gauge("mlipserve_jobs", "Jobs this server holds, by state", ["state"], registry=registry)
        self.batch_budget = Gauge(
            "mlipserve_batch_atoms_budget", "Atoms a worker's batch may hold", ["model", "worker"], registry=registry
        )

    def count_results(self, tasks: Sequence[Task], results: Sequence[TaskResult]) -> None:
        """Count the work that ``results`` (answers to ``tasks``, in order) represent."""
        for task, result in zip(tasks, results, strict=True):
            self.structures.labels(task.model, "ok" if result.ok else "error").inc()
            if result.ok:
                self.atoms.labels(task.model).inc(task.n_atoms)
            if result.relaxation is not None:
                self.relax_steps.labels(task.model).inc(result.relaxation.steps)

    def refresh(self, statuses: dict[str, ModelStatus], job_states: Iterable[str]) -> None:
        """Set the gauges from the models' statuses and the jobs' states, just before a scrape."""
        for name, status in statuses.items():
            self.workers.labels(name).set(len(status.workers))
            for worker in status.workers:
                if worker.get("batch_budget"):
                    self.batch_budget.labels(name, str(worker.get("id"))).set(worker["batch_budget"]["max_atoms"])
            for gauge, value in ((self.queued, status.queued), (self.pending, status.pending)):
                if value is not None:
                    gauge.labels(name).set(value)
        counts = Tally(job_states)
        for state in ("queued", "running", "done", "cancelled", "failed"):
            self.jobs.labels(state).set(counts.get(state, 0))

    def record_error(self, method: str, path: str, status: int, code: str, message: str) -> None:
        self.errors.appendleft(RecordedError(time.time(), method, path, status, code, message))


class ObservingMiddleware:
    """Give each request an id (``X-Request-ID``, echoed back) and record its count and latency.

    A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, which would buffer streamed answers.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:  # answered 500 by Starlette's outermost middleware; recorded here
            self.metrics.record_error(
                scope.get("method", ""), scope.get("path", ""), 500, "internal", f"{type(error).__name__}: {error}"
            )
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
            REQUEST_ID.reset(token)
