"""The HTTP front end: validate a request, forward its structures to the broker, answer with the results.

This layer never loads a model and never imports torch: it works on cards, and the broker (embedded or Redis)
takes the tasks to wherever the models run. Decoding and validating structures run in a thread pool, so the event
loop never blocks on them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ... import __version__
from ...errors import ErrorCode
from ...models.registry import ModelRegistry
from ..config import ServerSettings
from ..transport.base import Broker, BrokerError, ModelDirectory
from .context import AppState
from .errors import RequestError
from .jobs import JobManager
from .routes import health, jobs, models, predict, relax

Hook = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


def create_api(
    settings: ServerSettings,
    registry: ModelRegistry,
    broker: Broker,
    directory: ModelDirectory,
    on_start: Hook = _nothing,
    on_stop: Hook = _nothing,
) -> FastAPI:
    """The FastAPI app over ``broker``; ``on_start``/``on_stop`` run after the broker starts and before it closes."""
    state = AppState(settings, registry, broker, directory)
    job_manager = JobManager(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broker.start()
        await on_start()
        yield
        await job_manager.close()
        await on_stop()
        await broker.close()

    app = FastAPI(
        title="mlipserve",
        version=__version__,
        description="Energies, forces and stresses from machine-learned interatomic potentials. "
        "Units: eV, Å, eV/Å, stress in eV/Å³ (ASE sign).",
        lifespan=lifespan,
    )
    app.state.mlipserve = state
    for router in (predict.create_router(state), relax.create_router(state), jobs.create_router(state, job_manager)):
        app.include_router(router)
    app.include_router(models.create_router(state))
    app.include_router(health.create_router(state))

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(BrokerError)
    async def broker_error(request: Request, error: BrokerError) -> JSONResponse:
        return _error_response(RequestError.from_broker(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'] if part != 'body') or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        return _error_response(RequestError(422, ErrorCode.INVALID_REQUEST, problems))

    return app


def _error_response(error: RequestError) -> JSONResponse:
    headers = {"Retry-After": f"{error.retry_after:g}"} if error.retry_after is not None else None
    body = {"error": {"code": error.code.value, "message": error.message}}
    return JSONResponse(body, status_code=error.status, headers=headers)
