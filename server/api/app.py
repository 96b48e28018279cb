"""The HTTP front end: validate a request, forward its structures to the broker, answer with the results.

This layer never loads a model and never imports torch: it works on cards, and the broker (embedded or Redis)
takes the tasks to wherever the models run. Decoding and validating structures run in a thread pool, so the event
loop never blocks on them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ... import __version__
from ...errors import ErrorCode
from ...models.registry import ModelRegistry
from ..config import ServerSettings
from ..keys import Scope
from ..transport.base import Broker, BrokerError, ModelDirectory
from .auth import Authenticator
from .committee import CommitteeBroker, CommitteeDirectory
from .context import AppState
from .errors import RequestError
from .jobs import JobManager
from .limits import BodyLimitMiddleware, BodyLimits
from .observe import ObservingMiddleware
from .routes import health, jobs, md, models, neb, page, predict, relax, select, status

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
    auth: Authenticator | None = None,
) -> FastAPI:
    """The FastAPI app over ``broker``; ``on_start``/``on_stop`` run after the broker starts and before it closes.

    ``auth`` admits requests (default: no keys, an open API).
    """
    directory = CommitteeDirectory(directory, registry)  # committees served by their members (committee.py)
    broker = CommitteeBroker(broker, directory)
    state = AppState(settings, registry, broker, directory)
    if auth is not None:
        state.auth = auth
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

    def admitting(scope: Scope | None) -> list[Any]:
        return [Depends(state.auth.requires(scope))] if state.auth.enabled else []

    app.include_router(predict.create_router(state), dependencies=admitting(Scope.PREDICT))
    app.include_router(relax.create_router(state), dependencies=admitting(Scope.RELAX))
    app.include_router(md.create_router(state), dependencies=admitting(Scope.RELAX))
    app.include_router(neb.create_router(state), dependencies=admitting(Scope.RELAX))
    app.include_router(select.create_router(state), dependencies=admitting(Scope.PREDICT))
    app.include_router(jobs.create_router(state, job_manager), dependencies=admitting(Scope.JOBS))
    app.include_router(models.create_router(state), dependencies=admitting(None))
    app.include_router(status.create_router(state, job_manager), dependencies=admitting(Scope.ADMIN))
    app.include_router(health.create_router(state))
    app.include_router(page.create_router())
    # outermost last: request ids and metrics see every answer, the body limits run before anything reads a body
    app.add_middleware(BodyLimitMiddleware, limits=BodyLimits.of(settings))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "Location"],
        )
    app.add_middleware(ObservingMiddleware, metrics=state.metrics)

    def refuse(request: Request, error: RequestError) -> JSONResponse:
        state.metrics.record_error(request.method, request.url.path, error.status, error.code.value, error.message)
        return _error_response(error)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return refuse(request, error)

    @app.exception_handler(BrokerError)
    async def broker_error(request: Request, error: BrokerError) -> JSONResponse:
        return refuse(request, RequestError.from_broker(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        """Starlette's own refusals (no such route, wrong method, an unreadable body) in the API's error format."""
        code = HTTP_ERROR_CODES.get(error.status_code, ErrorCode.INVALID_REQUEST)
        response = refuse(request, RequestError(error.status_code, code, str(error.detail)))
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'] if part != 'body') or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        return refuse(request, RequestError(422, ErrorCode.INVALID_REQUEST, problems))

    return app


#: The codes of Starlette's refusals by status; any other is an ``invalid_request``.
HTTP_ERROR_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.BODY_TIMEOUT,
    413: ErrorCode.BODY_TOO_LARGE,
}


def _error_response(error: RequestError) -> JSONResponse:
    headers = {"Retry-After": f"{error.retry_after:g}"} if error.retry_after is not None else {}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": {"code": error.code.value, "message": error.message}}
    return JSONResponse(body, status_code=error.status, headers=headers)
