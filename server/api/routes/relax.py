"""``POST /v1/relax``: relax structures on the workers and answer when every one has ended."""

from __future__ import annotations

from functools import partial

import anyio
from fastapi import APIRouter
from fastapi.responses import Response

from ..context import AppState
from ..ingest import RELAX_PROPERTIES, check_fixed_count, check_request_atoms, prepare_tasks, tasks_of
from ..render import JSONBody, model_info, response_entries
from ..schemas import ERROR_RESPONSES, RelaxRequest, RelaxResponse


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["relax"])

    @router.post("/v1/relax", response_model=None, responses={200: {"model": RelaxResponse}, **ERROR_RESPONSES})
    async def relax(body: RelaxRequest) -> Response:
        """Relax structures (FIRE, atoms and cell) on the workers; answers when every structure has ended.

        For thousands of structures, submit a job with a `relax` block instead (POST /v1/jobs).
        """
        card, status = await state.serving_card(body.model)
        state.check_request_size(len(body.structures))
        check_fixed_count(body.fixed, len(body.structures))
        prepare = partial(prepare_tasks, limits=state.settings.limits, relax=body.options(), fixed=body.fixed)
        prepared = await anyio.to_thread.run_sync(prepare, body.structures, card, RELAX_PROPERTIES)
        check_request_atoms(prepared, state.settings.max_atoms_per_request)
        results = await state.broker.submit(tasks_of(prepared))
        entries = response_entries(prepared, results, RELAX_PROPERTIES)
        return JSONBody({"model": model_info(card, status, results), "results": entries})

    return router
