"""What travels between the front end and the workers: tasks in, results out.

Nothing here knows HTTP (the front end renders results, ``server/api/render.py``) or torch (the front end builds
tasks without loading a model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import ErrorCode
from ...models.prediction import Prediction
from ...models.system import AtomicSystem
from ..dynamics.options import MDSpec, NEBSpec, RelaxSpec
from ..dynamics.outcome import MDOutcome, NEBOutcome, RelaxOutcome

if TYPE_CHECKING:
    from ...models.active_sets import Selection


@dataclass(frozen=True)
class SelectSpec:
    """Pick structures for DFT among ``candidates``: those graded above ``threshold``, and a D-optimal subset of
    at most ``max_count`` (the potential's ``select``, MaxVol against its active set)."""

    candidates: tuple[AtomicSystem, ...]
    max_count: int
    threshold: float = 1.0


@dataclass
class Task:
    """One structure to evaluate with one model; or, with ``relax``, to relax; with ``md``, to run MD from; with
    ``neb``, the initial end point of a nudged-elastic-band path."""

    id: str
    model: str
    system: AtomicSystem
    properties: tuple[str, ...]
    relax: RelaxSpec | None = None
    #: A selection among candidate structures (``system`` is then the first of them), run as one piece of work.
    select: SelectSpec | None = None
    md: MDSpec | None = None
    neb: NEBSpec | None = None

    @property
    def n_atoms(self) -> int:
        """Atoms evaluated per round: an NEB path's moving images count each."""
        if self.select is not None:
            return sum(candidate.n_atoms for candidate in self.select.candidates)
        if self.neb is not None:
            images = len(self.neb.intermediates) or self.neb.options.images
            return self.system.n_atoms * images
        return self.system.n_atoms

    @property
    def in_flight(self) -> bool:
        """Whether the task is advanced step by step over many rounds (a relaxation, MD run or NEB path)."""
        return self.relax is not None or self.md is not None or self.neb is not None


@dataclass
class TaskResult:
    """The outcome of a task: a prediction, or an error with a code and message."""

    task_id: str
    prediction: Prediction | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    #: Where it ran: ``{"dtype": ..., "device": ...}`` of the worker's potential.
    worker: dict[str, str] | None = None
    #: For a relaxation: how it ended; ``prediction`` is then the one at the final geometry.
    relaxation: RelaxOutcome | None = None
    #: For a relaxation by a model that reports an uncertainty: its largest value along the path.
    uncertainty_max: float | None = None
    #: For a selection: the candidates' grades, those above the threshold and the D-optimal subset.
    selection: Selection | None = None
    #: For an MD run: how it ended; ``prediction`` is the one at the final geometry.
    md: MDOutcome | None = None
    #: For an NEB path: its images, energies and barrier; ``prediction`` is the one at the saddle image.
    neb: NEBOutcome | None = None

    @property
    def ok(self) -> bool:
        return self.prediction is not None or self.selection is not None

    @classmethod
    def failure(cls, task_id: str, code: ErrorCode, message: str) -> TaskResult:
        return cls(task_id=task_id, error_code=code, error_message=message)
