"""Every call of the clients as a plan (see :mod:`.effects`): how a list is split into requests, what each request
holds, how many go at once, when to retry, what the answers mean and how far the progress bar moves.

Nothing here touches the network: :class:`~.client.Client` and :class:`~.client.AsyncClient` run these plans over
their transports, and their methods take these methods' arguments and documentation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from ..errors import ErrorCode
from ..protocol import ALL_PROPERTIES, MDOptions, OptimizerName, Property, RelaxOptions
from ..protocol import FINAL_JOB_STATES as FINAL_STATES
from . import relaxing
from .effects import Call, Emit, Gather, Open, Plan, ReadLine, Reply, Send, Sleep, Stream, Upload, emitted
from .encoding import Chunk, as_list, chunked, encode_structure
from .errors import RequestFailed
from .jobs import JobStatus, check_finished, decode_line, finished, job_body, results_path, status_path, upload_fields
from .options import OUTPUTS, ClientSettings, ErrorMode, Output, StructureLike
from .progress import follow_job, progress_bar
from .relaxing import FixedAtoms
from .results import RelaxResult, Result, collect
from .retrying import failure, request, retry_delay

#: What stops run_job() (Ctrl-C in a sync client, cancelling the awaiting task in an async one): the job is
#: cancelled on the server before it propagates.
INTERRUPTS = (KeyboardInterrupt, asyncio.CancelledError)


class Planner:
    """The plans of one client's calls, under its :class:`ClientSettings`."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings

    def predict(
        self,
        structures: StructureLike | Sequence[StructureLike],
        properties: Sequence[Property] = ALL_PROPERTIES,
        *,
        model: str | None = None,
        errors: ErrorMode = "raise",
        progress: bool | None = None,
    ) -> Plan[list[Result] | Result]:
        """Energies (and forces, stresses) of one structure or a list, in order.

        ``errors="raise"`` raises :class:`StructureFailed` for the first structure the server could not evaluate;
        ``errors="return"`` returns it as a :class:`Result` whose ``error`` is set.
        """
        single, items = as_list(structures)
        encoded = [encode_structure(s) for s in items]
        chunks = list(chunked(encoded, self.settings.chunk_size, self.settings.chunk_atoms))
        with progress_bar(self.settings, len(items), progress) as bar:
            plans = [
                self._counted(bar, chunk, self._call("POST", "/v1/predict", json=self._body(chunk, properties, model)))
                for chunk in chunks
            ]
            payloads = yield Gather(plans, self.settings.concurrency)
        results = collect(chunks, payloads, errors, Result)
        return results[0] if single else results

    def relax(
        self,
        structures: StructureLike | Sequence[StructureLike],
        *,
        model: str | None = None,
        optimizer: OptimizerName = RelaxOptions.optimizer,
        fmax: float = RelaxOptions.fmax,
        max_steps: int = RelaxOptions.max_steps,
        relax_cell: bool = RelaxOptions.relax_cell,
        hydrostatic_strain: bool = RelaxOptions.hydrostatic_strain,
        scalar_pressure: float = RelaxOptions.scalar_pressure,
        trajectory_every: int = RelaxOptions.trajectory_every,
        max_grade: float | None = RelaxOptions.max_grade,
        fixed: FixedAtoms | None = None,
        output: Output = "result",
        errors: ErrorMode = "raise",
        progress: bool | None = None,
    ) -> Plan[Any]:
        """Relax one structure or a list on the server (FIRE, or ``optimizer="bfgs"``, on atoms and cell;
        matbench-discovery defaults).

        ``fixed`` gives each structure's fixed atom indices; by default they come from ase FixAtoms constraints.
        ``max_grade`` stops a relaxation whose uncertainty (MTP grade, ACE γ, committee spread) goes above it.
        Returns :class:`RelaxResult` objects (``output="result"``), ase.Atoms carrying the final energy, forces
        and stress (``"ase"``), or pymatgen Structures/Molecules (``"pymatgen"``), in input order. Lists longer
        than ``relaxing.RELAX_DIRECT_LIMIT`` go through a server-side job.
        """
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        options = RelaxOptions(
            optimizer=optimizer,
            fmax=fmax,
            max_steps=max_steps,
            relax_cell=relax_cell,
            hydrostatic_strain=hydrostatic_strain,
            scalar_pressure=scalar_pressure,
            trajectory_every=trajectory_every,
            max_grade=max_grade,
        )
        if isinstance(structures, (list, tuple)) and len(structures) > relaxing.RELAX_DIRECT_LIMIT:
            found = yield from self.run_job(
                structures, model=model, relax=options, fixed=fixed, errors=errors, progress=progress
            )
            return relaxing.converted(cast("list[RelaxResult]", found), output)
        single, items = as_list(structures)
        relaxing.check_fixed(items, fixed)
        fixed_atoms = relaxing.fixed_lists(items, fixed)
        chunks = relaxing.relax_chunks(items, self.settings.chunk_size, self.settings.chunk_atoms)
        with progress_bar(self.settings, len(items), progress) as bar:
            bodies = [relaxing.relax_body(chunk, fixed_atoms, options, self._model(model)) for chunk in chunks]
            plans = [  # no timeout: relaxations take long
                self._counted(bar, chunk, Call("POST", "/v1/relax", None, json=body))
                for chunk, body in zip(chunks, bodies, strict=True)
            ]
            payloads = yield Gather(plans, relaxing.RELAX_CONCURRENCY)
        results = relaxing.converted(collect(chunks, payloads, errors, RelaxResult), output)
        return results[0] if single else results

    def submit_job(
        self,
        structures: Sequence[StructureLike],
        properties: Sequence[Property] = ALL_PROPERTIES,
        *,
        model: str | None = None,
        relax: RelaxOptions | Mapping[str, Any] | None = None,
        fixed: FixedAtoms | None = None,
        md: MDOptions | Mapping[str, Any] | None = None,
    ) -> Plan[str]:
        """Start a server-side job on a (large) list of structures (``POST /v1/jobs``); return its id at once.

        With ``relax`` (a :class:`RelaxOptions`, or a dict of some of its fields, e.g. ``{"fmax": 0.05}``), the job
        relaxes them and its results are :class:`RelaxResult` objects; with ``md`` (:class:`MDOptions` or a dict,
        e.g. ``{"integrator": "langevin", "temperature_K": 300, "steps": 1000}``) it runs MD from each, and its
        results are :class:`MDResult` objects with their trajectories.
        """
        body = job_body(structures, properties, self._model(model), relax, fixed, md)
        status = yield from self._request("POST", "/v1/jobs", json=body)
        return cast(str, status["id"])

    def submit_job_file(
        self, path: str | Path, *, model: str | None = None, properties: Sequence[Property] = ALL_PROPERTIES
    ) -> Plan[str]:
        """Start a job on every frame of an extxyz file, uploaded as it is; return the job's id."""
        upload = Upload(Path(path), upload_fields(properties, self._model(model)))
        status = yield from self._request("POST", "/v1/jobs", upload=upload)
        return cast(str, status["id"])

    def job(self, job_id: str) -> Plan[JobStatus]:
        """A job's status: ``state``, ``total``, ``done``, ``errors``, ``error``, ``model_info``..."""
        return self._request("GET", status_path(job_id))

    def cancel_job(self, job_id: str) -> Plan[JobStatus]:
        """Cancel a job; returns its status (state ``cancelled``, or its final state if it had ended)."""
        return self._request("DELETE", status_path(job_id))

    def job_results(self, job_id: str) -> Stream[Result]:
        """A job's results in input order, as they become ready; ends when the job has ended.

        A cancelled or failed job yields its finished prefix only. A broken stream is resumed where it stopped.
        """
        status = yield from self.job(job_id)
        model = status["model_info"] or {}
        start, attempt = 0, 0
        while True:
            reply: Reply = yield Open(self._call("GET", results_path(job_id), params={"start": start}))
            if reply.ok:
                while isinstance(line := (yield ReadLine()), str):
                    if line:
                        index, result = decode_line(line, model)
                        start, attempt = index + 1, 0
                        yield Emit(result)
                if line is None:
                    return
                reply = line  # the connection broke: resume at ``start``
            delay = retry_delay(self.settings, attempt, reply)
            if delay is None:
                raise failure(self.settings, reply) from reply.error
            yield Sleep(delay)
            attempt += 1

    def run_job(
        self,
        structures: Sequence[StructureLike],
        properties: Sequence[Property] = ALL_PROPERTIES,
        *,
        model: str | None = None,
        relax: RelaxOptions | Mapping[str, Any] | None = None,
        fixed: FixedAtoms | None = None,
        md: MDOptions | Mapping[str, Any] | None = None,
        errors: ErrorMode = "raise",
        progress: bool | None = None,
        poll: float = 1.0,
    ) -> Plan[list[Result]]:
        """As :meth:`predict`, through a server-side job: submit, follow its progress every ``poll`` seconds, collect.

        Interrupting it (Ctrl-C; cancelling the awaiting task of an AsyncClient) cancels the job. A job that fails
        or is cancelled raises :class:`RequestFailed`.
        """
        job_id = yield from self.submit_job(structures, properties, model=model, relax=relax, fixed=fixed, md=md)
        try:
            with progress_bar(self.settings, len(structures), progress) as bar:
                while (status := (yield from self.job(job_id)))["state"] not in FINAL_STATES:
                    follow_job(bar, status)
                    yield Sleep(poll)
                follow_job(bar, status)
        except INTERRUPTS:
            yield from self.cancel_job(job_id)
            raise
        check_finished(status)
        results = yield from emitted(self.job_results(job_id))
        return finished(results, status, errors)

    def models(self) -> Plan[list[dict[str, Any]]]:
        """The server's models (``GET /v1/models``)."""
        answer = yield from self._request("GET", "/v1/models")
        return cast("list[dict[str, Any]]", answer["models"])

    def ready(self) -> Plan[bool]:
        """Whether every model the server hosts is loaded (``GET /readyz`` answers 200); False if unreachable."""
        reply: Reply = yield Send(self._call("GET", "/readyz"))
        return reply.status == 200

    def wait_until_ready(self, timeout: float = 300.0, interval: float = 0.5) -> Plan[None]:
        """Wait until ``/readyz`` answers 200; raise :class:`RequestFailed` at once when a model failed to load,
        or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            reply: Reply = yield Send(self._call("GET", "/readyz"))
            if reply.status == 200:
                return
            failed = _failed_models(reply)
            if failed:
                raise RequestFailed(reply.status, ErrorCode.MODEL_UNAVAILABLE, f"{self.settings.url}: {failed}")
            if time.monotonic() > deadline:
                raise RequestFailed(None, "not_ready", f"{self.settings.url} was not ready after {timeout} s")
            yield Sleep(interval)

    # -- the parts ------------------------------------------------------------------------------------------------

    def _model(self, model: str | None) -> str | None:
        return model or self.settings.model

    def _call(self, method: str, path: str, **fields: Any) -> Call:
        return Call(method, path, self.settings.timeout, **fields)

    def _request(self, method: str, path: str, **fields: Any) -> Plan[Any]:
        return request(self.settings, self._call(method, path, **fields))

    def _body(self, chunk: Chunk, properties: Sequence[Property], model: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"structures": chunk[1], "properties": list(properties)}
        if self._model(model):
            body["model"] = self._model(model)
        return body

    def _counted(self, bar: Any, chunk: Chunk, call: Call) -> Plan[Any]:
        """``call`` with retries; then the bar moves by the chunk's structures."""
        payload = yield from request(self.settings, call)
        bar.update(len(chunk[1]))
        return payload


def _failed_models(reply: Reply) -> str:
    """The models a ``/readyz`` answer says failed to load, with why (empty when none did)."""
    try:
        models = reply.json().get("models") or {}
    except (ValueError, AttributeError):
        return ""
    failed = [
        f"model {name!r} failed to load: {m.get('error')}" for name, m in models.items() if m["state"] == "failed"
    ]
    return "; ".join(failed)
