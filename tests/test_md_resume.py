"""An MD run survives its worker: `mlipserve worker` SIGKILLed mid-run, another worker takes the task over and
resumes it from the last checkpoint, and the run ends exactly where an uninterrupted one does (NVE, float64
Lennard-Jones argon of the pair family), with every frame answered once. In embedded mode, a run released by its
worker and handed back resumes the same way."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
from ase.build import bulk
from mlipserve.models.loading import load_model
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.options import MDOptions, MDSpec
from mlipserve.server.dynamics.outcome import Progress
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.loop import Worker
from mlipserve.server.engine.tasks import Task, TaskResult
from mlipserve.server.transport.embedded import EmbeddedBroker
from mlipserve.server.transport.redis import layout
from mlipserve.server.transport.redis.broker import RedisBroker
from mlipserve.server.transport.redis.codec import decode_checkpoint

from .conftest import REPO
from .redis_fixtures import WorkerProcess

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_pair import install

MODEL = "lj-argon"
STEPS, TRAJECTORY_EVERY, CHECKPOINT_EVERY = 600, 25, 50
#: The worker is killed once it has reported a frame this far into the run (a few checkpoints saved).
KILL_AT = 200
#: Seconds before a live worker takes over the task of one that stopped answering.
CLAIM_IDLE = 2.0


class RecordingBroker(RedisBroker):
    """The Redis broker, keeping every frame it reads (before it drops the repeats of a resumed run)."""

    def __init__(self, url: str):
        super().__init__(url, timeout=240)
        self.raw: list[tuple[str, int]] = []

    def _report(self, progress: Progress) -> None:
        if progress.frame is not None:
            self.raw.append((progress.task_id, progress.frame.step))
        super()._report(progress)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lj")
    install(folder, MODEL)
    return folder


def md_task(task_id: str, steps: int = STEPS) -> Task:
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    velocities = np.random.default_rng(2).normal(scale=0.002, size=(len(atoms), 3))  # Å/fs: about 200 K
    options = MDOptions(
        integrator="nve",
        timestep_fs=2.0,
        steps=steps,
        trajectory_every=TRAJECTORY_EVERY,
        checkpoint_every=CHECKPOINT_EVERY,
    )
    spec = MDSpec(options, seed=5, velocities=velocities)
    return Task(task_id, MODEL, AtomicSystem.from_ase(atoms), ("energy", "forces", "stress"), md=spec)


async def wait_until(what: str, condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.01)


def test_md_run_resumes_on_another_worker_after_a_kill(redis_url: str, model_dir: Path) -> None:
    pytest.importorskip("mlipserve.server.dynamics.md")
    client = redis.Redis.from_url(redis_url)
    extra = ("--claim-idle", str(CLAIM_IDLE))
    workers: list[WorkerProcess] = []

    async def run() -> tuple[RecordingBroker, dict[str, list[Progress]], TaskResult, TaskResult, int]:
        broker = RecordingBroker(redis_url)
        await broker.start()
        frames: dict[str, list[Progress]] = {"interrupted": [], "straight": []}
        try:
            workers.append(WorkerProcess(MODEL, redis_url, model_dir, *extra))
            interrupted = asyncio.ensure_future(broker.submit([md_task("interrupted")], frames["interrupted"].append))
            await wait_until("a first frame", lambda: frames["interrupted"], timeout=120)
            workers.append(WorkerProcess(MODEL, redis_url, model_dir, *extra))  # loads while the first one runs
            at_kill = frames["interrupted"]
            await wait_until(f"a frame past step {KILL_AT}", lambda: at_kill[-1].frame.step >= KILL_AT, timeout=60)
            workers[0].kill()
            assert not interrupted.done(), f"the run ended before the kill: make STEPS ({STEPS}) larger"
            saved = client.get(layout.checkpoint_key("interrupted"))
            assert saved is not None, "no checkpoint saved before the kill"
            resumed_from = decode_checkpoint(saved).step
            # the same run from the start, on the survivor (alongside the resumed one)
            [second] = await broker.submit([md_task("straight")], frames["straight"].append)
            [first] = await interrupted
            return broker, frames, first, second, resumed_from
        finally:
            await broker.close()
            for worker in workers:
                worker.stop()

    broker, frames, interrupted, straight, resumed_from = asyncio.run(run())
    assert interrupted.ok and straight.ok, (interrupted.error_message, straight.error_message)
    assert interrupted.md is not None and straight.md is not None
    assert KILL_AT - CHECKPOINT_EVERY <= resumed_from < STEPS and resumed_from % CHECKPOINT_EVERY == 0
    assert interrupted.md.steps == straight.md.steps == STEPS and interrupted.md.stop_reason == "completed"
    np.testing.assert_allclose(interrupted.md.system.positions, straight.md.system.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(interrupted.md.velocities, straight.md.velocities, rtol=0, atol=1e-10)
    assert interrupted.prediction is not None and straight.prediction is not None
    assert interrupted.prediction.energy == pytest.approx(straight.prediction.energy, abs=1e-10)

    # every frame answered once, in order, and the same as the uninterrupted run's
    expected = list(range(0, STEPS + 1, TRAJECTORY_EVERY))
    for name in ("interrupted", "straight"):
        assert [item.frame.step for item in frames[name] if item.frame] == expected, name
    for a, b in zip(frames["interrupted"], frames["straight"], strict=True):
        assert a.frame is not None and b.frame is not None
        np.testing.assert_allclose(a.frame.positions, b.frame.positions, rtol=0, atol=1e-10)
    # the second worker resumed (it never reported step 0 again) from the checkpoint, not from the start
    raw = [step for task_id, step in broker.raw if task_id == "interrupted"]
    assert raw.count(0) == 1 and max(raw.count(step) for step in raw) <= 2
    drops = [i for i in range(1, len(raw)) if raw[i] <= raw[i - 1]]
    assert len(drops) <= 1 and all(raw[i] >= resumed_from for i in drops)
    assert not client.exists(layout.checkpoint_key("interrupted"))
    assert client.xlen(layout.task_stream(MODEL)) == 0


def test_embedded_run_handed_back_resumes_from_its_checkpoint(model_dir: Path) -> None:
    """A worker thread runs an MD task; a few rounds after its first checkpoint the worker releases it (as a
    stopping worker does) and the source takes it back; it resumes from the checkpoint and ends where the same run
    does uninterrupted, each frame handed to the request once and in order."""
    pytest.importorskip("mlipserve.server.dynamics.md")
    steps = 200
    broker = EmbeddedBroker(timeout=120)
    source = broker.source(MODEL)
    potential = load_model(ModelRegistry(model_dir), MODEL, "cpu")
    worker = Worker(potential, source, BatchPolicy(max_atoms=512, idle_poll=0.05))
    resumed: list[Task] = []
    fetch = source.fetch

    def fetch_and_note(max_tasks: int, timeout: float) -> list[Task]:
        tasks = fetch(max_tasks, timeout)
        resumed.extend(task for task in tasks if task.md is not None and task.md.resume is not None)
        return tasks

    source.fetch = fetch_and_note  # type: ignore[method-assign]

    def work(stop: threading.Event) -> None:
        rounds_after_checkpoint = None
        while not stop.is_set():
            worker.step()
            if rounds_after_checkpoint is None and "interrupted" in source.checkpoints:
                rounds_after_checkpoint = 0
            elif rounds_after_checkpoint is not None:
                rounds_after_checkpoint += 1
                if rounds_after_checkpoint == 7:
                    source.hand_back(worker.release())

    frames: dict[str, list[Progress]] = {"interrupted": [], "straight": []}

    async def run() -> list[TaskResult]:
        stop = threading.Event()
        thread = threading.Thread(target=work, args=(stop,))
        thread.start()
        try:
            interrupted = broker.submit([md_task("interrupted", steps)], frames["interrupted"].append)
            return [*await interrupted, *await broker.submit([md_task("straight", steps)], frames["straight"].append)]
        finally:
            stop.set()
            thread.join(10)

    interrupted, straight = asyncio.run(run())
    assert [task.id for task in resumed] == ["interrupted"]
    checkpoint = resumed[0].md.resume if resumed[0].md else None
    assert checkpoint is not None and checkpoint.step == CHECKPOINT_EVERY
    assert interrupted.md is not None and straight.md is not None and interrupted.md.steps == steps
    np.testing.assert_allclose(interrupted.md.system.positions, straight.md.system.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(interrupted.md.velocities, straight.md.velocities, rtol=0, atol=1e-10)
    expected = list(range(0, steps + 1, TRAJECTORY_EVERY))
    for name in ("interrupted", "straight"):
        assert [item.frame.step for item in frames[name] if item.frame] == expected, name
    last = frames["interrupted"][-1].frame
    assert last is not None and np.array_equal(last.positions, interrupted.md.system.positions)
    assert not source.held and not source.checkpoints
