"""``POST /v1/select``: grade candidate structures and pick those to compute with DFT.

The choice is the model's (MaxVol against its active set: MTP grades, ACE γ), so it runs on a worker that holds
the model, as one task carrying every valid candidate (``Task.select``). Candidates that cannot be decoded or fail
validation get an error entry and take no part; the indices in the answer are the request's.
"""

from __future__ import annotations

import io
import uuid
from functools import partial
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response

from ....errors import ErrorCode
from ....models.committee import is_committee
from ....models.system import AtomicSystem
from ...engine.tasks import SelectSpec, Task, TaskResult
from ..context import AppState
from ..errors import RequestError, StructureError
from ..ingest import check_request_atoms, prepare_tasks, tasks_of
from ..render import JSONBody, model_info
from ..schemas import ERROR_RESPONSES, SelectRequest, SelectResponse

#: Worker failure codes that are the request's fault (422); any other is the server's (500).
_REQUEST_FAULTS = {ErrorCode.INVALID_REQUEST, ErrorCode.ELEMENT_NOT_COVERED, ErrorCode.ISOLATED_ATOM}


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["select"])

    @router.post("/v1/select", response_model=None, responses={200: {"model": SelectResponse}, **ERROR_RESPONSES})
    async def select(body: SelectRequest) -> Response:
        """Grade candidates with the model's active set; answer those above `threshold` and a D-optimal subset of
        at most `max_count` (MaxVol, as motep and pace_select choose), the subset also as extxyz for DFT."""
        card, status = await state.serving_card(body.model)
        if is_committee(card):
            message = (
                f"{card.name!r} is a committee: selection is MaxVol against an active set (an MTP or ACE model "
                "with one); select with such a model"
            )
            raise RequestError(422, ErrorCode.INVALID_REQUEST, message)
        state.check_request_size(len(body.structures))
        prepare = partial(prepare_tasks, limits=state.settings.limits)
        prepared = await anyio.to_thread.run_sync(prepare, body.structures, card, ("energy",))
        check_request_atoms(prepared, state.settings.max_atoms_per_request)
        candidates = tasks_of(prepared)
        if not candidates:
            raise RequestError(422, ErrorCode.NO_STRUCTURES, "no candidate could be used (see each one's error)")
        spec = SelectSpec(tuple(t.system for t in candidates), body.max_count, body.threshold)
        task = Task(uuid.uuid4().hex, card.name, candidates[0].system, ("energy",), select=spec)
        [result] = await state.submit([task])
        if result.selection is None:
            code = result.error_code or ErrorCode.MODEL_ERROR
            raise RequestError(422 if code in _REQUEST_FAULTS else 500, code, result.error_message or "no selection")
        info = model_info(card, status, [result])
        answer = await anyio.to_thread.run_sync(_answer, prepared, result, info, body.uncertainty == "per_atom")
        return JSONBody(answer)

    return router


def _answer(prepared: list[Task | StructureError], result: TaskResult, info: dict[str, str], per_atom: bool) -> dict:
    """The response: an entry per candidate, ``above`` and ``selected`` as request indices, the subset as extxyz."""
    selection = result.selection
    assert selection is not None
    index_of = [i for i, item in enumerate(prepared) if isinstance(item, Task)]
    candidates = [item for item in prepared if isinstance(item, Task)]
    grades = np.asarray(selection.grades, dtype=np.float64)
    entries: list[dict[str, Any]] = []
    for item in prepared:
        entries.append({"error": item.as_dict()} if isinstance(item, StructureError) else {})
    for j, index in enumerate(index_of):
        entries[index]["grade"] = float(grades[j])
        if per_atom and selection.per_atom is not None:
            entries[index]["per_atom"] = np.asarray(selection.per_atom[j], dtype=np.float64)
    above = [index_of[j] for j in selection.above]
    selected = [index_of[j] for j in selection.selected]
    systems = [(index_of[j], candidates[j].system, float(grades[j]), j in selection.above) for j in selection.selected]
    return {
        "model": info,
        "results": entries,
        "above": above,
        "selected": selected,
        "extxyz": extxyz_text(systems, info["name"]),
    }


def extxyz_text(picked: list[tuple[int, AtomicSystem, float, bool]], model: str) -> str:
    """``picked`` (request index, structure, grade, above the threshold) as extended XYZ, geometry only."""
    from ase import Atoms
    from ase.io import write

    frames = []
    for index, system, grade, above in picked:
        atoms = Atoms(numbers=system.numbers, positions=system.positions, cell=system.cell, pbc=system.pbc)
        atoms.info.update(index=index, grade=grade, above_threshold=above, model=model)
        frames.append(atoms)
    text = io.StringIO()
    if frames:
        write(text, frames, format="extxyz")
    return text.getvalue()
