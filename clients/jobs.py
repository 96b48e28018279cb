"""Server-side jobs (``/v1/jobs``): the bodies that start one, its status, and the lines of its results stream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import orjson
from mlipserve.errors import ErrorCode

from ..protocol import JobState, MDOptions, Property, RelaxOptions
from .encoding import as_list, encode_structure
from .errors import RequestFailed
from .md import MDResult
from .options import ErrorMode
from .relaxing import FixedAtoms, fixed_lists
from .results import RelaxResult, Result, checked


class JobStatus(TypedDict, total=False):
    """``GET /v1/jobs/{id}``: ``total`` is None until an uploaded file has been read."""

    id: str
    state: JobState
    model: str
    total: int | None
    done: int
    errors: int
    created: str
    finished: str | None
    error: str | None
    model_info: dict[str, Any] | None


def job_body(
    structures: Any,
    properties: Sequence[Property],
    model: str | None,
    relax: RelaxOptions | Mapping[str, Any] | None = None,
    fixed: FixedAtoms | None = None,
    md: MDOptions | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/jobs`` (``model`` None: the server's), structures encoded as predict sends them.

    With ``relax``, the job relaxes the structures; with ``md``, it runs MD from each; ``fixed`` gives each one's
    fixed atoms, by default those of its ase FixAtoms constraints.
    """
    if relax is not None and md is not None:
        raise ValueError("a job relaxes or runs MD, not both")
    _, items = as_list(structures)
    body: dict[str, Any] = {"structures": [encode_structure(s) for s in items], "properties": list(properties)}
    if model:
        body["model"] = model
    if relax is not None:
        body["relax"] = RelaxOptions.of(relax).request()
    if md is not None:
        body["md"] = MDOptions.of(md).request()
    if relax is not None or md is not None:
        fixed_atoms = fixed_lists(items, fixed)
        if any(f is not None for f in fixed_atoms):
            body["fixed"] = fixed_atoms
    return body


def upload_fields(properties: Sequence[Property], model: str | None) -> dict[str, str]:
    """The form fields that go with an uploaded extxyz file."""
    fields = {"properties": ",".join(properties)}
    if model:
        fields["model"] = model
    return fields


def status_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def results_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/results"


def decode_line(line: str | bytes, model: dict[str, Any]) -> tuple[int, Result]:
    """One NDJSON line of a results stream: its index and its :class:`Result` (a RelaxResult for a relaxation, an
    MDResult for an MD run)."""
    entry = orjson.loads(line)
    index = entry.pop("index")
    kind = MDResult if "time_fs" in entry else RelaxResult if "stop_reason" in entry else Result
    return index, kind.from_entry(index, 0, entry, model)


def check_finished(status: JobStatus) -> None:
    """Raise :class:`RequestFailed` unless the job ended with every structure evaluated."""
    state = status["state"]
    if state == "failed":
        raise RequestFailed(None, ErrorCode.JOB_FAILED, f"job {status['id']} failed: {status['error']}")
    if state == "cancelled":
        raise RequestFailed(None, ErrorCode.JOB_CANCELLED, f"job {status['id']} was cancelled")


def finished(results: list[Result], status: JobStatus, errors: ErrorMode) -> list[Result]:
    """The results of a finished job, as predict() returns them."""
    if len(results) != status["total"]:
        message = f"job {status['id']}: got {len(results)} results of {status['total']}"
        raise RequestFailed(None, ErrorCode.INCOMPLETE_JOB, message)
    return checked(results, errors)
