"""Compact binary messages for tasks, results and progress on Redis: msgpack maps with raw little-endian arrays.

Optional parts (a relaxation, a selection's candidates, an MD run or NEB path, a prediction's uncertainty, a
selection's, MD or NEB outcome) travel only when present, so messages without them are as they were. Progress
messages (an MD frame, a checkpoint) are maps of their own; an MD checkpoint's integrator and noise-generator
states are plain data, where integers beyond 64 bits (numpy's PCG64 state) travel as msgpack extension type 1.
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
from ...dynamics.options import MDOptions, MDSpec, NEBOptions, NEBSpec, RelaxOptions, RelaxSpec
from ...dynamics.outcome import Frame, MDCheckpoint, MDFrame, MDOutcome, NEBOutcome, Progress, RelaxOutcome
from ...engine.tasks import SelectSpec, Task, TaskResult

#: msgpack extension type of an integer that does not fit 64 bits: its two's complement bytes, little-endian.
BIG_INT = 1


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
    if task.md is not None:
        data["md"] = _md_spec_fields(task.md)
    if task.neb is not None:
        data["neb"] = _neb_spec_fields(task.neb)
    return msgpack.packb(data)


def decode_task(message: bytes) -> tuple[Task, str]:
    """The task in ``message`` and the stream its result goes to."""
    data = _unpack(message)
    relax = None
    if data.get("relax") is not None:
        fixed = None if data["fixed"] is None else np.frombuffer(data["fixed"], dtype="<i4").astype(np.int64)
        relax = RelaxSpec(RelaxOptions(**data["relax"]), fixed)
    select = None
    if (spec := data.get("select")) is not None:
        candidates = tuple(_system(candidate) for candidate in data["cands"])
        select = SelectSpec(candidates, spec["max"], spec["threshold"])
    md = None if (spec := data.get("md")) is None else _md_spec(spec)
    neb = None if (spec := data.get("neb")) is None else _neb_spec(spec)
    system = _system(data)
    task = Task(data["id"], data["model"], system, tuple(data["props"]), relax=relax, select=select, md=md, neb=neb)
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
    if result.md is not None:
        data["md"] = _md_outcome_fields(result.md)
    if result.neb is not None:
        data["neb"] = _neb_outcome_fields(result.neb)
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
    if (md := data.get("md")) is not None:
        result.md = _md_outcome(md)
    if (neb := data.get("neb")) is not None:
        result.neb = _neb_outcome(neb)
    result.uncertainty_max = data.get("umax")
    return result


def encode_progress(progress: Progress) -> bytes:
    """What a running task reports: its id, and a frame and/or a checkpoint."""
    frame, checkpoint = progress.frame, progress.checkpoint
    data: dict[str, Any] = {"id": progress.task_id}
    data["frame"] = None if frame is None else _frame_fields(frame)
    data["ckpt"] = None if checkpoint is None else _checkpoint_fields(checkpoint)
    return msgpack.packb(data)


def decode_progress(message: bytes) -> Progress:
    data = _unpack(message)
    frame = None if data["frame"] is None else _frame(data["frame"])
    checkpoint = None if data["ckpt"] is None else _checkpoint(data["ckpt"])
    return Progress(data["id"], frame=frame, checkpoint=checkpoint)


def encode_checkpoint(checkpoint: MDCheckpoint) -> bytes:
    """An MD checkpoint alone, as a worker stores it for whoever resumes the run."""
    return msgpack.packb(_checkpoint_fields(checkpoint))


def decode_checkpoint(message: bytes) -> MDCheckpoint:
    return _checkpoint(_unpack(message))


def _md_spec_fields(spec: MDSpec) -> dict[str, Any]:
    return {
        "o": dataclasses.asdict(spec.options),
        "seed": int(spec.seed),
        "v": _bytes(spec.velocities),
        "fixed": _indices(spec.fixed),
        "resume": None if spec.resume is None else _checkpoint_fields(spec.resume),
    }


def _md_spec(data: dict[str, Any]) -> MDSpec:
    resume = None if data["resume"] is None else _checkpoint(data["resume"])
    return MDSpec(MDOptions(**data["o"]), data["seed"], _array(data["v"], 3), _indices_of(data["fixed"]), resume)


def _neb_spec_fields(spec: NEBSpec) -> dict[str, Any]:
    return {
        "o": dataclasses.asdict(spec.options),
        "final": _system_fields(spec.final),
        "mid": [_system_fields(image) for image in spec.intermediates],
        "fixed": _indices(spec.fixed),
    }


def _neb_spec(data: dict[str, Any]) -> NEBSpec:
    intermediates = tuple(_system(image) for image in data["mid"])
    return NEBSpec(NEBOptions(**data["o"]), _system(data["final"]), intermediates, _indices_of(data["fixed"]))


def _md_outcome_fields(outcome: MDOutcome) -> dict[str, Any]:
    return _system_fields(outcome.system) | {
        "v": _bytes(outcome.velocities),
        "steps": int(outcome.steps),
        "reason": outcome.stop_reason,
        "t": float(outcome.time_fs),
        "ke": float(outcome.kinetic_energy),
        "temp": float(outcome.temperature),
        "seed": int(outcome.seed),
    }


def _md_outcome(data: dict[str, Any]) -> MDOutcome:
    return MDOutcome(
        system=_system(data),
        velocities=_rows(data["v"]),
        steps=data["steps"],
        stop_reason=data["reason"],
        time_fs=data["t"],
        kinetic_energy=data["ke"],
        temperature=data["temp"],
        seed=data["seed"],
    )


def _neb_outcome_fields(outcome: NEBOutcome) -> dict[str, Any]:
    return {
        "images": [_system_fields(image) for image in outcome.images],
        "en": [float(energy) for energy in outcome.energies],
        "ifmax": [float(fmax) for fmax in outcome.image_fmax],
        "steps": int(outcome.steps),
        "conv": bool(outcome.converged),
        "reason": outcome.stop_reason,
        "fmax": float(outcome.fmax),
    }


def _neb_outcome(data: dict[str, Any]) -> NEBOutcome:
    return NEBOutcome(
        images=[_system(image) for image in data["images"]],
        energies=list(data["en"]),
        image_fmax=list(data["ifmax"]),
        steps=data["steps"],
        converged=data["conv"],
        stop_reason=data["reason"],
        fmax=data["fmax"],
    )


def _frame_fields(frame: MDFrame) -> dict[str, Any]:
    return {
        "step": int(frame.step),
        "t": float(frame.time_fs),
        "pos": _bytes(frame.positions),
        "v": _bytes(frame.velocities),
        "cell": _bytes(frame.cell),
        "e": float(frame.energy),
        "ke": float(frame.kinetic_energy),
        "temp": float(frame.temperature),
        "s": _bytes(frame.stress),
    }


def _frame(data: dict[str, Any]) -> MDFrame:
    return MDFrame(
        step=data["step"],
        time_fs=data["t"],
        positions=_rows(data["pos"]),
        velocities=_rows(data["v"]),
        cell=_rows(data["cell"]),
        energy=data["e"],
        kinetic_energy=data["ke"],
        temperature=data["temp"],
        stress=_array(data["s"], 3),
    )


def _checkpoint_fields(checkpoint: MDCheckpoint) -> dict[str, Any]:
    return {
        "step": int(checkpoint.step),
        "pos": _bytes(checkpoint.positions),
        "v": _bytes(checkpoint.velocities),
        "cell": _bytes(checkpoint.cell),
        "is": _plain(checkpoint.integrator_state),
        "rng": _plain(checkpoint.rng_state),
    }


def _checkpoint(data: dict[str, Any]) -> MDCheckpoint:
    return MDCheckpoint(
        step=data["step"],
        positions=_rows(data["pos"]),
        velocities=_rows(data["v"]),
        cell=_rows(data["cell"]),
        integrator_state=data["is"],
        rng_state=data["rng"],
    )


def _plain(value: Any) -> Any:
    """``value`` as data msgpack packs: numpy scalars and arrays as Python numbers and lists, integers beyond
    64 bits as :data:`BIG_INT` extensions (tuples come back as lists)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray | np.generic):
        return _plain(value.tolist())
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        size = (value.bit_length() + 8) // 8
        return msgpack.ExtType(BIG_INT, value.to_bytes(size, "little", signed=True))
    return value


def _ext(code: int, raw: bytes) -> Any:
    if code == BIG_INT:
        return int.from_bytes(raw, "little", signed=True)
    return msgpack.ExtType(code, raw)


def _unpack(message: bytes) -> Any:
    return msgpack.unpackb(message, ext_hook=_ext, strict_map_key=False)


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


def _indices(indices: np.ndarray | None) -> bytes | None:
    return None if indices is None else np.asarray(indices, dtype="<i4").tobytes()


def _indices_of(raw: bytes | None) -> np.ndarray | None:
    return None if raw is None else np.frombuffer(raw, dtype="<i4").astype(np.int64)


def _bytes(array: np.ndarray | None) -> bytes | None:
    return None if array is None else np.asarray(array, dtype="<f8").tobytes()


def _rows(raw: bytes) -> np.ndarray:
    """A required (n, 3) float64 array."""
    return np.frombuffer(raw, dtype="<f8").reshape(-1, 3).copy()


def _array(raw: bytes | None, columns: int) -> np.ndarray | None:
    return None if raw is None else np.frombuffer(raw, dtype="<f8").reshape(-1, columns).copy()
