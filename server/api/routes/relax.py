"""``POST /v1/relax``: relax structures on the workers and answer when every one has ended."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ..context import AppState
from ..ingest import RELAX_PROPERTIES
from ..schemas import ERROR_RESPONSES, RelaxRequest, RelaxResponse
from .answer import answer


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["relax"])

    @router.post("/v1/relax", response_model=None, responses={200: {"model": RelaxResponse}, **ERROR_RESPONSES})
    async def relax(body: RelaxRequest) -> Response:
        """Relax structures (FIRE, atoms and cell) on the workers; answers when every structure has ended.

        For thousands of structures, submit a job with a `relax` block instead (POST /v1/jobs).
        """
        per_atom = body.uncertainty == "per_atom"
        return await answer(state, body.model, body.structures, RELAX_PROPERTIES, body.options(), body.fixed, per_atom)

    return router
