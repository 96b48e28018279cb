"""The routes of asynchronous jobs: ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, its results, ``DELETE``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from ....errors import ErrorCode
from ....models.cards import ModelCard
from ...dynamics.options import MDOptions, RelaxOptions
from ..auth import RequestKey
from ..context import AppState
from ..errors import RequestError
from ..ingest import check_fixed_count, check_md_options, check_structure_count
from ..jobs import Job, JobManager, read_extxyz_frames
from ..schemas import ERROR_RESPONSES, ErrorResponse, JobRequest, MDSettings, ModelInfo, RelaxSettings
from ..structures import extxyz_first_frame_problem

JOB_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "extxyz text, any number of frames"},
                    "model": {"type": "string", "description": "model name; default: the server's first model"},
                    "properties": {"type": "string", "description": "comma-separated, e.g. energy,forces"},
                    "relax": {"type": "string", "description": 'relax the frames: JSON options, e.g. {"fmax": 0.05}'},
                    "md": {
                        "type": "string",
                        "description": 'run MD from the frames: JSON options, e.g. {"steps": 100}',
                    },
                },
            }
        },
    },
}


#: What the routes of one job answer besides 200: their errors all have the API's error body.
JOB_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


class JobCreated(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "cancelled", "failed"]
    model: str
    total: int | None = Field(description="Structures in the job; null until an uploaded file has been read.")


class JobStatus(JobCreated):
    kind: Literal["predict", "relax", "md"]
    done: int = Field(description="Structures with a result entry (errors included).")
    errors: int = Field(description="Structures whose entry is an error.")
    created: str = Field(description="ISO 8601, UTC.")
    finished: str | None = Field(description="ISO 8601, UTC; null while the job runs.")
    error: str | None = Field(description="Why the job failed as a whole; null otherwise.")
    model_info: ModelInfo | None = Field(description="The `model` block a /v1/predict response would carry.")


def create_router(state: AppState, jobs: JobManager) -> APIRouter:
    """The four job routes; errors are RequestErrors, answered by the app's handler."""
    router = APIRouter(tags=["jobs"])

    @router.post(
        "/v1/jobs",
        status_code=202,
        response_model=None,
        responses={202: {"model": JobCreated}, **ERROR_RESPONSES},
        openapi_extra={"requestBody": JOB_REQUEST_BODY},
    )
    async def submit_job(request: Request, key: RequestKey) -> JSONResponse:
        """Start a job on a large set of structures; answers 202 at once, before any structure is decoded.

        The body is /v1/predict's JSON (with a `relax` block of /v1/relax's options, and optionally `fixed`, the
        job relaxes the structures; with an `md` block of /v1/md's options, it runs MD from each, its result lines
        the /v1/md entries with their trajectories), or a multipart upload: an extxyz file in field `file` (any
        number of frames) and optional fields `model` and `properties` (comma-separated), or `relax` or `md` (its
        JSON options).
        """
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            model, properties, relax, text, md = await _read_upload(request)
            card, status = await state.serving_card(model)
            await _check_dynamics(state, card, relax, md)
            limit = state.settings.max_structures_per_job

            async def load() -> Sequence[Any]:
                return await anyio.to_thread.run_sync(read_extxyz_frames, text, limit)

            job = await jobs.create(card, status, properties, load, relax=relax, key=key, md=md)
        else:
            body = await _read_json(request)
            card, status = await state.serving_card(body.model)
            _check_job_size(state, len(body.structures))
            check_fixed_count(body.fixed, len(body.structures))
            structures = body.structures

            async def load() -> Sequence[Any]:
                return structures

            properties = tuple(dict.fromkeys(body.properties))
            relax = body.relax.options() if body.relax is not None else None
            md = body.md.options() if body.md is not None else None
            await _check_dynamics(state, card, relax, md)
            job = await jobs.create(
                card, status, properties, load, total=len(structures), relax=relax, fixed=body.fixed, key=key, md=md
            )
            job.uncertainty_per_atom = body.uncertainty == "per_atom"
        created = {key: job.status()[key] for key in ("id", "state", "model", "total")}
        return JSONResponse(created, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=JOB_ERRORS)
    async def job_status(job_id: str, key: RequestKey) -> dict[str, Any]:
        """A job's state and progress."""
        return jobs.get(job_id, key).status()

    @router.get(
        "/v1/jobs/{job_id}/results",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"application/x-ndjson": {}},
                "description": 'One line per structure in input order: {"index": i, ...} with the entry '
                "/v1/predict would give as results[i]. Streams while the job runs; ends when it has ended.",
            },
            **JOB_ERRORS,
        },
    )
    async def job_results(
        job_id: str,
        key: RequestKey,
        start: int = Query(0, ge=0, description="First index to send (to resume a broken stream)."),
    ) -> StreamingResponse:
        """The job's result entries, in input order, as NDJSON; for a cancelled or failed job, the finished prefix."""
        job: Job = jobs.get(job_id, key)
        return StreamingResponse(job.stream(start), media_type="application/x-ndjson")

    @router.delete("/v1/jobs/{job_id}", response_model=JobStatus, responses=JOB_ERRORS)
    async def cancel_job(job_id: str, key: RequestKey) -> dict[str, Any]:
        """Cancel a job: structures not yet submitted never will be. Answers the job's status."""
        job = jobs.get(job_id, key)
        jobs.cancel(job)
        return job.status()

    return router


async def _read_json(request: Request) -> JobRequest:
    body = await request.body()
    try:
        return await anyio.to_thread.run_sync(JobRequest.model_validate_json, body)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


async def _check_dynamics(state: AppState, card: ModelCard, relax: RelaxOptions | None, md: MDOptions | None) -> None:
    """A job relaxes or runs MD, not both; either needs a model that can relax here; MD options must be runnable."""
    if relax is not None and md is not None:
        raise RequestError(422, ErrorCode.INVALID_REQUEST, "a job takes a 'relax' block or an 'md' block, not both")
    if relax is not None:
        await state.check_can_step(card)
    if md is not None:
        await state.check_can_step(card, "run MD")
        check_md_options(md)


async def _read_upload(
    request: Request,
) -> tuple[str | None, tuple[str, ...], RelaxOptions | None, str, MDOptions | None]:
    """The model, properties, relaxation options, file text and MD options of a multipart upload; 422 when
    unreadable."""
    async with request.form() as form:
        upload = form.get("file")
        model = form.get("model")
        properties = form.get("properties")
        relax_field = form.get("relax")
        md_field = form.get("md")
        if not isinstance(upload, UploadFile):
            raise RequestError(
                422, ErrorCode.INVALID_REQUEST, "the upload needs the extxyz file in a file field named 'file'"
            )
        data = await upload.read()
    fields: dict[str, Any] = {"model": model or None, "structures": []}
    if properties:
        fields["properties"] = [name.strip() for name in str(properties).split(",") if name.strip()]
    try:
        parsed = JobRequest.model_validate(fields)
        relax = None if relax_field is None else RelaxSettings.model_validate_json(str(relax_field)).options()
        md = None if md_field is None else MDSettings.model_validate_json(str(md_field)).options()
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(
            422, ErrorCode.UNPARSABLE_TEXT, "the uploaded file is not UTF-8 text (expected extxyz)"
        ) from None
    if not text.strip():
        raise RequestError(422, ErrorCode.NO_STRUCTURES, "the uploaded file is empty")
    problem = await anyio.to_thread.run_sync(extxyz_first_frame_problem, text)
    if problem:
        raise RequestError(422, ErrorCode.UNPARSABLE_TEXT, f"could not read the uploaded file as extxyz: {problem}")
    return parsed.model, tuple(dict.fromkeys(parsed.properties)), relax, text, md


def _check_job_size(state: AppState, n_structures: int) -> None:
    check_structure_count(n_structures, state.settings.max_structures_per_job, "job", "into several jobs")
