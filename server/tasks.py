"""What travels between the HTTP front end and the workers: tasks in, results out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.potential import Prediction
from ..models.system import AtomicSystem
from .relaxation import RelaxOutcome, RelaxSpec


@dataclass
class Task:
    """One structure to evaluate (or, with ``relax``, to relax) with one model."""

    id: str
    model: str
    system: AtomicSystem
    properties: tuple[str, ...]
    relax: RelaxSpec | None = None

    @property
    def n_atoms(self) -> int:
        return self.system.n_atoms


@dataclass
class TaskResult:
    """The outcome of a task: a prediction, or an error with a code and message."""

    task_id: str
    prediction: Prediction | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: Where it ran: ``{"dtype": ..., "device": ...}`` of the worker's potential.
    worker: dict[str, str] | None = None
    #: For a relaxation: how it ended; ``prediction`` is then the one at the final geometry.
    relaxation: RelaxOutcome | None = None

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    def as_response(self, index: int, n_atoms: int, properties: tuple[str, ...]) -> dict:
        """The JSON entry of this result as structure ``index`` of a ``/v1/predict`` response."""
        if self.prediction is None:
            return {"error": {"code": self.error_code, "message": f"structure {index}: {self.error_message}"}}
        prediction = self.prediction
        entry: dict = {"energy": prediction.energy, "energy_per_atom": prediction.energy / n_atoms}
        if "forces" in properties and prediction.forces is not None:
            entry["forces"] = np.asarray(prediction.forces, dtype=np.float64)
        if "stress" in properties:
            entry["stress"] = None if prediction.stress is None else np.asarray(prediction.stress, dtype=np.float64)
        if self.relaxation is not None:
            entry |= relaxation_entry(self.relaxation)
        return entry


def relaxation_entry(outcome: RelaxOutcome) -> dict:
    """The relaxation fields of a ``/v1/relax`` result entry."""
    system = outcome.system
    entry: dict = {
        "structure": {
            "numbers": system.numbers,
            "positions": system.positions,
            "cell": system.cell,
            "pbc": system.pbc,
        },
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
