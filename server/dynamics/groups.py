"""The tasks a worker advances one step per round, as the engine's scheduler sees them.

Relaxations (:class:`~.relaxation.RelaxationSet`), MD runs (:class:`~.md.MDSet`) and nudged-elastic-band paths
(:class:`~.neb.NEBSet`) are each an :class:`InFlight` group: each round the scheduler asks a group for the
geometries to evaluate (a device batch, or host systems), hands back the model's outputs, and gets the tasks that
ended. A member that ends leaves at once and a waiting one joins in the next round (in-flight batching).

A group's evaluation keys are its task ids, except where one task evaluates several geometries per round (an NEB
path's images): :meth:`InFlight.owner` maps an evaluation key back to its task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ...models.prediction import Prediction
from ...models.system import AtomicSystem
from ...models.tensor_batch import TensorBatch, TensorPrediction
from .outcome import MDOutcome, NEBOutcome, Progress, RelaxOutcome

#: Why the caller ends a member early (the uncertainty watch's ``"extrapolating"``).
CallerStop = Mapping[str, Any]


@dataclass
class Ended:
    """A task that left its group: its outcome and the prediction at its final geometry (an NEB: the saddle's)."""

    key: str
    outcome: RelaxOutcome | MDOutcome | NEBOutcome
    prediction: Prediction


class InFlight(Protocol):
    """A changing set of tasks advanced one step per round; see the module docstring."""

    #: Whether the scheduler's uncertainty watch applies (``max_grade``): evaluation keys are then task ids.
    watched: bool

    def __len__(self) -> int: ...

    @property
    def n_atoms(self) -> int:
        """Atoms evaluated per round (an NEB path: all its moving images)."""

    def add(self, key: str, system: AtomicSystem, spec: Any) -> None:
        """Start task ``key`` on ``system`` with its spec (RelaxSpec, MDSpec, NEBSpec); evaluated next round."""

    def keys(self) -> list[str]:
        """The task ids held."""

    def owner(self, key: str) -> str:
        """The task id of an evaluation key."""

    def properties(self) -> tuple[str, ...]:
        """What each round asks the model for."""

    def batch(self) -> TensorBatch:
        """The round's geometries as one device batch (its ``keys`` are evaluation keys)."""

    def advance_tensors(
        self, prediction: TensorPrediction, failed: torch.Tensor | None = None, stop: CallerStop | None = None
    ) -> list[Ended]:
        """Take the prediction of the last :meth:`batch` (``failed``: a mask of systems the model failed on; their
        tasks are dropped without an outcome); step on; return the tasks that ended."""

    def systems(self) -> list[tuple[str, AtomicSystem]]:
        """The round's geometries by evaluation key, to evaluate on the host."""

    def advance(self, predictions: Mapping[str, Prediction | None], stop: CallerStop | None = None) -> list[Ended]:
        """Take the host predictions of :meth:`systems` by evaluation key (None: failed; its task is dropped);
        step on; return the tasks that ended."""

    def progress(self) -> list[Progress]:
        """Frames and checkpoints reported since the last call (the list is handed over, then emptied)."""
