"""What :class:`~.client.Client` and :class:`~.client.AsyncClient` share for server-side jobs (``/v1/jobs``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .encoding import encode_structure
from .relaxing import fixed_atoms
from .results import RelaxResult, RequestFailed, Result

FINAL_STATES = frozenset({"done", "cancelled", "failed"})


def job_body(
    structures: Any,
    properties: Sequence[str],
    model: str | None,
    settings: Any,
    relax: dict[str, Any] | None = None,
    fixed: Sequence[Sequence[int] | None] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/jobs``: the structures encoded as :meth:`Client.predict` sends them.

    With ``relax`` (options as :meth:`Client.relax` takes them), the job relaxes the structures; ``fixed`` gives
    each one's fixed atoms, by default those of its ase FixAtoms constraints.
    """
    if not isinstance(structures, (list, tuple)):
        structures = [structures]
    body = settings.body([encode_structure(s) for s in structures], properties, model)
    if relax is not None:
        body["relax"] = dict(relax)
        if fixed is None:
            fixed = [fixed_atoms(s) for s in structures]
        if any(f is not None for f in fixed):
            body["fixed"] = [None if f is None else [int(i) for i in f] for f in fixed]
    return body


def upload_fields(properties: Sequence[str], model: str | None, settings: Any) -> dict[str, str]:
    """The form fields that go with an uploaded extxyz file."""
    fields = {"properties": ",".join(properties)}
    if model or settings.model:
        fields["model"] = model or settings.model
    return fields


def upload_file(path: str | Path, handle: Any) -> dict[str, tuple[str, Any, str]]:
    return {"file": (Path(path).name, handle, "chemical/x-extxyz")}


def results_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/results"


def decode_line(line: str | bytes, model: dict[str, Any]) -> tuple[int, Result]:
    """One NDJSON line of a results stream: its index and its :class:`Result`."""
    entry = orjson.loads(line)
    index = entry.pop("index")
    kind = RelaxResult if "stop_reason" in entry else Result
    return index, kind.from_entry(index, 0, entry, model)


def check_finished(status: dict[str, Any]) -> None:
    """Raise :class:`RequestFailed` unless the job ended with every structure evaluated."""
    state = status["state"]
    if state == "failed":
        raise RequestFailed(None, "job_failed", f"job {status['id']} failed: {status['error']}")
    if state == "cancelled":
        raise RequestFailed(None, "job_cancelled", f"job {status['id']} was cancelled")


def collect(results: list[Result], status: dict[str, Any], errors: str) -> list[Result]:
    """The results of a finished job, as :meth:`Client.predict` returns them (``errors`` "raise" or "return")."""
    if len(results) != status["total"]:
        raise RequestFailed(
            None, "incomplete_job", f"job {status['id']}: got {len(results)} results of {status['total']}"
        )
    if errors == "raise":
        for result in results:
            if result.error is not None:
                raise result.error
    return results


def show_progress(bar: Any, status: dict[str, Any]) -> None:
    """Move a tqdm bar to the job's ``done`` of ``total``."""
    if status["total"] is not None and bar.total != status["total"]:
        bar.total = status["total"]
        bar.refresh()
    if status["done"] > bar.n:
        bar.update(status["done"] - bar.n)
