"""Run a selection task on the worker: grade candidate structures and pick a D-optimal subset for DFT.

The choice is the potential's own (:meth:`~mlipserve.models.potential.Potential.select`: MaxVol against its active
set); this module turns it, or the reason it could not be made, into a task result.
"""

from __future__ import annotations

import logging

from ...errors import ErrorCode
from ...models.potential import Potential, PropertyNotImplemented, StructureRejected
from .tasks import Task, TaskResult

log = logging.getLogger(__name__)


def run_selection(potential: Potential, task: Task) -> TaskResult:
    """The selection of ``task`` (its ``select`` spec) by ``potential``, or a failure saying why there is none."""
    spec = task.select
    if spec is None:
        raise ValueError("not a selection task")
    candidates = list(spec.candidates)
    for index, candidate in enumerate(candidates):
        try:
            potential.check(candidate)
        except StructureRejected as rejection:
            return TaskResult.failure(task.id, ErrorCode(rejection.code), f"candidate {index}: {rejection.message}")
    try:
        selection = potential.select(candidates, spec.max_count, spec.threshold)
    except PropertyNotImplemented as error:
        return TaskResult.failure(task.id, ErrorCode.INVALID_REQUEST, str(error))
    except Exception as error:
        log.warning("selection %s failed: %r", task.id, error)
        return TaskResult.failure(task.id, ErrorCode.MODEL_ERROR, f"the model failed to select: {error!r}")
    return TaskResult(task.id, selection=selection)
