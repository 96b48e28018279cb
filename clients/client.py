"""Python clients for the mlipserve HTTP API: :class:`Client` (sync) and :class:`AsyncClient`.

Both take lists of ase.Atoms or pymatgen structures, split them into requests the server accepts, send several
requests at once so the server can batch them, retry on 503 with backoff, and show a progress bar.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from tqdm.auto import tqdm

from . import jobs, relaxing
from .encoding import chunked, encode_structure
from .results import RequestFailed, Result, collect

DEFAULT_URL = "http://127.0.0.1:8000"
ALL_PROPERTIES = ("energy", "forces", "stress")
RETRY_STATUSES = {502, 503, 504}


class _Settings:
    """Options shared by the sync and async clients.

    ``model``: default model of requests; ``timeout``: seconds per request; ``chunk_size``/``chunk_atoms``: most
    structures/atoms per request; ``concurrency``: requests in flight; ``retries``/``backoff``: on 503 and
    connection errors, doubling from ``backoff`` seconds (or the server's Retry-After); ``progress``: tqdm bar
    (None shows it on a terminal).
    """

    def __init__(
        self,
        url: str,
        model: str | None,
        *,
        timeout: float = 600.0,
        chunk_size: int = 64,
        chunk_atoms: int = 20_000,
        concurrency: int = 4,
        retries: int = 8,
        backoff: float = 0.5,
        progress: bool | None = None,
    ):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.chunk_atoms = chunk_atoms
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.progress = progress

    def body(self, chunk: list[dict], properties: Sequence[str], model: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"structures": chunk, "properties": list(properties)}
        if model or self.model:
            body["model"] = model or self.model
        return body

    def retry_delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before trying again, or None when this answer is final."""
        retryable = response is None or response.status_code in RETRY_STATUSES
        if not retryable or attempt >= self.retries:
            return None
        if response is not None and "Retry-After" in response.headers:
            try:
                return float(response.headers["Retry-After"])
            except ValueError:
                pass
        return self.backoff * 2**attempt * (0.5 + random.random())

    def outcome(self, response: httpx.Response | None, error: httpx.TransportError | None) -> dict[str, Any]:
        """The JSON body of a final answer, or the error it stands for."""
        if response is None:
            raise RequestFailed(None, "unreachable", f"{self.url}: {error}") from error
        _raise_for(response)
        return response.json()

    def progress_bar(self, total: int, progress: bool | None):
        show = self.progress if progress is None else progress
        return tqdm(total=total, unit="structure", desc="mlipserve", disable=None if show is None else not show)


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500]
    raise RequestFailed(response.status_code, code, message)


def _relax_options(arguments: dict[str, Any]) -> dict[str, Any]:
    """The relaxation options among a relax() call's arguments, as the request body names them."""
    names = ("fmax", "max_steps", "relax_cell", "hydrostatic_strain", "scalar_pressure", "trajectory_every")
    return {name: arguments[name] for name in names}


def _prepare(structures: Any, chunk_size: int, chunk_atoms: int) -> tuple[bool, list[tuple[int, list[dict]]], int]:
    single = not isinstance(structures, (list, tuple))
    encoded = [encode_structure(s) for s in ([structures] if single else structures)]
    return single, list(chunked(encoded, chunk_size, chunk_atoms)), len(encoded)


class Client:
    """Synchronous client; options as described in :class:`_Settings`.

    >>> from ase.build import bulk
    >>> with Client("http://127.0.0.1:8000", model="7net-0") as client:  # doctest: +SKIP
    ...     result = client.predict(bulk("Si"))
    ...     result.energy, result.forces.shape, result.stress.shape
    """

    def __init__(self, url: str = DEFAULT_URL, model: str | None = None, **options: Any):
        self.settings = _Settings(url, model, **options)
        self._http = httpx.Client(base_url=self.settings.url, timeout=self.settings.timeout)

    def predict(
        self,
        structures: Any,
        properties: Sequence[str] = ALL_PROPERTIES,
        *,
        model: str | None = None,
        errors: str = "raise",
        progress: bool | None = None,
    ) -> list[Result] | Result:
        """Energies (and forces, stresses) of one structure or a list, in order.

        ``errors="raise"`` raises :class:`StructureFailed` for the first structure the server could not evaluate;
        ``errors="return"`` returns it as a :class:`Result` whose ``error`` is set.
        """
        single, chunks, total = _prepare(structures, self.settings.chunk_size, self.settings.chunk_atoms)
        with self.settings.progress_bar(total, progress) as bar:

            def send(chunk: tuple[int, list[dict]]) -> dict[str, Any]:
                payload = self._post("/v1/predict", self.settings.body(chunk[1], properties, model))
                bar.update(len(chunk[1]))
                return payload

            with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
                payloads = list(pool.map(send, chunks))
        results = collect(chunks, payloads, errors)
        return results[0] if single else results

    def relax(
        self,
        structures: Any,
        *,
        model: str | None = None,
        fmax: float = 0.05,
        max_steps: int = 500,
        relax_cell: bool = True,
        hydrostatic_strain: bool = False,
        scalar_pressure: float = 0.0,
        trajectory_every: int = 0,
        fixed: Sequence[Sequence[int] | None] | None = None,
        output: str = "result",
        errors: str = "raise",
        progress: bool | None = None,
    ) -> Any:
        """Relax one structure or a list on the server (FIRE on atoms and cell; matbench-discovery defaults).

        ``fixed`` gives each structure's fixed atom indices; by default they come from ase FixAtoms constraints.
        Returns :class:`RelaxResult` objects (``output="result"``), ase.Atoms carrying the final energy, forces
        and stress (``"ase"``), or pymatgen Structures/Molecules (``"pymatgen"``), in input order.
        """
        options = _relax_options(locals())
        if isinstance(structures, (list, tuple)) and len(structures) > relaxing.RELAX_DIRECT_LIMIT:
            found = self.run_job(structures, model=model, relax=options, fixed=fixed, errors=errors, progress=progress)
            return relaxing.converted(found, output)
        single, chunks, fixed_lists, total = relaxing.relax_chunks(
            structures, fixed, self.settings.chunk_size, self.settings.chunk_atoms
        )
        with self.settings.progress_bar(total, progress) as bar:

            def send(chunk: tuple[int, list[dict]]) -> dict[str, Any]:
                body = relaxing.relax_body(chunk, fixed_lists, options, model or self.settings.model)
                payload = self._request("POST", "/v1/relax", json=body, timeout=None)  # relaxations take long
                bar.update(len(chunk[1]))
                return payload

            with ThreadPoolExecutor(max_workers=relaxing.RELAX_CONCURRENCY) as pool:
                payloads = list(pool.map(send, chunks))
        results = relaxing.relax_results(chunks, payloads, errors, output)
        return results[0] if single else results

    def submit_job(
        self,
        structures: Sequence[Any],
        properties: Sequence[str] = ALL_PROPERTIES,
        *,
        model: str | None = None,
        relax: dict[str, Any] | None = None,
        fixed: Sequence[Sequence[int] | None] | None = None,
    ) -> str:
        """Start a server-side job on a (large) list of structures (``POST /v1/jobs``); return its id at once.

        With ``relax`` (a dict of :meth:`relax`'s options, e.g. ``{"fmax": 0.05}``), the job relaxes them and its
        results are :class:`RelaxResult` objects.
        """
        body = jobs.job_body(structures, properties, model, self.settings, relax, fixed)
        return self._post("/v1/jobs", body)["id"]

    def submit_job_file(
        self, path: str | Path, *, model: str | None = None, properties: Sequence[str] = ALL_PROPERTIES
    ) -> str:
        """Start a job on every frame of an extxyz file, uploaded as it is; return the job's id."""
        with open(path, "rb") as handle:
            fields = jobs.upload_fields(properties, model, self.settings)
            return self._request("POST", "/v1/jobs", files=jobs.upload_file(path, handle), data=fields)["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's status: ``state``, ``total``, ``done``, ``errors``, ``error``, ``model_info``..."""
        return self._request("GET", f"/v1/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; returns its status (state ``cancelled``, or its final state if it had ended)."""
        return self._request("DELETE", f"/v1/jobs/{job_id}")

    def job_results(self, job_id: str) -> Iterator[Result]:
        """A job's results in input order, as they become ready; ends when the job has ended.

        A cancelled or failed job yields its finished prefix only. A broken stream is resumed where it stopped.
        """
        model = self.job(job_id)["model_info"] or {}
        start, attempt = 0, 0
        while True:
            response, error = None, None
            try:
                with self._http.stream("GET", jobs.results_path(job_id), params={"start": start}) as response:
                    if response.is_success:
                        for line in response.iter_lines():
                            if line:
                                index, result = jobs.decode_line(line, model)
                                start, attempt = index + 1, 0
                                yield result
                        return
                    response.read()
            except httpx.TransportError as transport_error:
                response, error = None, transport_error
            delay = self.settings.retry_delay(attempt, response)
            if delay is None:
                self.settings.outcome(response, error)  # raises
                return
            time.sleep(delay)
            attempt += 1

    def run_job(
        self,
        structures: Sequence[Any],
        properties: Sequence[str] = ALL_PROPERTIES,
        *,
        model: str | None = None,
        relax: dict[str, Any] | None = None,
        fixed: Sequence[Sequence[int] | None] | None = None,
        errors: str = "raise",
        progress: bool | None = None,
        poll: float = 1.0,
    ) -> list[Result]:
        """As :meth:`predict`, through a server-side job: submit, follow its progress every ``poll`` seconds, collect.

        Interrupting it (Ctrl-C) cancels the job. A job that fails or is cancelled raises :class:`RequestFailed`.
        """
        job_id = self.submit_job(structures, properties, model=model, relax=relax, fixed=fixed)
        try:
            with self.settings.progress_bar(len(structures), progress) as bar:
                while (status := self.job(job_id))["state"] not in jobs.FINAL_STATES:
                    jobs.show_progress(bar, status)
                    time.sleep(poll)
                jobs.show_progress(bar, status)
        except KeyboardInterrupt:
            self.cancel_job(job_id)
            raise
        jobs.check_finished(status)
        return jobs.collect(list(self.job_results(job_id)), status, errors)

    def models(self) -> list[dict[str, Any]]:
        """The server's models (``GET /v1/models``)."""
        return self._request("GET", "/v1/models")["models"]

    def ready(self) -> bool:
        """Whether every model the server hosts is loaded."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_until_ready(self, timeout: float = 300.0, interval: float = 0.5) -> None:
        """Block until ``/readyz`` answers 200, or raise after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RequestFailed(None, "not_ready", f"{self.settings.url} was not ready after {timeout} s")
            time.sleep(interval)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, json=body)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in itertools.count():
            response, error = None, None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as transport_error:
                error = transport_error
            delay = self.settings.retry_delay(attempt, response)
            if delay is None:
                return self.settings.outcome(response, error)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient:
    """Asynchronous client with the same options and results as :class:`Client`."""

    def __init__(self, url: str = DEFAULT_URL, model: str | None = None, **options: Any):
        self.settings = _Settings(url, model, **options)
        self._http = httpx.AsyncClient(base_url=self.settings.url, timeout=self.settings.timeout)

    async def predict(
        self,
        structures: Any,
        properties: Sequence[str] = ALL_PROPERTIES,
        *,
        model: str | None = None,
        errors: str = "raise",
        progress: bool | None = None,
    ) -> list[Result] | Result:
        """As :meth:`Client.predict`."""
        single, chunks, total = _prepare(structures, self.settings.chunk_size, self.settings.chunk_atoms)
        limit = asyncio.Semaphore(self.settings.concurrency)
        with self.settings.progress_bar(total, progress) as bar:

            async def send(chunk: tuple[int, list[dict]]) -> dict[str, Any]:
                async with limit:
                    payload = await self._request(
                        "POST", "/v1/predict", json=self.settings.body(chunk[1], properties, model)
                    )
                bar.update(len(chunk[1]))
                return payload

            payloads = await asyncio.gather(*(send(chunk) for chunk in chunks))
        results = collect(chunks, list(payloads), errors)
        return results[0] if single else results

    async def relax(
        self,
        structures: Any,
        *,
        model: str | None = None,
        fmax: float = 0.05,
        max_steps: int = 500,
        relax_cell: bool = True,
        hydrostatic_strain: bool = False,
        scalar_pressure: float = 0.0,
        trajectory_every: int = 0,
        fixed: Sequence[Sequence[int] | None] | None = None,
        output: str = "result",
        errors: str = "raise",
        progress: bool | None = None,
    ) -> Any:
        """As :meth:`Client.relax`."""
        options = _relax_options(locals())
        if isinstance(structures, (list, tuple)) and len(structures) > relaxing.RELAX_DIRECT_LIMIT:
            found = await self.run_job(
                structures, model=model, relax=options, fixed=fixed, errors=errors, progress=progress
            )
            return relaxing.converted(found, output)
        single, chunks, fixed_lists, total = relaxing.relax_chunks(
            structures, fixed, self.settings.chunk_size, self.settings.chunk_atoms
        )
        limit = asyncio.Semaphore(relaxing.RELAX_CONCURRENCY)
        with self.settings.progress_bar(total, progress) as bar:

            async def send(chunk: tuple[int, list[dict]]) -> dict[str, Any]:
                body = relaxing.relax_body(chunk, fixed_lists, options, model or self.settings.model)
                async with limit:
                    payload = await self._request("POST", "/v1/relax", json=body, timeout=None)
                bar.update(len(chunk[1]))
                return payload

            payloads = await asyncio.gather(*(send(chunk) for chunk in chunks))
        results = relaxing.relax_results(chunks, list(payloads), errors, output)
        return results[0] if single else results

    async def models(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/v1/models"))["models"]

    async def submit_job(
        self,
        structures: Sequence[Any],
        properties: Sequence[str] = ALL_PROPERTIES,
        *,
        model: str | None = None,
        relax: dict[str, Any] | None = None,
        fixed: Sequence[Sequence[int] | None] | None = None,
    ) -> str:
        """As :meth:`Client.submit_job`."""
        body = jobs.job_body(structures, properties, model, self.settings, relax, fixed)
        return (await self._request("POST", "/v1/jobs", json=body))["id"]

    async def submit_job_file(
        self, path: str | Path, *, model: str | None = None, properties: Sequence[str] = ALL_PROPERTIES
    ) -> str:
        """As :meth:`Client.submit_job_file` (the file is read into memory first)."""
        content = Path(path).read_bytes()
        fields = jobs.upload_fields(properties, model, self.settings)
        return (await self._request("POST", "/v1/jobs", files=jobs.upload_file(path, content), data=fields))["id"]

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/v1/jobs/{job_id}")

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"/v1/jobs/{job_id}")

    async def job_results(self, job_id: str) -> AsyncIterator[Result]:
        """As :meth:`Client.job_results`."""
        model = (await self.job(job_id))["model_info"] or {}
        start, attempt = 0, 0
        while True:
            response, error = None, None
            try:
                async with self._http.stream("GET", jobs.results_path(job_id), params={"start": start}) as response:
                    if response.is_success:
                        async for line in response.aiter_lines():
                            if line:
                                index, result = jobs.decode_line(line, model)
                                start, attempt = index + 1, 0
                                yield result
                        return
                    await response.aread()
            except httpx.TransportError as transport_error:
                response, error = None, transport_error
            delay = self.settings.retry_delay(attempt, response)
            if delay is None:
                self.settings.outcome(response, error)  # raises
                return
            await asyncio.sleep(delay)
            attempt += 1

    async def run_job(
        self,
        structures: Sequence[Any],
        properties: Sequence[str] = ALL_PROPERTIES,
        *,
        model: str | None = None,
        relax: dict[str, Any] | None = None,
        fixed: Sequence[Sequence[int] | None] | None = None,
        errors: str = "raise",
        progress: bool | None = None,
        poll: float = 1.0,
    ) -> list[Result]:
        """As :meth:`Client.run_job`; cancelling the awaiting task cancels the job."""
        job_id = await self.submit_job(structures, properties, model=model, relax=relax, fixed=fixed)
        try:
            with self.settings.progress_bar(len(structures), progress) as bar:
                while (status := await self.job(job_id))["state"] not in jobs.FINAL_STATES:
                    jobs.show_progress(bar, status)
                    await asyncio.sleep(poll)
                jobs.show_progress(bar, status)
        except asyncio.CancelledError:
            await asyncio.shield(self.cancel_job(job_id))
            raise
        jobs.check_finished(status)
        return jobs.collect([result async for result in self.job_results(job_id)], status, errors)

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in itertools.count():
            response, error = None, None
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as transport_error:
                error = transport_error
            delay = self.settings.retry_delay(attempt, response)
            if delay is None:
                return self.settings.outcome(response, error)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
