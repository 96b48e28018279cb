"""``GET /healthz`` (the process answers) and ``GET /readyz`` (every served model can take requests)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...transport.base import BrokerError, ModelState, ModelStatus
from ..context import AppState


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"description": "A served model is loading, failed or has no worker."}})
    async def readyz() -> JSONResponse:
        """200 once every served model can take requests; 503 before that or after a failure.

        The models are those the server was started with (or, with none, those that workers serve). With
        ``--scale-from-zero`` a model without workers still takes requests: they wait in its queue.
        """
        try:
            statuses = await state.directory.statuses()
        except BrokerError as error:
            return JSONResponse({"ready": False, "error": error.message}, status_code=503)
        served = state.settings.models or [name for name, s in statuses.items() if s.workers]
        relevant = {name: status for name, status in statuses.items() if name in served}
        ready = all(_takes_requests(state, name, status) for name, status in relevant.items())
        models = {name: {"state": s.state.value, "error": s.error} for name, s in relevant.items()}
        return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)

    return router


def _takes_requests(state: AppState, name: str, status: ModelStatus) -> bool:
    if status.state is ModelState.NO_WORKERS:
        return state.scales_from_zero(name)
    return status.state is ModelState.READY
