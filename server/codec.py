"""Compact binary messages for tasks and results on Redis: msgpack maps with raw little-endian arrays."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from ..models.potential import Prediction
from ..models.system import AtomicSystem
from .tasks import Task, TaskResult


def encode_task(task: Task, reply_to: str) -> bytes:
    """A task and the stream its result goes to."""
    system = task.system
    return msgpack.packb(
        {
            "id": task.id,
            "model": task.model,
            "reply": reply_to,
            "props": list(task.properties),
            "z": system.numbers.astype("<i4").tobytes(),
            "pos": system.positions.astype("<f8").tobytes(),
            "cell": system.cell.astype("<f8").tobytes(),
            "pbc": [bool(p) for p in system.pbc],
        }
    )


def decode_task(message: bytes) -> tuple[Task, str]:
    """The task in ``message`` and the stream its result goes to."""
    data = msgpack.unpackb(message)
    system = AtomicSystem(
        numbers=np.frombuffer(data["z"], dtype="<i4").astype(np.int64),
        positions=np.frombuffer(data["pos"], dtype="<f8").reshape(-1, 3).copy(),
        cell=np.frombuffer(data["cell"], dtype="<f8").reshape(3, 3).copy(),
        pbc=np.array(data["pbc"], dtype=bool),
    )
    return Task(id=data["id"], model=data["model"], system=system, properties=tuple(data["props"])), data["reply"]


def encode_result(result: TaskResult) -> bytes:
    data: dict[str, Any] = {"id": result.task_id, "worker": result.worker}
    if result.prediction is None:
        data |= {"code": result.error_code, "msg": result.error_message}
    else:
        prediction = result.prediction
        data |= {"e": float(prediction.energy), "f": _bytes(prediction.forces), "s": _bytes(prediction.stress)}
    return msgpack.packb(data)


def decode_result(message: bytes) -> TaskResult:
    data = msgpack.unpackb(message)
    result = TaskResult(task_id=data["id"], worker=data.get("worker"))
    if "e" in data:
        result.prediction = Prediction(energy=data["e"], forces=_array(data["f"], 3), stress=_array(data["s"], 3))
    else:
        result.error_code, result.error_message = data["code"], data["msg"]
    return result


def _bytes(array: np.ndarray | None) -> bytes | None:
    return None if array is None else np.asarray(array, dtype="<f8").tobytes()


def _array(raw: bytes | None, columns: int) -> np.ndarray | None:
    return None if raw is None else np.frombuffer(raw, dtype="<f8").reshape(-1, columns).copy()
