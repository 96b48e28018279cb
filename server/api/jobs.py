"""Asynchronous jobs: large sets of structures evaluated in the background, their results streamed in order.

A job holds the structures of one ``POST /v1/jobs`` (a JSON list, or the frames of an uploaded extxyz file). Its
runner decodes and validates them in a thread, slice by slice, and submits the good ones to the broker in chunks,
several chunks in flight at once so that the workers stay busy while other requests still get their turn in the
queue. Each structure's result entry is kept, serialised, until the job is forgotten ``job_ttl`` seconds after it
ended. Jobs live in this process's memory: they do not survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from ...errors import ErrorCode
from ...models.cards import ModelCard
from ..dynamics.options import MDOptions, RelaxOptions
from ..dynamics.outcome import Progress
from ..engine.tasks import Task, TaskResult
from ..keys import ApiKey, Scope
from ..logs import JOB_ID
from ..quotas import JOB_LEASE_SECONDS
from ..transport.base import BrokerError, ModelStatus, TimedOut
from .context import AppState
from .errors import RequestError, StructureError
from .ingest import MD_PROPERTIES, RELAX_PROPERTIES, base_seed, prepare_md_tasks, prepare_tasks
from .observe import utc_iso
from .render import Trajectories, md_entry, model_info, result_entry
from .structures import read_frames

log = logging.getLogger(__name__)

#: Structures decoded per thread call, and (at most) per broker submission.
CHUNK_STRUCTURES = 64
#: Chunks of one job submitted to the broker and not yet answered.
CHUNKS_IN_FLIGHT = 4
#: The same for relaxation jobs: small chunks, since a chunk's results are recorded when all of them have ended,
#: and many in flight, since the workers relax every structure they hold at once.
RELAX_CHUNK_STRUCTURES, RELAX_CHUNKS_IN_FLIGHT = 4, 64
#: How long a chunk the broker refuses with 503 (queue full, no worker...) is retried before the job fails, seconds.
RETRY_FOR = 600.0
#: First and longest wait between those retries, seconds (a Retry-After from the broker takes precedence).
RETRY_FIRST_DELAY, RETRY_MAX_DELAY = 0.5, 15.0
#: The Retry-After of a job refused because its key has too many unfinished jobs, seconds.
JOB_RETRY_AFTER = 30.0


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


FINAL_STATES = frozenset({JobState.DONE, JobState.CANCELLED, JobState.FAILED})


class JobFailed(Exception):
    """The job as a whole cannot go on; the message becomes the job's ``error``."""


@dataclass(eq=False)
class Job:
    """One job's progress and results. Mutated only on the event loop."""

    id: str
    model: str
    properties: tuple[str, ...]
    total: int | None = None
    #: For a relaxation job: its options, and each structure's fixed atoms (or None).
    relax: RelaxOptions | None = None
    fixed: Sequence[Sequence[int] | None] | None = field(default=None, repr=False)
    #: For an MD job: its options, and the seed of its first structure (structure i runs with ``seed + i``).
    md: MDOptions | None = None
    seed: int = 0
    state: JobState = JobState.QUEUED
    #: Structures with a result entry, and those of them that are error entries.
    done: int = 0
    errors: int = 0
    created: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    #: The ``model`` block of a /v1/predict response; refined with the worker's dtype and device once known.
    model_info: dict[str, str] | None = None
    #: One NDJSON line per structure, in input order; None until its result arrives.
    lines: list[bytes | None] = field(default_factory=list, repr=False)
    #: Length of the prefix of ``lines`` that is complete (what a results stream may send).
    ready: int = 0
    #: Whether ``model_info`` names the dtype and device of a worker that evaluated this job's structures.
    worker_known: bool = False
    #: The name of the API key that made the job (None on a server without keys); only it (or admin) sees it.
    owner: str | None = None
    #: Whether result lines carry per-atom uncertainty (the request's ``"uncertainty": "per_atom"``).
    uncertainty_per_atom: bool = False
    runner: asyncio.Task[None] | None = field(default=None, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def status(self) -> dict[str, Any]:
        """The body of ``GET /v1/jobs/{id}``."""
        return {
            "id": self.id,
            "model": self.model,
            "kind": self.kind,
            "state": self.state.value,
            "total": self.total,
            "done": self.done,
            "errors": self.errors,
            "created": utc_iso(self.created),
            "finished": None if self.finished is None else utc_iso(self.finished),
            "error": self.error,
            "model_info": self.model_info,
        }

    @property
    def kind(self) -> str:
        """What the job does: predict, relax or md."""
        return "relax" if self.relax is not None else "md" if self.md is not None else "predict"

    @property
    def in_flight(self) -> bool:
        """Whether its structures run for many rounds on the workers (a relaxation or MD run)."""
        return self.relax is not None or self.md is not None

    def start(self, total: int) -> None:
        self.total = total
        self.lines = [None] * total
        self._notify()

    def record(self, entries: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Keep the result entries ``(index, entry)`` of one chunk and count them as done."""
        for index, entry in entries:
            self.lines[index] = orjson.dumps({"index": index, **entry}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
            self.errors += "error" in entry
        self.done += len(entries)
        while self.ready < len(self.lines) and self.lines[self.ready] is not None:
            self.ready += 1
        self._notify()

    def finish(self, state: JobState, error: str | None = None) -> None:
        if self.final:
            return
        self.state, self.error, self.finished = state, error, time.time()
        self._notify()

    async def changed(self) -> None:
        """Return at the next change of progress or state."""
        await self._changed.wait()

    def _notify(self) -> None:
        # Wake every waiter once: waiters hold the old event, later waiters get a fresh one.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def stream(self, start: int = 0, max_lines: int = 256) -> AsyncIterator[bytes]:
        """NDJSON lines from ``start`` on, in input order, as they become ready, until the job has ended."""
        position = max(start, 0)
        while True:
            if position < self.ready:
                end = min(self.ready, position + max_lines)
                yield b"".join(self.lines[position:end])  # type: ignore[arg-type]
                position = end
            elif self.final:
                return
            else:
                await self.changed()


class JobManager:
    """Holds this server's jobs and runs each one as an asyncio task; works with any :class:`~.broker.Broker`."""

    def __init__(self, state: AppState, retry_for: float = RETRY_FOR):
        self.state = state
        self.retry_for = retry_for
        self._jobs: dict[str, Job] = {}
        #: Unfinished jobs holding a slot of their key's ``max_jobs``: job id -> key name.
        self._slots: dict[str, str] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def create(
        self,
        card: ModelCard,
        status: ModelStatus,
        properties: tuple[str, ...],
        load: Callable[[], Awaitable[Sequence[Any]]],
        total: int | None = None,
        relax: RelaxOptions | None = None,
        fixed: Sequence[Sequence[int] | None] | None = None,
        key: ApiKey | None = None,
        md: MDOptions | None = None,
    ) -> Job:
        """Start a job on the structures that ``load`` returns (awaited by the runner, so it may decode a file).

        With ``relax``, the job relaxes them (``fixed``: each structure's fixed atoms) instead of evaluating them;
        with ``md``, it runs MD from each (structure i with seed ``md.seed + i``, or a drawn seed + i).
        The job belongs to ``key``, and takes one of its ``max_jobs`` slots (429 ``too_many_jobs`` when none is free).
        """
        self.forget_expired()
        properties = RELAX_PROPERTIES if relax is not None else MD_PROPERTIES if md is not None else properties
        job = Job(id=uuid.uuid4().hex, model=card.name, properties=properties, total=total, relax=relax, fixed=fixed)
        if md is not None:
            job.md, job.seed = md, base_seed(md)
        job.owner = None if key is None else key.name
        if key is not None and key.max_jobs is not None:
            await self._take_slot(job, key)
        job.model_info = model_info(card, status)
        self._jobs[job.id] = job
        job.runner = asyncio.create_task(self._run(job, card, status, load), name=f"mlipserve-job-{job.id}")
        if job.id in self._slots:  # freed however the runner ends, even cancelled before it started
            job.runner.add_done_callback(lambda _: asyncio.ensure_future(self._free_slot(job.id)))
        return job

    def get(self, job_id: str, key: ApiKey | None = None) -> Job:
        """The job, when ``key`` may see it: its own, or any with scope admin (404 otherwise, as for no job)."""
        self.forget_expired()
        job = self._jobs.get(job_id)
        if job is None or (key is not None and job.owner != key.name and not key.allows(Scope.ADMIN)):
            message = f"no job {job_id!r} on this server (finished jobs are kept for a limited time)"
            raise RequestError(404, ErrorCode.UNKNOWN_JOB, message)
        return job

    async def _take_slot(self, job: Job, key: ApiKey) -> None:
        assert key.max_jobs is not None
        if not await self.state.auth.quotas.start_job(key.name, job.id, key.max_jobs):
            message = (
                f"the key {key.name!r} has {key.max_jobs} unfinished job(s), its limit: wait for one to end or "
                "cancel one (DELETE /v1/jobs/{id})"
            )
            raise RequestError(429, ErrorCode.TOO_MANY_JOBS, message, retry_after=JOB_RETRY_AFTER)
        self._slots[job.id] = key.name
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_slots(), name="mlipserve-job-slots")

    async def _free_slot(self, job_id: str) -> None:
        name = self._slots.pop(job_id, None)
        if name is not None:
            with contextlib.suppress(BrokerError):  # Redis away: the slot's lease runs out by itself
                await self.state.auth.quotas.end_job(name, job_id)

    async def _renew_slots(self) -> None:
        """Renew the leases of this replica's job slots until none is held."""
        while self._slots:
            await asyncio.sleep(JOB_LEASE_SECONDS / 3)
            by_key: dict[str, list[str]] = {}
            for job_id, name in self._slots.items():
                by_key.setdefault(name, []).append(job_id)
            for name, job_ids in by_key.items():
                with contextlib.suppress(BrokerError):
                    await self.state.auth.quotas.renew_jobs(name, job_ids)

    def cancel(self, job: Job) -> None:
        """Stop submitting the job's structures; chunks already submitted may still run on the workers."""
        if job.final:
            return
        job.finish(JobState.CANCELLED)
        if job.runner is not None:
            job.runner.cancel()

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel every running job (at shutdown) and free their slots."""
        runners = [job.runner for job in self._jobs.values() if not job.final and job.runner is not None]
        for job in list(self._jobs.values()):
            self.cancel(job)
        if runners:
            await asyncio.wait(runners, timeout=timeout)
        for job_id in list(self._slots):
            await self._free_slot(job_id)
        if self._renewer is not None:
            self._renewer.cancel()

    def recent(self, limit: int = 50) -> list[Job]:
        """The jobs held, newest first, at most ``limit``."""
        return sorted(self._jobs.values(), key=lambda job: job.created, reverse=True)[:limit]

    def states(self) -> list[str]:
        """The state of every job held."""
        return [job.state.value for job in self._jobs.values()]

    def forget_expired(self) -> None:
        cutoff = time.time() - self.state.settings.job_ttl
        expired = [job.id for job in self._jobs.values() if job.finished is not None and job.finished < cutoff]
        for job_id in expired:
            del self._jobs[job_id]

    async def _run(
        self, job: Job, card: ModelCard, status: ModelStatus, load: Callable[[], Awaitable[Sequence[Any]]]
    ) -> None:
        JOB_ID.set(job.id)  # this runner's own context: its log lines name the job
        in_flight: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []
        slots = asyncio.Semaphore(RELAX_CHUNKS_IN_FLIGHT if job.in_flight else CHUNKS_IN_FLIGHT)

        def chunk_ended(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        try:
            job.state = JobState.RUNNING
            structures = await load()
            if job.final:
                return
            job.start(len(structures))
            for start in range(0, len(structures), CHUNK_STRUCTURES):
                part = structures[start : start + CHUNK_STRUCTURES]
                prepared = await anyio.to_thread.run_sync(self._prepare, job, start, part, card)
                if job.final:  # cancelled while decoding: nothing more is submitted
                    return
                rejected = [(i, {"error": item.as_dict()}) for i, item in prepared if isinstance(item, StructureError)]
                if rejected:
                    job.record(rejected)
                for chunk in self._split(job, [(i, item) for i, item in prepared if isinstance(item, Task)]):
                    await slots.acquire()
                    if failures:
                        raise failures[0]
                    if job.final:
                        return
                    task = asyncio.create_task(self._submit_chunk(job, chunk, card, status))
                    in_flight.add(task)
                    task.add_done_callback(chunk_ended)
            if in_flight:
                await asyncio.wait(set(in_flight))
            if failures:
                raise failures[0]
            job.finish(JobState.DONE)
        except JobFailed as error:
            job.finish(JobState.FAILED, str(error))
        except asyncio.CancelledError:
            job.finish(JobState.CANCELLED)
            raise
        except Exception as error:  # a bug or a broken broker: the job must not stay 'running' forever
            log.exception("job %s failed", job.id)
            job.finish(JobState.FAILED, f"{type(error).__name__}: {error}")
        finally:
            for task in list(in_flight):
                task.cancel()

    def _prepare(
        self, job: Job, start: int, structures: Sequence[Any], card: ModelCard
    ) -> list[tuple[int, Task | StructureError]]:
        """Decode and validate structures ``start, start + 1, ...`` exactly as /v1/predict (or /v1/relax) does."""
        fixed = None if job.fixed is None else job.fixed[start : start + len(structures)]
        limits = self.state.settings.limits
        if job.md is not None:
            prepared = prepare_md_tasks(structures, card, limits, job.md, job.seed, start, fixed=fixed)
            return list(enumerate(prepared, start))
        prepared = prepare_tasks(structures, card, job.properties, limits, start, relax=job.relax, fixed=fixed)
        return list(enumerate(prepared, start))

    def _split(self, job: Job, tasks: list[tuple[int, Task]]) -> Iterator[list[tuple[int, Task]]]:
        """Chunks within the chunk size, the per-request atom limit and a share of the broker's queue limit."""
        settings = self.state.settings
        if not job.in_flight:
            size = max(1, min(CHUNK_STRUCTURES, settings.queue_limit // CHUNKS_IN_FLIGHT))
        else:
            size = max(1, min(RELAX_CHUNK_STRUCTURES, settings.queue_limit // RELAX_CHUNKS_IN_FLIGHT))
        limit = settings.max_atoms_per_request
        chunk: list[tuple[int, Task]] = []
        atoms = 0
        for item in tasks:
            n = item[1].n_atoms
            if chunk and (len(chunk) >= size or atoms + n > limit):
                yield chunk
                chunk, atoms = [], 0
            chunk.append(item)
            atoms += n
        if chunk:
            yield chunk

    async def _submit_chunk(
        self, job: Job, chunk: list[tuple[int, Task]], card: ModelCard, status: ModelStatus
    ) -> None:
        trajectories = Trajectories() if job.md is not None and job.md.trajectory_every > 0 else None
        results = await self._submit([task for _, task in chunk], trajectories.add if trajectories else None)
        if job.final:
            return
        if not job.worker_known and any(result.worker for result in results):
            job.model_info, job.worker_known = model_info(card, status, results), True
        if job.md is not None:
            frames = trajectories or Trajectories()
            job.record(
                [
                    (index, md_entry(result, index, task.n_atoms, job.uncertainty_per_atom, frames.of(result.task_id)))
                    for (index, task), result in zip(chunk, results, strict=True)
                ]
            )
            return
        job.record(
            [
                (index, result_entry(result, index, task.n_atoms, job.properties, job.uncertainty_per_atom))
                for (index, task), result in zip(chunk, results, strict=True)
            ]
        )

    async def _submit(
        self, tasks: list[Task], on_progress: Callable[[Progress], Any] | None = None
    ) -> list[TaskResult]:
        """Submit to the broker, retrying with backoff while it is unavailable (queue full, no worker...).

        ``on_progress`` gets what the tasks report (MD frames), keyed by the task ids of the results."""
        started = time.monotonic()
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                return await self.state.submit(tasks, on_progress)
            except BrokerError as error:
                wait = min(error.retry_after or delay, RETRY_MAX_DELAY)
                waited = time.monotonic() - started
                if isinstance(error, TimedOut) or waited + wait > self.retry_for:
                    suffix = (
                        "" if isinstance(error, TimedOut) else f" (still refused after retrying for {waited:.0f} s)"
                    )
                    raise JobFailed(f"{error.code}: {error.message}{suffix}") from None
                log.info("broker refused a job chunk (%s); retrying in %.1f s", error.code, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                tasks = [dataclasses.replace(task, id=uuid.uuid4().hex) for task in tasks]


def read_extxyz_frames(text: str, limit: int) -> list[dict[str, Any]]:
    """Every frame of an extxyz file, as request structures; JobFailed when unreadable or above ``limit``."""
    try:
        frames = read_frames(text, "extxyz")
    except ValueError as error:
        raise JobFailed(f"{ErrorCode.UNPARSABLE_TEXT}: could not read the extxyz file: {error}") from None
    if not frames:
        raise JobFailed(f"{ErrorCode.NO_STRUCTURES}: the extxyz file holds no structures")
    if len(frames) > limit:
        raise JobFailed(
            f"{ErrorCode.TOO_MANY_STRUCTURES}: the file holds {len(frames)} structures, more than this server's "
            f"limit of {limit} per job"
        )
    return [
        {"numbers": atoms.numbers, "positions": atoms.positions, "cell": atoms.cell.array, "pbc": atoms.pbc}
        for atoms in frames
    ]
