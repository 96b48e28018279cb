"""Render: results as the JSON of a response (``/v1/predict``, ``/v1/relax``, job result lines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi.responses import Response

from ...models.cards import ModelCard
from ...models.prediction import Uncertainty
from ..dynamics.outcome import RelaxOutcome
from ..engine.tasks import TaskResult
from ..transport.base import ModelStatus
from .errors import StructureError
from .ingest import Prepared


class JSONBody(Response):
    """JSON rendered by orjson, which writes numpy arrays directly and keeps floats' full precision."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def result_entry(
    result: TaskResult, index: int, n_atoms: int, properties: Sequence[str], per_atom: bool = False
) -> dict[str, Any]:
    """The JSON entry of ``result`` as structure ``index`` of a response; ``per_atom``: with per-atom uncertainty."""
    if result.prediction is None:
        code = result.error_code.value if result.error_code is not None else None
        return {"error": {"code": code, "message": f"structure {index}: {result.error_message}"}}
    prediction = result.prediction
    entry: dict[str, Any] = {"energy": prediction.energy, "energy_per_atom": prediction.energy / n_atoms}
    if "forces" in properties and prediction.forces is not None:
        entry["forces"] = np.asarray(prediction.forces, dtype=np.float64)
    if "stress" in properties:
        entry["stress"] = None if prediction.stress is None else np.asarray(prediction.stress, dtype=np.float64)
    if prediction.uncertainty is not None:
        entry["uncertainty"] = uncertainty_entry(prediction.uncertainty, per_atom, result.uncertainty_max)
    if result.relaxation is not None:
        entry |= relaxation_entry(result.relaxation)
    return entry


def uncertainty_entry(uncertainty: Uncertainty, per_atom: bool, largest: float | None = None) -> dict[str, Any]:
    """A structure's ``uncertainty``: kind, value and named figures; per atom when asked for; for a relaxation,
    ``max_along_path``."""
    entry: dict[str, Any] = {"kind": uncertainty.kind, "value": float(uncertainty.value)}
    entry |= {name: float(value) for name, value in uncertainty.components.items()}
    if largest is not None:
        entry["max_along_path"] = float(largest)
    if per_atom and uncertainty.per_atom is not None:
        entry["per_atom"] = np.asarray(uncertainty.per_atom, dtype=np.float64)
    return entry


def relaxation_entry(outcome: RelaxOutcome) -> dict[str, Any]:
    """The relaxation fields of a ``/v1/relax`` result entry."""
    system = outcome.system
    entry: dict[str, Any] = {
        "structure": {"numbers": system.numbers, "positions": system.positions, "cell": system.cell, "pbc": system.pbc},
        "steps": outcome.steps,
        "converged": outcome.converged,
        "stop_reason": outcome.stop_reason,
        "fmax": outcome.fmax,
    }
    if outcome.trajectory:
        entry["trajectory"] = [
            {"step": frame.step, "energy": frame.energy, "positions": frame.positions, "cell": frame.cell}
            for frame in outcome.trajectory
        ]
    return entry


def response_entries(
    prepared: Sequence[Prepared], results: Sequence[TaskResult], properties: Sequence[str], per_atom: bool = False
) -> list[dict[str, Any]]:
    """The ``results`` list of a response, in input order: results for tasks, error entries for the rest."""
    remaining = iter(results)
    entries = []
    for index, item in enumerate(prepared):
        if isinstance(item, StructureError):
            entries.append({"error": item.as_dict()})
        else:
            entries.append(result_entry(next(remaining), index, item.n_atoms, properties, per_atom))
    return entries


def model_info(card: ModelCard, status: ModelStatus, results: Sequence[TaskResult] = ()) -> dict[str, str]:
    """The response's ``model`` block: the card's identity, and the dtype and device that did the work."""
    worker = next((r.worker for r in results if r.worker), None) or (status.workers[0] if status.workers else {})
    return {
        "name": card.name,
        "version": card.version,
        "sha256": card.sha256,
        "dtype": worker.get("dtype", "unknown"),
        "device": worker.get("device", "unknown"),
    }
