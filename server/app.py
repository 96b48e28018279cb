"""The HTTP front end: validate a request, forward its structures to the broker, answer with the results.

Inference runs in worker threads (embedded mode) or worker processes (Redis mode); decoding and validating
structures run in a thread pool, so the event loop never blocks on either.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..models.registry import DEFAULT_MODEL, ModelRegistry, UnknownModel
from .broker import EmbeddedBroker
from .config import ServerSettings
from .errors import RequestError, StructureError
from .hosting import EmbeddedModelHost, HostedModel, ModelState
from .schemas import ErrorResponse, PredictRequest, PredictResponse
from .structures import decode_structure
from .tasks import Task
from .validation import validate_structure

log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (404, 413, 422, 503)}


class JSONBody(Response):
    """JSON rendered by orjson, which writes numpy arrays directly and keeps floats' full precision."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass
class AppState:
    settings: ServerSettings
    registry: ModelRegistry
    broker: EmbeddedBroker
    host: EmbeddedModelHost

    @property
    def default_model(self) -> str:
        """The model of a request that names none: the first one served."""
        return self.settings.models[0] if self.settings.models else DEFAULT_MODEL

    def hosted_model(self, name: str) -> HostedModel:
        """The served model called ``name``, or a RequestError saying why it cannot take requests."""
        try:
            card = self.registry.card(name)
        except UnknownModel as error:
            raise RequestError(404, "unknown_model", str(error)) from None
        hosted = self.host.models.get(card.name)
        if hosted is None:
            served = ", ".join(self.host.models) or "none"
            raise RequestError(
                404,
                "model_not_served",
                f"model {name!r} is registered but not served here (served: {served}); "
                f"start the server with --model {name}",
            )
        if hosted.state is ModelState.LOADING:
            raise RequestError(503, "model_loading", f"model {name!r} is still loading", retry_after=2.0)
        if hosted.state is ModelState.FAILED:
            raise RequestError(503, "model_unavailable", f"model {name!r} is unavailable: {hosted.error}")
        return hosted


def create_app(settings: ServerSettings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    """Build the FastAPI app; models start loading when the app starts."""
    settings = settings or ServerSettings()
    registry = registry or ModelRegistry(settings.model_dir)
    for name in settings.models:
        registry.card(name)  # fail fast on a misspelt --model
    broker = EmbeddedBroker(queue_limit=settings.queue_limit)
    host = EmbeddedModelHost(registry, broker, settings.models, settings.device, settings.batch, settings.torch_threads)
    state = AppState(settings, registry, broker, host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        host.start()
        yield
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
        hosted = state.hosted_model(body.model or state.default_model)
        assert hosted.potential is not None
        properties = tuple(dict.fromkeys(body.properties))
        check_request_size(len(body.structures), settings)
        prepared = await anyio.to_thread.run_sync(prepare_tasks, body.structures, hosted, properties, settings)
        n_atoms = [item.n_atoms if isinstance(item, Task) else 0 for item in prepared]
        if sum(n_atoms) > settings.max_atoms_per_request:
            raise RequestError(
                413,
                "too_many_atoms",
                f"the request holds {sum(n_atoms)} atoms, more than this server's limit of "
                f"{settings.max_atoms_per_request} per request; split it (the Python client does this for you)",
            )
        tasks = [item for item in prepared if isinstance(item, Task)]
        results = iter(await state.broker.submit(tasks))
        entries = []
        for index, item in enumerate(prepared):
            if isinstance(item, StructureError):
                entries.append({"error": item.as_dict()})
            else:
                entries.append(next(results).as_response(index, item.n_atoms, properties))
        return JSONBody({"model": model_info(hosted), "results": entries})

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """Every registered model, whether it is installed, and whether (and where) this server serves it."""
        models = []
        for card in registry.cards():
            entry = card.summary()
            hosted = host.models.get(card.name)
            entry["served"] = hosted is not None
            if hosted is not None:
                entry["state"] = hosted.state.value
                entry["error"] = hosted.error
                entry["workers"] = [{"device": str(hosted.potential.device)}] if hosted.potential else []
            models.append(entry)
        return {"default": state.default_model, "models": models}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "A served model is loading or failed."}})
    async def readyz() -> JSONResponse:
        """200 once every served model is loaded and has a worker; 503 before that or after a failure."""
        models = {name: {"state": m.state.value, "error": m.error} for name, m in host.models.items()}
        return JSONResponse({"ready": host.ready, "models": models}, status_code=200 if host.ready else 503)

    return app


def check_request_size(n_structures: int, settings: ServerSettings) -> None:
    if n_structures == 0:
        raise RequestError(422, "no_structures", "the request has no structures")
    if n_structures > settings.max_structures_per_request:
        raise RequestError(
            413,
            "too_many_structures",
            f"the request holds {n_structures} structures, more than this server's limit of "
            f"{settings.max_structures_per_request}; split it (the Python client does this for you)",
        )


def prepare_tasks(
    structures: list[dict[str, Any]], hosted: HostedModel, properties: tuple[str, ...], settings: ServerSettings
) -> list[Task | StructureError]:
    """Decode and validate each structure: a Task for each good one, the error for each bad one."""
    assert hosted.potential is not None
    prepared: list[Task | StructureError] = []
    for index, data in enumerate(structures):
        try:
            system = decode_structure(index, data)
            validate_structure(index, system, hosted.potential, settings.limits)
        except StructureError as error:
            prepared.append(error)
            continue
        prepared.append(Task(id=uuid.uuid4().hex, model=hosted.name, system=system, properties=properties))
    return prepared


def model_info(hosted: HostedModel) -> dict[str, str]:
    potential = hosted.potential
    assert potential is not None
    card = potential.card
    dtype = str(potential.dtype).removeprefix("torch.")
    return {
        "name": card.name,
        "version": card.version,
        "sha256": card.sha256,
        "dtype": dtype,
        "device": str(potential.device),
    }
