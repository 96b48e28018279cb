"""Render: results as the JSON of a response (``/v1/predict``, ``/v1/relax``, ``/v1/md``, ``/v1/neb``, job result
lines), and MD trajectories as extended XYZ."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson
from fastapi.responses import Response

from ...models.cards import ModelCard
from ...models.prediction import Uncertainty
from ...models.system import AtomicSystem
from ..dynamics.outcome import MDFrame, Progress, RelaxOutcome
from ..engine.tasks import TaskResult
from ..transport.base import ModelStatus
from .errors import StructureError
from .ingest import MD_PROPERTIES, NEB_PROPERTIES, Prepared


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


def structure_entry(system: AtomicSystem) -> dict[str, Any]:
    """A geometry as a response gives it: numbers, positions (Å), cell (Å, rows) and pbc."""
    return {"numbers": system.numbers, "positions": system.positions, "cell": system.cell, "pbc": system.pbc}


class Trajectories:
    """The MD frames reported for a request's tasks, one per step (a resumed run reports some again)."""

    def __init__(self) -> None:
        self._frames: dict[str, dict[int, MDFrame]] = {}

    def add(self, progress: Progress) -> MDFrame | None:
        """Keep ``progress``'s frame; returns it unless the step was held already (or it carries none)."""
        frame = progress.frame
        if frame is None:
            return None
        frames = self._frames.setdefault(progress.task_id, {})
        if frame.step in frames:
            return None
        frames[frame.step] = frame
        return frame

    def of(self, task_id: str) -> list[MDFrame]:
        """The frames of ``task_id`` by step."""
        frames = self._frames.get(task_id, {})
        return [frames[step] for step in sorted(frames)]


def md_frame_entry(frame: MDFrame) -> dict[str, Any]:
    """One MD frame as JSON (velocities in Å/fs; stress for periodic structures)."""
    entry: dict[str, Any] = {
        "step": frame.step,
        "time_fs": frame.time_fs,
        "positions": frame.positions,
        "velocities": frame.velocities,
        "cell": frame.cell,
        "energy": frame.energy,
        "kinetic_energy": frame.kinetic_energy,
        "temperature": frame.temperature,
    }
    if frame.stress is not None:
        entry["stress"] = frame.stress
    return entry


def md_entry(
    result: TaskResult,
    index: int,
    n_atoms: int,
    per_atom: bool = False,
    trajectory: Sequence[MDFrame] | None = None,
) -> dict[str, Any]:
    """The JSON entry of an MD run's ``result`` as structure ``index``: the final geometry's energy, forces and
    stress, its structure and velocities, how the run ended and, given ``trajectory``, its frames."""
    entry = result_entry(result, index, n_atoms, MD_PROPERTIES, per_atom)
    outcome = result.md
    if "error" in entry or outcome is None:
        return entry
    entry |= {
        "structure": structure_entry(outcome.system),
        "velocities": outcome.velocities,
        "steps": outcome.steps,
        "time_fs": outcome.time_fs,
        "stop_reason": outcome.stop_reason,
        "temperature": outcome.temperature,
        "kinetic_energy": outcome.kinetic_energy,
        "seed": outcome.seed,
    }
    if trajectory is not None:
        entry["trajectory"] = [md_frame_entry(frame) for frame in trajectory]
    return entry


def neb_entry(result: TaskResult, index: int) -> dict[str, Any]:
    """The JSON entry of an NEB ``result`` as path ``index``: every image, the energy profile and barrier, and the
    saddle image's energy and forces."""
    if result.prediction is None or result.neb is None:
        code = result.error_code.value if result.error_code is not None else None
        return {"error": {"code": code, "message": f"path {index}: {result.error_message}"}}
    outcome = result.neb
    saddle = result_entry(result, index, outcome.images[outcome.saddle_index].n_atoms, NEB_PROPERTIES)
    return {
        "images": [structure_entry(image) for image in outcome.images],
        "energies": outcome.energies,
        "image_fmax": outcome.image_fmax,
        "barrier_forward": outcome.barrier_forward,
        "barrier_backward": outcome.barrier_backward,
        "saddle_index": outcome.saddle_index,
        "energy": saddle["energy"],
        "forces": saddle.get("forces"),
        "steps": outcome.steps,
        "converged": outcome.converged,
        "stop_reason": outcome.stop_reason,
        "fmax": outcome.fmax,
    }


def md_extxyz(runs: Iterable[tuple[int, AtomicSystem, Sequence[MDFrame], TaskResult | None]]) -> str:
    """Extended XYZ of MD runs ``(index, initial system, frames, result)``: every frame of every run (info index,
    step, time_fs, energy, temperature; per-atom ``velocities`` in Å/fs), then each run's final structure (info
    index, stop_reason, steps, time_fs, temperature, seed; its energy, forces and stress).

    A run without an outcome (an error) contributes its frames only.
    """
    from ase.io import write

    runs = list(runs)
    images = []
    for index, system, frames, _ in runs:
        for frame in frames:
            atoms = AtomicSystem(system.numbers, frame.positions, frame.cell, system.pbc).to_ase()
            info: dict[str, Any] = {
                "index": index,
                "step": frame.step,
                "time_fs": frame.time_fs,
                "temperature": frame.temperature,
                "kinetic_energy": frame.kinetic_energy,
            }
            results = {"energy": frame.energy, "stress": frame.stress}
            images.append(_extxyz_image(atoms, info, frame.velocities, results))
    for index, _, _, result in runs:
        if result is None or result.md is None or result.prediction is None:
            continue
        outcome, prediction = result.md, result.prediction
        info = {
            "index": index,
            "stop_reason": outcome.stop_reason,
            "step": outcome.steps,
            "time_fs": outcome.time_fs,
            "temperature": outcome.temperature,
            "kinetic_energy": outcome.kinetic_energy,
            "seed": outcome.seed,
        }
        results = {"energy": prediction.energy, "forces": prediction.forces, "stress": prediction.stress}
        images.append(_extxyz_image(outcome.system.to_ase(), info, outcome.velocities, results))
    buffer = io.StringIO()
    write(buffer, images, format="extxyz")
    return buffer.getvalue()


def _extxyz_image(atoms: Any, info: dict[str, Any], velocities: np.ndarray, results: dict[str, Any]) -> Any:
    """``atoms`` with ``info``, a per-atom ``velocities`` column (Å/fs) and the ``results`` given (None: left out)
    on a SinglePointCalculator, as one extxyz frame."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.info.update(info)
    atoms.new_array("velocities", np.asarray(velocities, dtype=np.float64))
    known = {name: np.asarray(value, dtype=np.float64) for name, value in results.items() if value is not None}
    atoms.calc = SinglePointCalculator(atoms, **known)
    return atoms
