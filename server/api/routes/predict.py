"""``POST /v1/predict``: energies, forces and stresses of a list of structures."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import Response

from ..context import AppState
from ..ingest import check_request_atoms, prepare_tasks, tasks_of
from ..render import JSONBody, model_info, response_entries
from ..schemas import ERROR_RESPONSES, PredictRequest, PredictResponse


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["predict"])

    @router.post("/v1/predict", response_model=None, responses={200: {"model": PredictResponse}, **ERROR_RESPONSES})
    async def predict(body: PredictRequest) -> Response:
        """Energies, forces and stresses of a list of structures, in input order."""
        card, status = await state.serving_card(body.model)
        properties = tuple(dict.fromkeys(body.properties))
        state.check_request_size(len(body.structures))
        limits = state.settings.limits
        prepared = await anyio.to_thread.run_sync(prepare_tasks, body.structures, card, properties, limits)
        check_request_atoms(prepared, state.settings.max_atoms_per_request)
        results = await state.broker.submit(tasks_of(prepared))
        entries = response_entries(prepared, results, properties)
        return JSONBody({"model": model_info(card, status, results), "results": entries})

    return router
