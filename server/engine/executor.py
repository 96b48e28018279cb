"""Execute: run the potential on one round's structures and say, for each, what came out or why nothing did.

Structures asking for different properties run as separate forward passes, so an energy-only request never pays
for forces. A failing batch is split in halves and retried, so one structure that makes the model raise gets an
error of its own while the rest of its batch succeeds; an out-of-memory error is handled the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...errors import ErrorCode
from ...models.potential import Potential, StructureRejected
from ...models.prediction import Prediction
from ...models.system import AtomicSystem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """One structure to evaluate in a round: a new prediction, or a relaxation's current geometry."""

    key: str
    system: AtomicSystem
    properties: tuple[str, ...]


@dataclass(frozen=True)
class Failure:
    """Why a structure has no prediction."""

    code: ErrorCode
    message: str


class Executor:
    """Runs one :class:`Potential` on batches of evaluations."""

    def __init__(self, potential: Potential):
        self.potential = potential
        #: Reported with every result: the potential's dtype and device.
        self.info = {"dtype": str(potential.dtype).removeprefix("torch."), "device": str(potential.device)}

    def rejects(self, system: AtomicSystem) -> Failure | None:
        """Why the model family refuses ``system`` (its own limits, e.g. an isolated atom), or None."""
        try:
            self.potential.check(system)
        except StructureRejected as rejection:
            return Failure(ErrorCode(rejection.code), rejection.message)
        return None

    def execute(self, evaluations: Sequence[Evaluation]) -> dict[str, Prediction | Failure]:
        """Each evaluation's prediction or failure, by key; one forward pass per set of properties asked for."""
        groups: dict[tuple[str, ...], list[Evaluation]] = {}
        for evaluation in evaluations:
            groups.setdefault(tuple(sorted(evaluation.properties)), []).append(evaluation)
        outputs: dict[str, Prediction | Failure] = {}
        for properties, group in groups.items():
            outputs |= self._run(group, properties)
        return outputs

    def _run(self, group: Sequence[Evaluation], properties: tuple[str, ...]) -> dict[str, Prediction | Failure]:
        """Evaluate ``group`` as one batch; on failure, split and retry to isolate the culprit."""
        try:
            # the scheduler ran the checks when it admitted the structures (:meth:`rejects`)
            predictions = self.potential.predict([e.system for e in group], properties, checked=True)
        except Exception as error:
            if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(group) == 1:
                log.warning("structure %s failed: %r", group[0].key, error)
                return {group[0].key: Failure(ErrorCode.MODEL_ERROR, f"the model failed on this structure: {error!r}")}
            log.info("batch of %d failed (%r); splitting", len(group), error)
            middle = len(group) // 2
            return self._run(group[:middle], properties) | self._run(group[middle:], properties)
        return {e.key: p for e, p in zip(group, predictions, strict=True)}
