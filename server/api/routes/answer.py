"""What ``/v1/predict`` and ``/v1/relax`` both do: ingest the structures, run them through the broker, answer."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio
from fastapi.responses import Response

from ...dynamics.options import RelaxOptions
from ..context import AppState
from ..ingest import check_fixed_count, check_request_atoms, prepare_tasks, quick_to_prepare, tasks_of
from ..render import JSONBody, model_info, response_entries


async def answer(
    state: AppState,
    model: str | None,
    structures: Sequence[Any],
    properties: tuple[str, ...],
    relax: RelaxOptions | None = None,
    fixed: Sequence[Sequence[int] | None] | None = None,
    per_atom: bool = False,
) -> Response:
    """Decode and validate ``structures`` (in a thread unless they are few atoms), submit the good ones, answer every
    one in input order.

    ``per_atom``: answer with each atom's uncertainty, where the model reports one.
    """
    card, status = await state.serving_card(model)
    if relax is not None:
        await state.check_can_step(card)
    state.check_request_size(len(structures))
    check_fixed_count(fixed, len(structures))
    prepare = partial(prepare_tasks, limits=state.settings.limits, relax=relax, fixed=fixed)
    if quick_to_prepare(structures):  # a few atoms: checked here, quicker than a hop to a thread and back
        prepared = prepare(structures, card, properties)
    else:
        prepared = await anyio.to_thread.run_sync(prepare, structures, card, properties)
    check_request_atoms(prepared, state.settings.max_atoms_per_request)
    results = await state.submit(tasks_of(prepared))
    entries = response_entries(prepared, results, properties, per_atom)
    return JSONBody({"model": model_info(card, status, results), "results": entries})
