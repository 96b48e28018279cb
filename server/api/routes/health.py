"""``GET /healthz`` (the process answers) and ``GET /readyz`` (every served model can take requests)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...transport.base import BrokerError, ModelState
from ..context import AppState


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"description": "A served model is loading, failed or has no worker."}})
    async def readyz() -> JSONResponse:
        """200 once every served model can take requests; 503 before that or after a failure."""
        try:
            statuses = await state.directory.statuses()
        except BrokerError as error:
            return JSONResponse({"ready": False, "error": error.message}, status_code=503)
        ready = all(status.state is ModelState.READY for status in statuses.values())
        models = {name: {"state": s.state.value, "error": s.error} for name, s in statuses.items()}
        return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)

    return router
