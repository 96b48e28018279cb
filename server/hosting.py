"""Embedded model hosting: load each configured model and serve it with a worker thread in this process."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from ..models.potential import Potential
from ..models.registry import ModelRegistry
from .batching import BatchPolicy
from .broker import EmbeddedBroker
from .state import ModelState, ModelStatus
from .tuning import tune_process
from .worker import Worker

log = logging.getLogger(__name__)


@dataclass
class HostedModel:
    name: str
    state: ModelState = ModelState.LOADING
    potential: Potential | None = None
    error: str | None = None
    worker: Worker | None = None


class EmbeddedModelHost:
    """Loads models in a background thread, then runs one worker thread per model on the embedded broker.

    It is the embedded mode's :class:`~.state.ModelDirectory`.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        broker: EmbeddedBroker,
        models: tuple[str, ...],
        device: str,
        policy: BatchPolicy,
        torch_threads: int | None = None,
    ):
        self.registry = registry
        self.broker = broker
        self.device = device
        self.policy = policy
        self.torch_threads = torch_threads
        self.models = {name: HostedModel(name) for name in models}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        loader = threading.Thread(target=self._load_all, name="mlipserve-loader", daemon=True)
        loader.start()
        self._threads.append(loader)

    def _load_all(self) -> None:
        tune_process(self.torch_threads)
        for hosted in self.models.values():
            if self._stop.is_set():
                return
            try:
                hosted.potential = self.registry.load(hosted.name, None if self.device == "auto" else self.device)
            except Exception as error:
                hosted.state, hosted.error = ModelState.FAILED, f"{type(error).__name__}: {error}"
                log.error("could not load %s: %s", hosted.name, hosted.error)
                continue
            hosted.worker = Worker(hosted.potential, self.broker.source(hosted.name), self.policy)
            thread = threading.Thread(
                target=self._serve, args=(hosted,), name=f"mlipserve-worker-{hosted.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            hosted.state = ModelState.READY

    def _serve(self, hosted: HostedModel) -> None:
        tune_process(self.torch_threads)
        assert hosted.worker is not None
        try:
            hosted.worker.run(self._stop)
        except BaseException as error:  # the loop itself catches model errors; this is a bug
            hosted.state, hosted.error = ModelState.FAILED, f"worker stopped: {error!r}"
            log.exception("worker for %s stopped", hosted.name)
            hosted.worker.fail_pending(hosted.error)
            raise

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    async def status(self, name: str) -> ModelStatus | None:
        hosted = self.models.get(name)
        if hosted is None:
            return None
        workers = [hosted.worker.info] if hosted.worker else []
        return ModelStatus(state=hosted.state, error=hosted.error, workers=workers)

    async def statuses(self) -> dict[str, ModelStatus]:
        return {name: status for name in self.models if (status := await self.status(name))}
