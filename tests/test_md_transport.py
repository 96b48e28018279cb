"""MD and NEB tasks, their progress and checkpoints through the brokers: the Redis codec, the embedded source, and
a real Redis (the tests' own redis-server), without a model: the test plays the worker."""

from __future__ import annotations

import asyncio
import threading
import time

import msgpack
import numpy as np
import pytest
import redis
from ase.build import bulk
from mlipserve.models.prediction import Prediction
from mlipserve.models.system import AtomicSystem
from mlipserve.server.config import RedisWorkerSettings
from mlipserve.server.dynamics.options import MDOptions, MDSpec, NEBOptions, NEBSpec
from mlipserve.server.dynamics.outcome import MDCheckpoint, MDFrame, MDOutcome, NEBOutcome, Progress
from mlipserve.server.engine.tasks import Task, TaskResult
from mlipserve.server.transport.embedded import EmbeddedBroker
from mlipserve.server.transport.redis import layout
from mlipserve.server.transport.redis.broker import RedisBroker
from mlipserve.server.transport.redis.codec import (
    decode_checkpoint,
    decode_progress,
    decode_result,
    decode_task,
    encode_checkpoint,
    encode_progress,
    encode_result,
    encode_task,
)
from mlipserve.server.transport.redis.source import RedisTaskSource
from redis.backoff import NoBackoff
from redis.retry import Retry

RNG = np.random.default_rng(11)


def argon(repeat: int = 2) -> AtomicSystem:
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (repeat, 1, 1)
    atoms.rattle(0.05, seed=3)
    return AtomicSystem.from_ase(atoms)


def checkpoint(step: int, n_atoms: int) -> MDCheckpoint:
    """A checkpoint with a live noise generator's state (128-bit integers) and a barostat-like integrator state."""
    generator = np.random.default_rng(2**40 + step)
    generator.normal(size=7)
    return MDCheckpoint(
        step=step,
        positions=RNG.normal(size=(n_atoms, 3)),
        velocities=RNG.normal(scale=0.01, size=(n_atoms, 3)),
        cell=np.diag([10.52, 5.26, 5.26]) + RNG.normal(scale=1e-3, size=(3, 3)),
        integrator_state={"eta": 0.1 + 1e-17 * step, "strain": [[1.0, 0.0, 1 / 3], [0.0, 2.0, 0.0]], "count": -5},
        rng_state=generator.bit_generator.state,
    )


def frame(step: int, n_atoms: int, periodic: bool = True) -> MDFrame:
    return MDFrame(
        step=step,
        time_fs=0.5 * step,
        positions=RNG.normal(size=(n_atoms, 3)),
        velocities=RNG.normal(scale=0.01, size=(n_atoms, 3)),
        cell=np.diag([10.52, 5.26, 5.26]),
        energy=float(RNG.normal()),
        kinetic_energy=float(RNG.random()),
        temperature=float(RNG.random() * 300),
        stress=RNG.normal(size=(3, 3)) if periodic else None,
    )


def same_bits(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and np.asarray(a, dtype="<f8").tobytes() == np.asarray(b, dtype="<f8").tobytes()


def same_checkpoint(a: MDCheckpoint, b: MDCheckpoint) -> bool:
    arrays = all(same_bits(getattr(a, name), getattr(b, name)) for name in ("positions", "velocities", "cell"))
    return arrays and a.step == b.step and a.integrator_state == b.integrator_state and a.rng_state == b.rng_state


def same_frame(a: MDFrame, b: MDFrame) -> bool:
    arrays = ("positions", "velocities", "cell", "stress")
    scalars = ("step", "time_fs", "energy", "kinetic_energy", "temperature")
    same_arrays = all(same_bits(getattr(a, name), getattr(b, name)) for name in arrays)
    return same_arrays and all(getattr(a, name) == getattr(b, name) for name in scalars)


def md_task(task_id: str, model: str = "lj-argon", resume: MDCheckpoint | None = None) -> Task:
    system = argon()
    options = MDOptions(integrator="csvr", timestep_fs=0.5, steps=40, temperature_K=120.0, trajectory_every=5)
    velocities = RNG.normal(scale=0.01, size=(system.n_atoms, 3))
    spec = MDSpec(options, seed=2**32 - 1, velocities=velocities, fixed=np.array([0, 3]), resume=resume)
    return Task(task_id, model, system, ("energy", "forces", "stress"), md=spec)


# --- the codec -----------------------------------------------------------------------------------------------


def test_md_task_round_trip_is_bit_for_bit() -> None:
    task = md_task("md-1", resume=checkpoint(20, 8))
    back, reply_to = decode_task(encode_task(task, "replies:x"))
    assert reply_to == "replies:x" and back.id == task.id and back.properties == task.properties
    assert back.relax is None and back.neb is None and back.select is None
    assert back.md is not None and task.md is not None
    assert back.md.options == task.md.options and back.md.seed == 2**32 - 1
    assert same_bits(back.md.velocities, task.md.velocities)
    assert back.md.fixed is not None and back.md.fixed.tolist() == [0, 3] and back.md.fixed.dtype == np.int64
    assert back.md.resume is not None and same_checkpoint(back.md.resume, task.md.resume)
    assert same_bits(back.system.positions, task.system.positions)
    # a fresh run: no velocities, no fixed atoms, no checkpoint
    plain = Task("md-2", "m", argon(), ("energy",), md=MDSpec(MDOptions(), seed=0))
    back, _ = decode_task(encode_task(plain, "r"))
    assert back.md == plain.md


def test_checkpoint_restores_the_noise_generator() -> None:
    saved = checkpoint(7, 4)
    assert saved.rng_state is not None and saved.rng_state["state"]["state"] >= 2**64  # beyond msgpack's ints
    restored = decode_checkpoint(encode_checkpoint(saved))
    assert same_checkpoint(restored, saved)
    first, second = np.random.default_rng(), np.random.default_rng()
    first.bit_generator.state = saved.rng_state
    second.bit_generator.state = restored.rng_state
    assert first.normal(size=5).tobytes() == second.normal(size=5).tobytes()


def test_neb_task_round_trip() -> None:
    initial = argon()
    final = AtomicSystem.from_arrays(initial.numbers, initial.positions + 0.3, initial.cell, initial.pbc)
    middle = AtomicSystem.from_arrays(initial.numbers, initial.positions + 0.15, initial.cell, initial.pbc)
    options = NEBOptions(images=3, interpolation="linear", climb=False, spring_constant=0.2, max_steps=17)
    task = Task("neb-1", "m", initial, ("energy", "forces"), neb=NEBSpec(options, final, (middle,), np.array([2])))
    back, _ = decode_task(encode_task(task, "r"))
    assert back.md is None and back.neb is not None
    assert back.neb.options == options and back.neb.fixed is not None and back.neb.fixed.tolist() == [2]
    assert same_bits(back.neb.final.positions, final.positions) and same_bits(back.neb.final.cell, final.cell)
    assert len(back.neb.intermediates) == 1 and same_bits(back.neb.intermediates[0].positions, middle.positions)
    assert back.n_atoms == task.n_atoms == initial.n_atoms
    without = Task("neb-2", "m", initial, ("energy",), neb=NEBSpec(NEBOptions(), final))
    back, _ = decode_task(encode_task(without, "r"))
    assert back.neb is not None and back.neb.intermediates == () and back.neb.fixed is None
    assert back.n_atoms == initial.n_atoms * NEBOptions().images


def test_old_messages_decode_as_before() -> None:
    """A task and a result written without the new parts (as before MD) decode with none of them."""
    system = argon()
    old_task = {"id": "t", "model": "m", "reply": "r", "props": ["energy"]}
    old_task |= {"z": system.numbers.astype("<i4").tobytes(), "pos": system.positions.astype("<f8").tobytes()}
    old_task |= {"cell": system.cell.astype("<f8").tobytes(), "pbc": [True] * 3}
    task, _ = decode_task(msgpack.packb(old_task))
    assert task.md is None and task.neb is None and not task.in_flight
    assert set(msgpack.unpackb(encode_task(task, "r"))) == set(old_task)  # and are written as before
    old_result = {"id": "t", "worker": None, "e": 1.5, "f": None, "s": None}
    result = decode_result(msgpack.packb(old_result))
    assert result.md is None and result.neb is None and result.prediction is not None
    assert msgpack.unpackb(encode_result(result)) == old_result


def test_md_and_neb_results_round_trip() -> None:
    system = argon()
    prediction = Prediction(energy=-0.25, forces=RNG.normal(size=(system.n_atoms, 3)), stress=RNG.normal(size=(3, 3)))
    outcome = MDOutcome(
        system=system,
        velocities=RNG.normal(scale=0.01, size=(system.n_atoms, 3)),
        steps=40,
        stop_reason="completed",
        time_fs=20.0,
        kinetic_energy=0.0123456789,
        temperature=117.3,
        seed=2**32 - 1,
    )
    back = decode_result(encode_result(TaskResult("md-1", prediction, md=outcome)))
    assert back.md is not None and back.neb is None and back.prediction is not None
    assert same_bits(back.prediction.forces, prediction.forces) and back.prediction.energy == prediction.energy
    assert same_bits(back.md.velocities, outcome.velocities) and same_bits(back.md.system.positions, system.positions)
    assert (back.md.steps, back.md.stop_reason, back.md.time_fs, back.md.seed) == (40, "completed", 20.0, 2**32 - 1)
    assert (back.md.kinetic_energy, back.md.temperature) == (outcome.kinetic_energy, outcome.temperature)

    images = [AtomicSystem.from_arrays(system.numbers, system.positions + 0.1 * i, system.cell) for i in range(4)]
    neb = NEBOutcome(images, [0.0, 0.31, 0.52, 0.1], [0.0, 0.04, 0.03, 0.0], 88, True, "converged", 0.04)
    back = decode_result(encode_result(TaskResult("neb-1", prediction, neb=neb)))
    assert back.neb is not None and back.md is None
    assert all(same_bits(a.positions, b.positions) for a, b in zip(back.neb.images, images, strict=True))
    assert back.neb.energies == neb.energies and back.neb.image_fmax == neb.image_fmax
    assert (back.neb.steps, back.neb.converged, back.neb.stop_reason, back.neb.fmax) == (88, True, "converged", 0.04)
    assert back.neb.saddle_index == 2 and back.neb.barrier_forward == pytest.approx(0.52)


def test_progress_round_trip() -> None:
    both = Progress("md-1", frame=frame(10, 8), checkpoint=checkpoint(10, 8))
    back = decode_progress(encode_progress(both))
    assert back.task_id == "md-1" and back.frame is not None and back.checkpoint is not None
    assert same_frame(back.frame, both.frame) and same_checkpoint(back.checkpoint, both.checkpoint)
    molecule = Progress("md-2", frame=frame(3, 2, periodic=False))
    back = decode_progress(encode_progress(molecule))
    assert back.checkpoint is None and back.frame is not None and back.frame.stress is None
    assert same_frame(back.frame, molecule.frame)
    saved = Progress("md-3", checkpoint=checkpoint(5, 2))
    back = decode_progress(encode_progress(saved))
    assert back.frame is None and back.checkpoint is not None and same_checkpoint(back.checkpoint, saved.checkpoint)


# --- the embedded broker -------------------------------------------------------------------------------------


def test_embedded_frames_reach_the_handler_in_order_before_the_result() -> None:
    """A worker thread reports frames (one repeated, as a resumed run does; checkpoints alone; a stranger's frame)
    and delivers the result: the handler gets each step once, in order, all before the result."""
    broker = EmbeddedBroker(timeout=10)
    source = broker.source("lj-argon")
    seen: list[Progress] = []  # checked after the run: the broker logs a handler's exceptions, and goes on
    frames = {step: frame(step, 8) for step in range(0, 45, 5)}

    def work() -> None:
        [task] = source.fetch(4, timeout=5)
        for step, recorded in frames.items():
            items = [Progress(task.id, frame=recorded)]
            if step == 20:
                items += [Progress(task.id, checkpoint=checkpoint(20, 8)), Progress("nobody", frame=frame(20, 8))]
            if step == 30:  # a resumed run reports steps 25 and 30 again
                items += [Progress(task.id, frame=frames[25]), Progress(task.id, frame=frames[30])]
            source.report(items)
        source.deliver([TaskResult(task.id, Prediction(energy=1.0))])

    async def run() -> list[TaskResult]:
        worker = threading.Thread(target=work)
        submitted = asyncio.ensure_future(broker.submit([md_task("md-1")], on_progress=seen.append))
        await asyncio.sleep(0.05)
        worker.start()
        try:
            return await submitted
        finally:
            worker.join(5)

    [result] = asyncio.run(run())
    assert result.task_id == "md-1" and result.ok
    assert [(item.task_id, item.frame.step) for item in seen if item.frame] == [("md-1", step) for step in frames]
    assert all(item.frame is frames[item.frame.step] for item in seen if item.frame)
    assert not broker._handlers and not broker._last_step  # forgotten with the request
    assert not source.held and not source.checkpoints


def test_embedded_task_handed_back_resumes_from_its_checkpoint() -> None:
    broker = EmbeddedBroker(timeout=10)
    source = broker.source("lj-argon")
    saved = [checkpoint(10, 8), checkpoint(20, 8)]

    async def run() -> tuple[list[TaskResult], list[Task]]:
        submitted = asyncio.ensure_future(broker.submit([md_task("md-1"), md_task("md-2")]))
        await asyncio.sleep(0.05)
        first = source.fetch(4, timeout=1)
        assert [task.md.resume for task in first if task.md] == [None, None]
        source.report([Progress("md-1", checkpoint=saved[0]), Progress("md-1", checkpoint=saved[1])])
        source.hand_back(["md-1", "md-2"])  # the worker stops with both unfinished
        assert broker._queued == 2
        again = source.fetch(4, timeout=1)
        source.deliver([TaskResult(task.id, Prediction(energy=0.0)) for task in again])
        return await submitted, again

    results, again = asyncio.run(run())
    assert [result.task_id for result in results] == ["md-1", "md-2"]
    resumed = {task.id: task.md.resume for task in again if task.md}
    assert resumed["md-1"] is saved[1] and resumed["md-2"] is None  # the latest checkpoint; none saved for md-2
    assert not source.checkpoints and not source.held and broker._queued == 0


# --- Redis -----------------------------------------------------------------------------------------------------


def redis_source(url: str, model: str, consumer: str, claim_idle: float = 60.0) -> RedisTaskSource:
    settings = RedisWorkerSettings(redis_url=url, model=model, claim_idle=claim_idle)
    source = RedisTaskSource(redis.Redis.from_url(url), settings, consumer=consumer)
    source.ensure_group()
    return source


def test_redis_checkpoint_follows_a_reclaimed_task_and_goes_with_its_result(redis_url: str) -> None:
    """Worker A takes an MD task, reports a frame and two checkpoints and dies; worker B reclaims the task with the
    latest checkpoint attached; B's result deletes it."""
    model = "md-reclaim"
    client = redis.Redis.from_url(redis_url)
    reply_to = layout.reply_stream("md-reclaim-server")
    dead, survivor = redis_source(redis_url, model, "dead"), redis_source(redis_url, model, "survivor", 0.05)
    client.xadd(dead.stream, {"m": encode_task(md_task("md-1", model), reply_to)})
    client.xadd(dead.stream, {"m": encode_task(Task("plain", model, argon(), ("energy",)), reply_to)})
    taken = dead.fetch(4, timeout=0.5)
    assert [task.id for task in taken] == ["md-1", "plain"] and taken[0].md and taken[0].md.resume is None
    sent, saved = frame(5, 8), [checkpoint(5, 8), checkpoint(10, 8)]
    dead.report([Progress("md-1", frame=sent, checkpoint=saved[0]), Progress("md-1", checkpoint=saved[1])])
    key = layout.checkpoint_key("md-1")
    assert 0 < client.ttl(key) <= layout.CHECKPOINT_TTL
    assert same_checkpoint(decode_checkpoint(client.get(key)), saved[1])
    [(_, fields)] = client.xrange(reply_to)
    assert set(fields) == {b"p"}  # a progress message, told apart from results
    progress = decode_progress(fields[b"p"])
    assert progress.task_id == "md-1" and progress.checkpoint is None and same_frame(progress.frame, sent)

    time.sleep(0.1)  # "dead" never acknowledges: its tasks go idle
    reclaimed = {task.id: task for task in survivor.fetch(4, timeout=0.1)}
    assert set(reclaimed) == {"md-1", "plain"} and reclaimed["plain"].md is None
    resumed = reclaimed["md-1"].md
    assert resumed is not None and resumed.resume is not None and same_checkpoint(resumed.resume, saved[1])
    assert same_bits(resumed.velocities, taken[0].md.velocities)
    survivor.deliver([TaskResult(task_id, Prediction(energy=1.0)) for task_id in reclaimed])
    assert not client.exists(key)
    kinds = [set(fields) for _, fields in client.xrange(reply_to)]
    assert kinds == [{b"p"}, {b"m"}, {b"m"}]


def test_redis_handed_back_task_resumes(redis_url: str) -> None:
    """A draining worker hands an MD task back: the next worker reads it as a new entry, with the checkpoint."""
    model = "md-hand-back"
    client = redis.Redis.from_url(redis_url)
    first, second = redis_source(redis_url, model, "first"), redis_source(redis_url, model, "second")
    client.xadd(first.stream, {"m": encode_task(md_task("md-1", model), layout.reply_stream("s"))})
    [task] = first.fetch(1, timeout=0.5)
    saved = checkpoint(30, 8)
    first.report([Progress(task.id, checkpoint=saved)])
    first.hand_back([task.id])
    [again] = second.fetch(1, timeout=0.5)
    assert again.md is not None and again.md.resume is not None and same_checkpoint(again.md.resume, saved)
    second.report([Progress("md-1", frame=frame(35, 8)), Progress("not-held", checkpoint=saved)])
    assert not client.exists(layout.checkpoint_key("not-held"))  # progress of a task not held here is dropped
    second.deliver([TaskResult("md-1", Prediction(energy=1.0))])
    assert not client.exists(layout.checkpoint_key("md-1")) and client.xlen(first.stream) == 0


def test_redis_progress_kept_while_redis_is_unreachable(redis_url: str) -> None:
    """report() never raises: the frames wait and go out before the result once Redis answers."""
    model = "md-outage"
    client = redis.Redis.from_url(redis_url)
    reply_to = layout.reply_stream("md-outage-server")
    source = redis_source(redis_url, model, "w")
    client.xadd(source.stream, {"m": encode_task(md_task("md-1", model), reply_to)})
    [task] = source.fetch(1, timeout=0.5)
    working = source.redis
    source.redis = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))  # nobody there
    source.report([Progress(task.id, frame=frame(0, 8)), Progress(task.id, frame=frame(5, 8))])
    with pytest.raises(redis.ConnectionError):
        source.raise_if_unreachable()
    assert len(source.unreported) == 2
    source.redis = working
    source.deliver([TaskResult(task.id, Prediction(energy=1.0))])
    entries = client.xrange(reply_to)
    assert [decode_progress(fields[b"p"]).frame.step for _, fields in entries[:2]] == [0, 5]
    assert set(entries[2][1]) == {b"m"} and not source.unreported and not source.held


def test_redis_broker_hands_frames_to_the_handler(redis_url: str) -> None:
    """RedisBroker end to end with a test-side worker: frames in order and each once, then the result."""
    model = "md-broker"
    seen: list[Progress] = []
    frames = [frame(step, 8) for step in (0, 5, 10, 5, 10, 15)]  # resumed after step 10 from a checkpoint at 0

    def work() -> None:
        source = redis_source(redis_url, model, "w")
        deadline = time.monotonic() + 10
        while not (tasks := source.fetch(1, timeout=0.2)):
            assert time.monotonic() < deadline
        [task] = tasks
        for item in frames:
            source.report([Progress(task.id, frame=item, checkpoint=checkpoint(item.step, 8))])
        source.deliver([TaskResult(task.id, Prediction(energy=2.0))])

    async def run() -> list[TaskResult]:
        broker = RedisBroker(redis_url, timeout=30)
        await broker.start()
        worker = threading.Thread(target=work)
        worker.start()
        try:
            return await broker.submit([md_task("md-1", model)], on_progress=seen.append)
        finally:
            await broker.close()
            worker.join(10)

    [result] = asyncio.run(run())
    assert result.ok and result.prediction is not None and result.prediction.energy == 2.0
    assert [(item.task_id, item.frame.step) for item in seen if item.frame] == [("md-1", s) for s in (0, 5, 10, 15)]
    assert all(same_frame(item.frame, frames[i]) for item, i in zip(seen, (0, 1, 2, 5), strict=True) if item.frame)
    assert not redis.Redis.from_url(redis_url).exists(layout.checkpoint_key("md-1"))


def test_redis_md_task_starts_afresh_when_its_checkpoint_cannot_be_read(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis goes away between taking a task and reading its checkpoint: the task is run from its start (the same
    seed: the same run) rather than lost while held, and the worker loop hears of the outage."""
    model = "md-unread"
    client = redis.Redis.from_url(redis_url)
    source = redis_source(redis_url, model, "w")
    client.xadd(source.stream, {"m": encode_task(md_task("md-1", model), layout.reply_stream("s"))})
    client.set(layout.checkpoint_key("md-1"), encode_checkpoint(checkpoint(10, 8)))
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    monkeypatch.setattr(source.redis, "pipeline", unreachable.pipeline)
    [task] = source.fetch(1, timeout=0.5)
    assert task.id == "md-1" and task.md is not None and task.md.resume is None and "md-1" in source.held
    with pytest.raises(redis.ConnectionError):
        source.raise_if_unreachable()
