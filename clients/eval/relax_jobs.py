"""Relax the structures that have no result yet, through the server's jobs API, appending each result as it arrives.

The work is cut into jobs of ``job_size`` structures, model after model; ``in_flight`` jobs of a model run on the
server at once so that its workers stay busy while the client reads a job's results stream (input order).
Interrupting (Ctrl-C) cancels the jobs still running and re-raises: what arrived is on disk, a rerun does the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ase import Atoms
from mlipserve.protocol import RelaxOptions
from tqdm.auto import tqdm

from ..client import Client
from ..errors import MLIPServeError
from ..results import RelaxResult
from . import store
from .errors import EvalError


@dataclass
class _Job:
    model: str
    ids: list[str]
    job_id: str


def relax_missing(
    client: Client,
    atoms: Mapping[str, Atoms],
    models: Sequence[str],
    out: Path,
    options: RelaxOptions,
    *,
    job_size: int = 1000,
    in_flight: int = 2,
    progress: bool | None = None,
) -> dict[str, int]:
    """Relax every structure of ``atoms`` that a model of ``models`` has no record of; the number relaxed per model."""
    done = {model: store.read_results(out, model) for model in models}
    work = [
        (model, chunk) for model in models for chunk in _chunks([i for i in atoms if i not in done[model]], job_size)
    ]
    counts = dict.fromkeys(models, 0)
    if not work:
        return counts
    total = sum(len(chunk) for _, chunk in work)
    with contextlib.ExitStack() as stack:
        files = {model: stack.enter_context(store.appender(out, model)) for model in {m for m, _ in work}}
        bar = stack.enter_context(tqdm(total=total, unit="structure", desc="relaxing", disable=_disable(progress)))
        clock = _Clock()
        pending: deque[_Job] = deque()
        try:
            for model, chunk in work:
                # one model at a time, so that each model's time is its own: finish the previous model's jobs first
                while pending and (len(pending) >= in_flight or pending[-1].model != model):
                    _drain(client, pending[0], files[pending[0].model], clock, bar, counts)
                    pending.popleft()
                job_id = client.submit_job([atoms[i] for i in chunk], model=model, relax=options)
                pending.append(_Job(model, chunk, job_id))
            while pending:
                _drain(client, pending[0], files[pending[0].model], clock, bar, counts)
                pending.popleft()
        except BaseException:
            for job in pending:
                with contextlib.suppress(Exception):
                    client.cancel_job(job.job_id)
            raise
    return counts


def _drain(client: Client, job: _Job, file: TextIO, clock: _Clock, bar: tqdm, counts: dict[str, int]) -> None:
    """Read a job's results stream to its end, appending a record per structure."""
    bar.set_postfix_str(job.model)
    received = 0
    for material_id, result in zip(job.ids, client.job_results(job.job_id), strict=False):
        store.append(file, record(material_id, job.model, result, clock.lap()))
        received += 1
        counts[job.model] += 1
        bar.update(1)
    if received < len(job.ids):
        status = client.job(job.job_id)
        reason = status.get("error") or status["state"]
        raise EvalError(
            f"the server's job {job.job_id} ({job.model}) ended after {received} of {len(job.ids)}: {reason}"
        )


def record(material_id: str, model: str, result: Any, seconds: float) -> store.Record:
    """The stored form of one relaxation result (an error entry keeps its code and message)."""
    base: store.Record = {"id": material_id, "model": model, "seconds": round(seconds, 4)}
    if result.error is not None:
        return base | {"error": {"code": str(result.error.code), "message": result.error.message}}
    assert isinstance(result, RelaxResult), "a relaxation job answers with relaxation results"
    atoms = result.atoms
    return base | {
        "energy": result.energy,
        "n_atoms": len(atoms),
        "steps": result.steps,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "fmax": result.fmax,
        "structure": {
            "numbers": atoms.numbers.tolist(),
            "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(),
            "pbc": atoms.pbc.tolist(),
        },
        "error": None,
    }


def check_models(client: Client, models: Sequence[str]) -> None:
    """Refuse models the server does not serve, before any work starts."""
    try:
        served = {m["name"] for m in client.models() if m.get("served")}
    except MLIPServeError as error:
        raise EvalError(f"cannot reach the server at {client.settings.url}: {error}") from error
    if missing := [m for m in models if m not in served]:
        raise EvalError(
            f"{client.settings.url} does not serve {', '.join(missing)} (it serves {', '.join(sorted(served))})"
        )


class _Clock:
    """Seconds between consecutive results: each result's share of the run's wall time."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now, self.last = now, now()

    def lap(self) -> float:
        now = self.now()
        lap, self.last = now - self.last, now
        return lap


def _chunks(ids: list[str], size: int) -> list[list[str]]:
    return [ids[start : start + size] for start in range(0, len(ids), max(size, 1))]


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
