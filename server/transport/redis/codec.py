"""Compact binary messages for tasks and results on Redis: msgpack maps with raw little-endian arrays.

Optional parts (a relaxation, a selection's candidates, a prediction's uncertainty, a selection's outcome) travel
only when present, so messages without them are as they were.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import numpy as np

from ....errors import ErrorCode
from ....models.active_sets import Selection
from ....models.prediction import Prediction, Uncertainty
from ....models.system import AtomicSystem
from ...dynamics.options import RelaxOptions, RelaxSpec
from ...dynamics.outcome import Frame, RelaxOutcome
from ...engine.tasks import SelectSpec, Task, TaskResult


def encode_task(task: Task, reply_to: str) -> bytes:
    """A task and the stream its result goes to."""
    data = {"id": task.id, "model": task.model, "reply": reply_to, "props": list(task.properties)}
    data |= _system_fields(task.system)
    if task.relax is not None:
        fixed = task.relax.fixed
        data["relax"] = dataclasses.asdict(task.relax.options)
        data["fixed"] = None if fixed is None else np.asarray(fixed, dtype="<i4").tobytes()
    if task.select is not None:
        select = task.select
        data["select"] = {"max": select.max_count, "threshold": select.threshold}
        data["cands"] = [_system_fields(candidate) for candidate in select.candidates]
    return msgpack.packb(data)


def decode_task(message: bytes) -> tuple[Task, str]:
    """The task in ``message`` and the stream its result goes to."""
    data = msgpack.unpackb(message)
    relax = None
    if data.get("relax") is not None:
        fixed = None if data["fixed"] is None else np.frombuffer(data["fixed"], dtype="<i4").astype(np.int64)
        relax = RelaxSpec(RelaxOptions(**data["relax"]), fixed)
    select = None
    if (spec := data.get("select")) is not None:
        candidates = tuple(_system(candidate) for candidate in data["cands"])
        select = SelectSpec(candidates, spec["max"], spec["threshold"])
    system = _system(data)
    task = Task(data["id"], data["model"], system, tuple(data["props"]), relax=relax, select=select)
    return task, data["reply"]


def encode_result(result: TaskResult) -> bytes:
    data: dict[str, Any] = {"id": result.task_id, "worker": result.worker}
    if result.selection is not None:
        data["sel"] = _selection_fields(result.selection)
    elif result.prediction is None:
        data |= {"code": result.error_code, "msg": result.error_message}
    else:
        prediction = result.prediction
        data |= {"e": float(prediction.energy), "f": _bytes(prediction.forces), "s": _bytes(prediction.stress)}
        if prediction.uncertainty is not None:
            data["u"] = _uncertainty_fields(prediction.uncertainty)
    if result.uncertainty_max is not None:
        data["umax"] = float(result.uncertainty_max)
    if result.relaxation is not None:
        outcome = result.relaxation
        data["relaxed"] = _system_fields(outcome.system) | {
            "steps": outcome.steps,
            "reason": outcome.stop_reason,
            "fmax": outcome.fmax,
            "traj": [[f.step, f.energy, _bytes(f.positions), _bytes(f.cell)] for f in outcome.trajectory],
        }
    return msgpack.packb(data)


def decode_result(message: bytes) -> TaskResult:
    data = msgpack.unpackb(message)
    result = TaskResult(task_id=data["id"], worker=data.get("worker"))
    if "e" in data:
        result.prediction = Prediction(energy=data["e"], forces=_array(data["f"], 3), stress=_array(data["s"], 3))
        if (fields := data.get("u")) is not None:
            result.prediction.uncertainty = _uncertainty(fields)
    elif (selection := data.get("sel")) is not None:
        result.selection = _selection(selection)
    else:
        result.error_code, result.error_message = ErrorCode(data["code"]), data["msg"]
    if (relaxed := data.get("relaxed")) is not None:
        trajectory = [Frame(step, energy, _array(p, 3), _array(c, 3)) for step, energy, p, c in relaxed["traj"]]
        result.relaxation = RelaxOutcome(
            system=_system(relaxed),
            steps=relaxed["steps"],
            converged=relaxed["reason"] == "converged",
            stop_reason=relaxed["reason"],
            fmax=relaxed["fmax"],
            trajectory=trajectory,
        )
    result.uncertainty_max = data.get("umax")
    return result


def _uncertainty_fields(uncertainty: Uncertainty) -> dict[str, Any]:
    return {
        "k": uncertainty.kind,
        "v": float(uncertainty.value),
        "pa": _bytes(uncertainty.per_atom),
        "c": {name: float(value) for name, value in uncertainty.components.items()},
    }


def _uncertainty(fields: dict[str, Any]) -> Uncertainty:
    per_atom = None if fields["pa"] is None else np.frombuffer(fields["pa"], dtype="<f8").copy()
    return Uncertainty(fields["k"], fields["v"], per_atom, dict(fields["c"]))


def _selection_fields(selection: Selection) -> dict[str, Any]:
    per_atom = selection.per_atom
    return {
        "grades": _bytes(selection.grades),
        "pa": None if per_atom is None else [_bytes(atoms) for atoms in per_atom],
        "above": [int(i) for i in selection.above],
        "selected": [int(i) for i in selection.selected],
    }


def _selection(fields: dict[str, Any]) -> Selection:
    grades = np.frombuffer(fields["grades"], dtype="<f8").copy()
    per_atom = None if fields["pa"] is None else [np.frombuffer(raw, dtype="<f8").copy() for raw in fields["pa"]]
    return Selection(grades=grades, per_atom=per_atom, above=list(fields["above"]), selected=list(fields["selected"]))


def _system_fields(system: AtomicSystem) -> dict[str, Any]:
    return {
        "z": system.numbers.astype("<i4").tobytes(),
        "pos": system.positions.astype("<f8").tobytes(),
        "cell": system.cell.astype("<f8").tobytes(),
        "pbc": [bool(p) for p in system.pbc],
    }


def _system(data: dict[str, Any]) -> AtomicSystem:
    return AtomicSystem(
        numbers=np.frombuffer(data["z"], dtype="<i4").astype(np.int64),
        positions=np.frombuffer(data["pos"], dtype="<f8").reshape(-1, 3).copy(),
        cell=np.frombuffer(data["cell"], dtype="<f8").reshape(3, 3).copy(),
        pbc=np.array(data["pbc"], dtype=bool),
    )


def _bytes(array: np.ndarray | None) -> bytes | None:
    return None if array is None else np.asarray(array, dtype="<f8").tobytes()


def _array(raw: bytes | None, columns: int) -> np.ndarray | None:
    return None if raw is None else np.frombuffer(raw, dtype="<f8").reshape(-1, columns).copy()
