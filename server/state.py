"""What the HTTP routes share: settings, registry, broker, the directory of served models, request preparation."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..models.cards import ModelCard
from ..models.registry import DEFAULT_MODEL, ModelRegistry, UnknownModel
from ..models.system import AtomicSystem
from .broker import Broker
from .config import ServerSettings
from .errors import RequestError, StructureError
from .relaxation import RelaxOptions, RelaxSpec
from .structures import decode_structure
from .tasks import Task, TaskResult
from .validation import validate_structure

#: What a relaxation result reports for its final geometry.
RELAX_PROPERTIES = ("energy", "forces", "stress")


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    NO_WORKERS = "no_workers"


@dataclass
class ModelStatus:
    """Whether a served model can take requests now, and the workers that serve it."""

    state: ModelState
    error: str | None = None
    #: One entry per worker: ``device``, ``dtype`` and, for remote workers, ``host``, ``id``.
    workers: list[dict[str, Any]] = field(default_factory=list)


class ModelDirectory(Protocol):
    """Which models this server serves, and their state (embedded host, or Redis workers' heartbeats)."""

    async def status(self, name: str) -> ModelStatus | None:
        """The model's status, or None when this server does not serve it."""

    async def statuses(self) -> dict[str, ModelStatus]:
        """Every served model's status."""


@dataclass
class AppState:
    settings: ServerSettings
    registry: ModelRegistry
    broker: Broker
    directory: ModelDirectory

    @property
    def default_model(self) -> str:
        """The model of a request that names none: the first one configured."""
        return self.settings.models[0] if self.settings.models else DEFAULT_MODEL

    async def serving_card(self, name: str | None) -> tuple[ModelCard, ModelStatus]:
        """The card of a model that can take requests now, or a RequestError saying why it cannot."""
        name = name or self.default_model
        try:
            card = self.registry.card(name)
        except UnknownModel as error:
            raise RequestError(404, "unknown_model", str(error)) from None
        status = await self.directory.status(card.name)
        if status is None:
            raise RequestError(
                404,
                "model_not_served",
                f"model {name!r} is registered but not served here; start the server (or a worker) with --model {name}",
            )
        if status.state is ModelState.LOADING:
            raise RequestError(503, "model_loading", f"model {name!r} is still loading", retry_after=2.0)
        if status.state is ModelState.NO_WORKERS:
            raise RequestError(503, "no_workers", f"no live worker serves model {name!r}", retry_after=5.0)
        if status.state is ModelState.FAILED:
            raise RequestError(503, "model_unavailable", f"model {name!r} is unavailable: {status.error}")
        return card, status

    def check_request_size(self, n_structures: int) -> None:
        check_structure_count(
            n_structures, self.settings.max_structures_per_request, "request", "the Python client splits for you"
        )

    def prepare_tasks(
        self,
        structures: Sequence[Any],
        card: ModelCard,
        properties: tuple[str, ...],
        start: int = 0,
        relax: RelaxOptions | None = None,
        fixed: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Task | StructureError]:
        """Decode and validate each structure: a Task for each good one, the error for each bad one.

        With ``relax``, the tasks are relaxations; ``fixed`` lists each structure's fixed atoms (or None).
        Error messages number the structures from ``start`` (a job prepares its structures a slice at a time).
        """
        prepared: list[Task | StructureError] = []
        for offset, data in enumerate(structures):
            index = start + offset
            try:
                system = decode_structure(index, data)
                validate_structure(index, system, card, self.settings.limits)
                spec = None
                if relax is not None:
                    spec = RelaxSpec(relax, fixed_atoms(index, system, fixed[offset] if fixed else None))
            except StructureError as error:
                prepared.append(error)
                continue
            prepared.append(
                Task(id=uuid.uuid4().hex, model=card.name, system=system, properties=properties, relax=spec)
            )
        return prepared

    def check_request_atoms(self, prepared: Sequence[Task | StructureError]) -> None:
        total = sum(item.n_atoms for item in prepared if isinstance(item, Task))
        limit = self.settings.max_atoms_per_request
        if total > limit:
            raise RequestError(
                413,
                "too_many_atoms",
                f"the request holds {total} atoms, more than this server's limit of {limit} per request; "
                "split it (the Python client does this for you)",
            )


def fixed_atoms(index: int, system: AtomicSystem, indices: Sequence[int] | None) -> np.ndarray | None:
    """The fixed-atom indices of structure ``index`` as an array, checked against its atom count."""
    if indices is None or len(indices) == 0:
        return None
    fixed = np.asarray(indices, dtype=np.int64)
    bad = fixed[(fixed < 0) | (fixed >= system.n_atoms)]
    if bad.size:
        raise StructureError(
            index, "malformed_structure", f"fixed atom index {int(bad[0])} is out of range for {system.n_atoms} atoms"
        )
    return np.unique(fixed)


def check_fixed_count(fixed: Sequence[Any] | None, n_structures: int) -> None:
    """``fixed`` must have one entry per structure."""
    if fixed is not None and len(fixed) != n_structures:
        raise RequestError(
            422, "invalid_request", f"'fixed' has {len(fixed)} entries for {n_structures} structures; give one each"
        )


def check_structure_count(n_structures: int, limit: int, what: str, advice: str) -> None:
    """Refuse an empty ``what`` (request or job) with 422, and one over ``limit`` structures with 413."""
    if n_structures == 0:
        raise RequestError(422, "no_structures", f"the {what} has no structures")
    if n_structures > limit:
        raise RequestError(
            413,
            "too_many_structures",
            f"the {what} holds {n_structures} structures, more than this server's limit of {limit} per {what}; "
            f"split it ({advice})",
        )


def response_entries(
    prepared: Sequence[Task | StructureError], results: Sequence[TaskResult], properties: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The ``results`` list of a response, in input order: results for tasks, error entries for the rest."""
    remaining = iter(results)
    entries = []
    for index, item in enumerate(prepared):
        if isinstance(item, StructureError):
            entries.append({"error": item.as_dict()})
        else:
            entries.append(next(remaining).as_response(index, item.n_atoms, properties))
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
