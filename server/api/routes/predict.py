"""``POST /v1/predict``: energies, forces and stresses of a list of structures."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ..context import AppState
from ..schemas import ERROR_RESPONSES, PredictRequest, PredictResponse
from .answer import answer


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["predict"])

    @router.post("/v1/predict", response_model=None, responses={200: {"model": PredictResponse}, **ERROR_RESPONSES})
    async def predict(body: PredictRequest) -> Response:
        """Energies, forces and stresses of a list of structures, in input order."""
        properties = tuple(dict.fromkeys(body.properties))
        return await answer(state, body.model, body.structures, properties, per_atom=body.uncertainty == "per_atom")

    return router
