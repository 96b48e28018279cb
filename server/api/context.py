"""What the routes share: settings, the registry, the broker, the directory of served models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ...errors import ErrorCode
from ...models.cards import ModelCard
from ...models.registry import DEFAULT_MODEL, ModelRegistry, UnknownModel
from ..config import ServerSettings
from ..engine.tasks import Task, TaskResult
from ..quotas import LocalQuotas
from ..transport.base import Broker, ModelDirectory, ModelState, ModelStatus, ProgressHandler
from .auth import Authenticator
from .committee import CommitteeDirectory
from .errors import RequestError
from .ingest import check_structure_count
from .observe import ApiMetrics


@dataclass
class AppState:
    settings: ServerSettings
    registry: ModelRegistry
    broker: Broker
    directory: ModelDirectory
    auth: Authenticator = field(default_factory=lambda: Authenticator(None, LocalQuotas()))
    metrics: ApiMetrics = field(default_factory=ApiMetrics)

    async def submit(self, tasks: Sequence[Task], on_progress: ProgressHandler | None = None) -> list[TaskResult]:
        """Run ``tasks`` through the broker and count the work done; ``on_progress`` gets the frames they report."""
        results = await self.broker.submit(tasks, on_progress=on_progress)
        self.metrics.count_results(tasks, results)
        return results

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
            raise RequestError(404, ErrorCode.UNKNOWN_MODEL, str(error)) from None
        status = await self.directory.status(card.name)
        if status is None:
            raise RequestError(
                404,
                ErrorCode.MODEL_NOT_SERVED,
                f"model {name!r} is registered but not served here; start the server (or a worker) with --model {name}",
            )
        if status.state is ModelState.LOADING:
            raise RequestError(503, ErrorCode.MODEL_LOADING, f"model {name!r} is still loading", retry_after=2.0)
        if status.state is ModelState.NO_WORKERS and not self.scales_from_zero(card.name):
            raise RequestError(503, ErrorCode.NO_WORKERS, f"no live worker serves model {name!r}", retry_after=5.0)
        if status.state is ModelState.FAILED:
            raise RequestError(503, ErrorCode.MODEL_UNAVAILABLE, f"model {name!r} is unavailable: {status.error}")
        return card, status

    async def check_can_step(self, card: ModelCard, action: str = "relax") -> None:
        """Refuse (422) to ``action`` ("relax", "run MD", "run NEB": work stepped by the model's forces) with a
        model that cannot step here (a committee served by its members apart)."""
        if isinstance(self.directory, CommitteeDirectory):
            await self.directory.check_can_step(card, action)

    def scales_from_zero(self, name: str) -> bool:
        """Whether work for ``name`` is queued while no worker serves it (an autoscaler will start one)."""
        return self.settings.scale_from_zero and name in self.settings.models

    def check_request_size(self, n_structures: int) -> None:
        limit = self.settings.max_structures_per_request
        check_structure_count(n_structures, limit, "request", "the Python client splits for you")
