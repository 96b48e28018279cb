"""The HTTP front end: validate a request, forward its structures to the broker, answer with the results.

Inference runs in worker threads (embedded mode) or worker processes (Redis mode); decoding and validating
structures run in a thread pool, so the event loop never blocks on either.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..models.registry import ModelRegistry
from .broker import Broker, EmbeddedBroker
from .config import ServerSettings
from .errors import RequestError
from .hosting import EmbeddedModelHost
from .jobs import JobManager
from .jobs_api import create_jobs_router
from .redis_broker import RedisBroker, RedisWorkerDirectory
from .schemas import ErrorResponse, PredictRequest, PredictResponse, RelaxRequest, RelaxResponse
from .state import (
    RELAX_PROPERTIES,
    AppState,
    ModelDirectory,
    ModelState,
    check_fixed_count,
    model_info,
    response_entries,
)
from .tasks import Task

log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (404, 413, 422, 503)}


class JSONBody(Response):
    """JSON rendered by orjson, which writes numpy arrays directly and keeps floats' full precision."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def create_app(settings: ServerSettings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    """Build the FastAPI app; models start loading when the app starts."""
    settings = settings or ServerSettings()
    registry = registry or ModelRegistry(settings.model_dir)
    for name in settings.models:
        registry.card(name)  # fail fast on a misspelt --model
    broker: Broker
    directory: ModelDirectory
    host: EmbeddedModelHost | None = None
    if settings.redis_url:
        broker = RedisBroker(settings.redis_url, settings.queue_limit, settings.request_timeout)
        directory = RedisWorkerDirectory(broker, expected=settings.models)
    else:
        broker = EmbeddedBroker(queue_limit=settings.queue_limit)
        directory = host = EmbeddedModelHost(
            registry, broker, settings.models, settings.device, settings.batch, settings.torch_threads
        )
    state = AppState(settings, registry, broker, directory)
    jobs = JobManager(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broker.start()
        if host:
            host.start()
        yield
        await jobs.close()
        if host:
            host.stop()
        await broker.close()

    app = FastAPI(
        title="mlipserve",
        version=__version__,
        description="Energies, forces and stresses from machine-learned interatomic potentials. "
        "Units: eV, Å, eV/Å, stress in eV/Å³ (ASE sign).",
        lifespan=lifespan,
    )
    app.state.mlipserve = state
    app.include_router(create_jobs_router(state, jobs))

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        headers = {"Retry-After": f"{error.retry_after:g}"} if error.retry_after is not None else None
        body = {"error": {"code": error.code, "message": error.message}}
        return JSONResponse(body, status_code=error.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'] if part != 'body') or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        return JSONResponse({"error": {"code": "invalid_request", "message": problems}}, status_code=422)

    @app.post("/v1/predict", response_model=None, responses={200: {"model": PredictResponse}, **ERROR_RESPONSES})
    async def predict(body: PredictRequest) -> Response:
        """Energies, forces and stresses of a list of structures, in input order."""
        card, status = await state.serving_card(body.model)
        properties = tuple(dict.fromkeys(body.properties))
        state.check_request_size(len(body.structures))
        prepared = await anyio.to_thread.run_sync(state.prepare_tasks, body.structures, card, properties)
        state.check_request_atoms(prepared)
        results = await broker.submit([item for item in prepared if isinstance(item, Task)])
        entries = response_entries(prepared, results, properties)
        return JSONBody({"model": model_info(card, status, results), "results": entries})

    @app.post("/v1/relax", response_model=None, responses={200: {"model": RelaxResponse}, **ERROR_RESPONSES})
    async def relax(body: RelaxRequest) -> Response:
        """Relax structures (FIRE, atoms and cell) on the workers; answers when every structure has ended.

        For thousands of structures, submit a job with a `relax` block instead (POST /v1/jobs).
        """
        card, status = await state.serving_card(body.model)
        state.check_request_size(len(body.structures))
        check_fixed_count(body.fixed, len(body.structures))
        prepared = await anyio.to_thread.run_sync(
            partial(state.prepare_tasks, relax=body.options(), fixed=body.fixed),
            body.structures,
            card,
            RELAX_PROPERTIES,
        )
        state.check_request_atoms(prepared)
        results = await broker.submit([item for item in prepared if isinstance(item, Task)])
        entries = response_entries(prepared, results, RELAX_PROPERTIES)
        return JSONBody({"model": model_info(card, status, results), "results": entries})

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """Every registered model, whether it is installed, and whether (and by which workers) it is served."""
        statuses = await state.directory.statuses()
        models = []
        for card in registry.cards():
            entry = card.summary()
            status = statuses.get(card.name)
            entry["served"] = status is not None
            if status is not None:
                entry |= {"state": status.state.value, "error": status.error, "workers": status.workers}
            models.append(entry)
        return {"default": state.default_model, "models": models}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "A served model is loading, failed or has no worker."}})
    async def readyz() -> JSONResponse:
        """200 once every served model can take requests; 503 before that or after a failure."""
        try:
            statuses = await state.directory.statuses()
        except RequestError as error:
            return JSONResponse({"ready": False, "error": error.message}, status_code=503)
        ready = all(status.state is ModelState.READY for status in statuses.values())
        models = {name: {"state": s.state.value, "error": s.error} for name, s in statuses.items()}
        return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)

    return app
