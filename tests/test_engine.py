"""The engine's round (schedule → execute → update), the optimizer registry and the brokers' waiting."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import get_args

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from mlipserve.errors import ErrorCode
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics import relaxation
from mlipserve.server.dynamics.optimizers import OPTIMIZERS, make_optimizer
from mlipserve.server.dynamics.options import OptimizerName, RelaxOptions, RelaxSpec
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.loop import Worker
from mlipserve.server.engine.tasks import Task
from mlipserve.server.transport.base import TimedOut, Unavailable
from mlipserve.server.transport.embedded import EmbeddedBroker

from .test_graph_and_worker import ListSource, argon_cluster, argon_crystal
from .toy_potential import LennardJonesPotential

counter = itertools.count()


class RecordingPotential(LennardJonesPotential):
    """The toy model, remembering the properties of every batch it was asked for and its size."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[tuple[str, ...], int]] = []

    def predict_batch(self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ()):
        self.asked.append((tuple(sorted(properties)), len(systems)))
        return super().predict_batch(systems, properties)


def make_task(atoms: Atoms, properties: tuple[str, ...], relax: RelaxOptions | None = None) -> Task:
    spec = None if relax is None else RelaxSpec(relax)
    return Task(f"t{next(counter)}", "toy-lj", AtomicSystem.from_ase(atoms), properties, spec)


def test_a_batch_computes_only_what_its_tasks_asked_for() -> None:
    """Energy-only tasks run in a forward pass of their own; the others share one with the relaxation geometry."""
    tasks = [
        make_task(argon_crystal(1), ("energy",)),
        make_task(argon_crystal(2), ("energy", "forces", "stress")),
        make_task(argon_crystal(3), ("energy",)),
        make_task(argon_crystal(4, (1, 1, 1)), (), RelaxOptions(max_steps=5)),
    ]
    potential = RecordingPotential()
    source = ListSource(tasks)
    worker = Worker(potential, source, BatchPolicy(max_atoms=10_000, max_wait=0.0, idle_poll=0.01))
    worker.step()
    assert sorted(potential.asked) == [(("energy",), 2), (("energy", "forces", "stress"), 2)]
    by_id = {result.task_id: result for result in source.delivered}
    assert all(by_id[t.id].ok for t in tasks[:3])
    assert "forces" not in tasks[0].properties and by_id[tasks[1].id].prediction.forces is not None


def test_one_deformation_per_relaxation_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cell's matrix exponential runs once per round, shared by the geometry and the cell forces."""
    calls = []
    real = relaxation.deformation
    monkeypatch.setattr(relaxation, "deformation", lambda log_strain: calls.append(1) or real(log_strain))
    tasks = [make_task(argon_crystal(seed, (1, 1, 1)), (), RelaxOptions(max_steps=4)) for seed in range(3)]
    source = ListSource(tasks)
    worker = Worker(LennardJonesPotential(), source, BatchPolicy(max_atoms=10_000, max_wait=0.0, idle_poll=0.01))
    rounds = 0
    while len(source.delivered) < len(tasks):
        worker.step()
        rounds += 1
    assert rounds == 5 and len(calls) == rounds  # steps 0..4 evaluated, one expm each


def test_optimizers_are_looked_up_by_name() -> None:
    assert set(OPTIMIZERS) == set(get_args(OptimizerName))
    assert make_optimizer("fire").owner.shape == (0,)
    assert make_optimizer("bfgs").owner.shape == (0,)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; known: bfgs, fire"):
        make_optimizer("lbfgs")


def test_a_relaxation_goes_through_the_registry_optimizer() -> None:
    """The relaxation set steps with the optimizer its options name (FIRE's first step: dt² F, capped at maxstep)."""
    atoms = argon_cluster()
    atoms.positions[0] += 0.05
    group = relaxation.RelaxationSet("fire")
    group.add("a", AtomicSystem.from_ase(atoms), RelaxSpec(RelaxOptions(relax_cell=False)))
    [(_, system)] = group.systems()
    [prediction] = LennardJonesPotential().predict([system])
    group.advance({"a": prediction})
    [(_, moved)] = group.systems()
    step, forces = moved.positions - system.positions, prediction.forces
    scale = np.vdot(step, forces) / np.vdot(forces, forces)
    np.testing.assert_allclose(step, scale * forces, atol=1e-12)
    assert 0 < scale <= 0.1**2 and np.linalg.norm(step) == pytest.approx(min(0.2, 0.01 * np.linalg.norm(forces)))


def run(coroutine):
    return asyncio.run(coroutine)


def test_embedded_broker_times_out_and_drops_what_nobody_waits_for() -> None:
    """Embedded mode has Redis mode's request timeout; a task whose request went away is never evaluated."""
    broker = EmbeddedBroker(timeout=0.2)
    task = make_task(bulk("Ar", "fcc", a=1.6), ("energy",))
    with pytest.raises(TimedOut) as raised:
        run(broker.submit([task]))
    assert raised.value.code is ErrorCode.TIMEOUT
    assert broker.source("toy-lj").fetch(10, 0.0) == []  # dequeued, not handed to a worker


def test_embedded_broker_refuses_beyond_its_queue_limit() -> None:
    broker = EmbeddedBroker(queue_limit=1, timeout=0.2)
    tasks = [make_task(bulk("Ar", "fcc", a=1.6), ("energy",)) for _ in range(2)]
    with pytest.raises(Unavailable) as raised:
        run(broker.submit(tasks))
    assert raised.value.code is ErrorCode.QUEUE_FULL and raised.value.retry_after == 1.0
