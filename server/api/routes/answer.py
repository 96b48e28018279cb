"""What ``/v1/predict`` and ``/v1/relax`` both do: ingest the structures, run them through the broker, answer."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio
from fastapi.responses import Response

from ...dynamics.options import RelaxOptions
from ..context import AppState
from ..ingest import check_fixed_count, check_request_atoms, prepare_tasks, tasks_of
from ..render import JSONBody, model_info, response_entries


async def answer(
    state: AppState,
    model: str | None,
    structures: Sequence[Any],
    properties: tuple[str, ...],
    relax: RelaxOptions | None = None,
    fixed: Sequence[Sequence[int] | None] | None = None,
) -> Response:
    """Decode and validate ``structures`` in a thread, submit the good ones, answer every one in input order."""
    card, status = await state.serving_card(model)
    state.check_request_size(len(structures))
    check_fixed_count(fixed, len(structures))
    prepare = partial(prepare_tasks, limits=state.settings.limits, relax=relax, fixed=fixed)
    prepared = await anyio.to_thread.run_sync(prepare, structures, card, properties)
    check_request_atoms(prepared, state.settings.max_atoms_per_request)
    results = await state.submit(tasks_of(prepared))
    entries = response_entries(prepared, results, properties)
    return JSONBody({"model": model_info(card, status, results), "results": entries})
