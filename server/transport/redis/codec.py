"""Compact binary messages for tasks and results on Redis: msgpack maps with raw little-endian arrays."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import numpy as np

from ....errors import ErrorCode
from ....models.prediction import Prediction
from ....models.system import AtomicSystem
from ...dynamics.options import RelaxOptions, RelaxSpec
from ...dynamics.relaxation import Frame, RelaxOutcome
from ...engine.tasks import Task, TaskResult


def encode_task(task: Task, reply_to: str) -> bytes:
    """A task and the stream its result goes to."""
    data = {"id": task.id, "model": task.model, "reply": reply_to, "props": list(task.properties)}
    data |= _system_fields(task.system)
    if task.relax is not None:
        fixed = task.relax.fixed
        data["relax"] = dataclasses.asdict(task.relax.options)
        data["fixed"] = None if fixed is None else np.asarray(fixed, dtype="<i4").tobytes()
    return msgpack.packb(data)


def decode_task(message: bytes) -> tuple[Task, str]:
    """The task in ``message`` and the stream its result goes to."""
    data = msgpack.unpackb(message)
    relax = None
    if data.get("relax") is not None:
        fixed = None if data["fixed"] is None else np.frombuffer(data["fixed"], dtype="<i4").astype(np.int64)
        relax = RelaxSpec(RelaxOptions(**data["relax"]), fixed)
    task = Task(id=data["id"], model=data["model"], system=_system(data), properties=tuple(data["props"]), relax=relax)
    return task, data["reply"]


def encode_result(result: TaskResult) -> bytes:
    data: dict[str, Any] = {"id": result.task_id, "worker": result.worker}
    if result.prediction is None:
        data |= {"code": result.error_code, "msg": result.error_message}
    else:
        prediction = result.prediction
        data |= {"e": float(prediction.energy), "f": _bytes(prediction.forces), "s": _bytes(prediction.stress)}
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
    return result


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
