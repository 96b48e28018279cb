"""Execute: run the potential on one round's structures and say, for each, what came out or why nothing did.

Structures asking for different properties run as separate forward passes, so an energy-only request never pays
for forces. A failing batch is split in halves and retried, so one structure that makes the model raise gets an
error of its own while the rest of its batch succeeds; an out-of-memory error is handled the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ...errors import ErrorCode
from ...models.potential import Potential, StructureRejected
from ...models.prediction import Prediction
from ...models.system import AtomicSystem
from ...models.tensor_batch import TensorBatch, TensorPrediction

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

    def __init__(self, potential: Potential, on_out_of_memory: Callable[[int], None] | None = None):
        self.potential = potential
        #: Called with the atoms of a batch that ran out of device memory, before it is split (the budget shrinks).
        self.on_out_of_memory = on_out_of_memory
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
            self._after(error, sum(e.system.n_atoms for e in group))
            if len(group) == 1:
                log.warning("structure %s failed: %r", group[0].key, error)
                return {group[0].key: Failure(ErrorCode.MODEL_ERROR, f"the model failed on this structure: {error!r}")}
            log.info("batch of %d failed (%r); splitting", len(group), error)
            middle = len(group) // 2
            return self._run(group[:middle], properties) | self._run(group[middle:], properties)
        return {e.key: p for e, p in zip(group, predictions, strict=True)}

    def _after(self, error: Exception, atoms: int) -> None:
        """After a failed batch of ``atoms`` atoms: on running out of device memory, free the cache and say so."""
        if isinstance(error, torch.OutOfMemoryError):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if self.on_out_of_memory is not None:
                self.on_out_of_memory(atoms)

    def execute_tensors(
        self, batch: TensorBatch, properties: Sequence[str]
    ) -> tuple[TensorPrediction, torch.Tensor, dict[int, Failure]]:
        """The prediction of a whole batch on its device, a mask of the systems it failed on, and their failures.

        A failing batch is split in halves and retried, as :meth:`execute` does; failed systems' rows are zero.
        """
        pieces, failures = self._run_tensors(batch, list(range(batch.n_systems)), properties)
        if len(pieces) == 1 and not failures:
            return pieces[0][1], torch.zeros(batch.n_systems, dtype=torch.bool, device=batch.device), {}
        return _assemble(batch, pieces, failures)

    def _run_tensors(
        self, batch: TensorBatch, systems: list[int], properties: Sequence[str]
    ) -> tuple[list[tuple[list[int], TensorPrediction]], dict[int, Failure]]:
        part = batch if len(systems) == batch.n_systems else batch.select(torch.tensor(systems))
        try:
            return [(systems, self.potential.predict_tensors(part, properties))], {}
        except Exception as error:
            self._after(error, int(part.positions.shape[0]))
            if len(systems) == 1:
                key = batch.keys[systems[0]] if batch.keys else systems[0]
                log.warning("structure %s failed: %r", key, error)
                return [], {
                    systems[0]: Failure(ErrorCode.MODEL_ERROR, f"the model failed on this structure: {error!r}")
                }
            log.info("batch of %d failed (%r); splitting", len(systems), error)
            middle = len(systems) // 2
            first, first_failures = self._run_tensors(batch, systems[:middle], properties)
            second, second_failures = self._run_tensors(batch, systems[middle:], properties)
            return first + second, first_failures | second_failures


def _assemble(
    batch: TensorBatch, pieces: list[tuple[list[int], TensorPrediction]], failures: dict[int, Failure]
) -> tuple[TensorPrediction, torch.Tensor, dict[int, Failure]]:
    """One prediction of the whole batch from the predictions of its parts; failed systems' rows stay zero."""
    device, n_systems = batch.device, batch.n_systems
    offsets = batch.atom_offsets.tolist()
    energy = torch.zeros(n_systems, dtype=torch.float64, device=device)
    forces = stress = None
    uncertainty: list | None = None
    for systems, piece in pieces:
        index = torch.tensor(systems, device=device)
        energy[index] = piece.energy.to(torch.float64)
        if piece.forces is not None:
            forces = torch.zeros_like(batch.positions) if forces is None else forces
            atoms = torch.cat([torch.arange(offsets[s], offsets[s + 1]) for s in systems]).to(device)
            forces[atoms] = piece.forces.to(torch.float64)
        if piece.stress is not None:
            stress = torch.zeros_like(batch.cells) if stress is None else stress
            stress[index] = piece.stress.to(torch.float64)
        if piece.uncertainty is not None:
            uncertainty = [None] * n_systems if uncertainty is None else uncertainty
            for system, value in zip(systems, piece.uncertainty, strict=True):
                uncertainty[system] = value
    failed = torch.zeros(n_systems, dtype=torch.bool)
    failed[list(failures)] = True
    return TensorPrediction(energy, forces, stress, uncertainty), failed.to(device), failures
