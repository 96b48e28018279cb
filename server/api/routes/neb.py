"""``POST /v1/neb``: find minimum-energy paths (nudged elastic band) on the workers; answer when every path has
ended."""

from __future__ import annotations

from functools import partial

import anyio
from fastapi import APIRouter
from fastapi.responses import Response

from ...engine.tasks import Task
from ..context import AppState
from ..ingest import check_request_atoms, prepare_neb_tasks, tasks_of
from ..render import JSONBody, model_info, neb_entry
from ..schemas import ERROR_RESPONSES, NEBRequest, NEBResponse


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["neb"])

    @router.post("/v1/neb", response_model=None, responses={200: {"model": NEBResponse}, **ERROR_RESPONSES})
    async def neb(body: NEBRequest) -> Response:
        """Find the minimum-energy path between each pair of end points: ASE's NEB optimised by FIRE, the images of
        every path evaluated together on the workers; answers when every path has ended.

        The end points (and given intermediates) must hold the same atoms in the same order, with the same
        periodicity and cell (422 otherwise, naming what differs).
        """
        card, status = await state.serving_card(body.model)
        await state.check_can_step(card, "run NEB")
        state.check_request_size(len(body.paths))
        prepare = partial(prepare_neb_tasks, card=card, limits=state.settings.limits, options=body.options())
        prepared = await anyio.to_thread.run_sync(prepare, body.paths)
        check_request_atoms(prepared, state.settings.max_atoms_per_request)
        tasks = tasks_of(prepared)
        results = await state.submit(tasks)
        by_id = {task.id: result for task, result in zip(tasks, results, strict=True)}
        entries = [
            neb_entry(by_id[item.id], index) if isinstance(item, Task) else {"error": item.as_dict()}
            for index, item in enumerate(prepared)
        ]
        return JSONBody({"model": model_info(card, status, results), "results": entries})

    return router
