"""``POST /v1/md``: run molecular dynamics from structures on the workers; answer as JSON when every run has ended,
as NDJSON streamed while they run (frames, then each structure's result), or as extended XYZ."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Annotated, Any, Literal

import anyio
import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from ....errors import ErrorCode
from ....models.cards import ModelCard
from ...dynamics.outcome import Progress
from ...engine.tasks import Task, TaskResult
from ...transport.base import BrokerError, ModelStatus
from ..context import AppState
from ..ingest import (
    Prepared,
    base_seed,
    check_fixed_count,
    check_md_options,
    check_request_atoms,
    check_velocities,
    prepare_md_tasks,
    quick_to_prepare,
    tasks_of,
)
from ..render import JSONBody, Trajectories, md_entry, md_extxyz, md_frame_entry, model_info
from ..schemas import ERROR_RESPONSES, MDRequest, MDResponse

log = logging.getLogger(__name__)

MDFormat = Literal["json", "ndjson", "extxyz"]
NDJSON, EXTXYZ = "application/x-ndjson", "chemical/x-extxyz"

FORMAT_DOC = (
    "json: one answer when every run has ended, each result with its `trajectory`; ndjson: streamed lines "
    '`{"type": "frame", "index", "frame"}` as frames are recorded, `{"type": "result", "index", "result"}` as each '
    'structure ends, then `{"type": "done", "model"}`; extxyz: every frame, then every final structure, as extended '
    "XYZ (velocities in Å/fs)."
)


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["md"])

    @router.post(
        "/v1/md",
        response_model=None,
        responses={
            200: {"model": MDResponse, "content": {NDJSON: {}, EXTXYZ: {}}, "description": FORMAT_DOC},
            **ERROR_RESPONSES,
        },
    )
    async def md(body: MDRequest, format: Annotated[MDFormat, Query(description=FORMAT_DOC)] = "json") -> Response:
        """Run MD from each structure (NVE, Langevin, CSVR or NPT) on the workers, all structures batched together.

        Structure i uses seed `seed + i`; without a seed the server draws one and reports each structure's.
        For thousands of structures, submit a job with an `md` block instead (POST /v1/jobs).
        """
        options = body.options()
        card, status = await state.serving_card(body.model)
        await state.check_can_step(card, "run MD")
        check_md_options(options)
        n_structures = len(body.structures)
        state.check_request_size(n_structures)
        check_fixed_count(body.fixed, n_structures)
        velocities = check_velocities(body.velocities, n_structures)
        prepare = partial(
            prepare_md_tasks,
            card=card,
            limits=state.settings.limits,
            options=options,
            seed=base_seed(options),
            velocities=velocities,
            fixed=body.fixed,
        )
        if quick_to_prepare(body.structures):
            prepared = prepare(body.structures)
        else:
            prepared = await anyio.to_thread.run_sync(prepare, body.structures)
        check_request_atoms(prepared, state.settings.max_atoms_per_request)
        per_atom = body.uncertainty == "per_atom"
        frames = options.trajectory_every > 0
        if format == "ndjson":
            lines = _stream(state, card, status, prepared, frames, per_atom)
            return StreamingResponse(lines, media_type=NDJSON)
        trajectories = Trajectories()
        tasks = tasks_of(prepared)
        results = await state.submit(tasks, trajectories.add if frames else None)
        by_id = {task.id: result for task, result in zip(tasks, results, strict=True)}
        if format == "extxyz":
            runs = [
                (index, item.system, trajectories.of(item.id), by_id[item.id])
                for index, item in enumerate(prepared)
                if isinstance(item, Task)
            ]
            return Response(await anyio.to_thread.run_sync(md_extxyz, runs), media_type=EXTXYZ)
        entries = [
            md_entry(by_id[item.id], index, item.n_atoms, per_atom, trajectories.of(item.id))
            if isinstance(item, Task)
            else {"error": item.as_dict()}
            for index, item in enumerate(prepared)
        ]
        return JSONBody({"model": model_info(card, status, results), "results": entries})

    return router


def _line(content: dict[str, Any]) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


async def _stream(
    state: AppState, card: ModelCard, status: ModelStatus, prepared: Sequence[Prepared], frames: bool, per_atom: bool
) -> AsyncIterator[bytes]:
    """NDJSON lines: frames as they come, each structure's result as it ends, then ``done`` with the model block.

    Each structure is its own broker submission, so that its result is answered when it ends; a broker refusal or
    timeout becomes that structure's error entry (the answer has begun, its status can no longer say so).
    """
    #: Lines to send, each with whether it is a structure's result (its last line).
    events: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
    trajectories = Trajectories()
    indices = {item.id: index for index, item in enumerate(prepared) if isinstance(item, Task)}
    results: list[TaskResult] = []

    def on_progress(progress: Progress) -> None:
        frame = trajectories.add(progress)
        if frame is not None and progress.task_id in indices:
            index = indices[progress.task_id]
            events.put_nowait((_line({"type": "frame", "index": index, "frame": md_frame_entry(frame)}), False))

    async def run(index: int, task: Task) -> None:
        entry: dict[str, Any]
        try:
            [result] = await state.submit([task], on_progress if frames else None)
            results.append(result)
            entry = md_entry(result, index, task.n_atoms, per_atom)
        except BrokerError as error:
            entry = {"error": {"code": error.code.value, "message": f"structure {index}: {error}"}}
        except Exception as error:  # the answer has begun: the stream says what went wrong, and goes on
            log.exception("MD structure %d could not be answered", index)
            message = f"structure {index}: the server could not answer this run: {error!r}"
            entry = {"error": {"code": ErrorCode.WORKER_FAILED.value, "message": message}}
        events.put_nowait((_line({"type": "result", "index": index, "result": entry}), True))

    for index, item in enumerate(prepared):
        if not isinstance(item, Task):
            yield _line({"type": "result", "index": index, "result": {"error": item.as_dict()}})
    runners = [asyncio.create_task(run(index, item)) for index, item in enumerate(prepared) if isinstance(item, Task)]
    try:
        ended = 0
        while ended < len(runners):
            line, last = await events.get()
            ended += last
            yield line
        yield _line({"type": "done", "model": model_info(card, status, results)})
    finally:
        for runner in runners:
            runner.cancel()
