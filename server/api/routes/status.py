"""``GET /v1/status`` (models, workers, queues, jobs and recent errors, for the status page and operators) and
``GET /metrics`` (the same, and the request counters, for Prometheus)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .... import __version__
from ...transport.base import BrokerError, ModelStatus
from ..context import AppState
from ..jobs import JobManager
from ..observe import utc_iso

#: Jobs and errors listed by /v1/status.
RECENT_JOBS = 50


def create_router(state: AppState, jobs: JobManager) -> APIRouter:
    router = APIRouter(tags=["status"])

    async def read_statuses() -> tuple[dict[str, ModelStatus], str | None]:
        try:
            return await state.directory.statuses(queues=True), None
        except BrokerError as error:  # Redis away: the page still shows jobs and errors
            return {}, error.message

    @router.get("/v1/status")
    async def status() -> dict[str, Any]:
        """Models with their workers and queue depths, this server's jobs (newest first) and its latest errors."""
        statuses, problem = await read_statuses()
        metrics = state.metrics
        return {
            "server": {
                "version": __version__,
                "mode": "redis" if state.settings.redis_url else "embedded",
                "started": utc_iso(metrics.started, "seconds"),
                "uptime_s": round(time.time() - metrics.started, 1),
                "error": problem,
            },
            "models": [_model_entry(name, model) for name, model in statuses.items()],
            "jobs": [_job_entry(job.status()) for job in jobs.recent(RECENT_JOBS)],
            "recent_errors": [error.as_dict() for error in metrics.errors],
        }

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text exposition; queue depths, workers and jobs are read at the scrape."""
        statuses, _ = await read_statuses()
        state.metrics.refresh(statuses, jobs.states())
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _model_entry(name: str, status: ModelStatus) -> dict[str, Any]:
    return {
        "name": name,
        "state": status.state.value,
        "error": status.error,
        "queued": status.queued,
        "pending": status.pending,
        "workers": status.workers,
    }


def _job_entry(status: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in status.items() if key != "model_info"}
