"""The batched graph, the atom-budget batcher and the worker loop, checked with a Lennard-Jones toy model."""

from __future__ import annotations

import itertools
import queue

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.options import RelaxOptions, RelaxSpec
from mlipserve.server.engine.batching import AtomBudgetBatcher, BatchPolicy
from mlipserve.server.engine.loop import Worker
from mlipserve.server.engine.tasks import Task, TaskResult

from .toy_potential import LennardJonesPotential, lj_reference


def argon_crystal(seed: int, repeat=(2, 2, 2)) -> Atoms:
    atoms = bulk("Ar", "fcc", a=1.6, cubic=True) * repeat
    atoms.rattle(0.04, seed=seed)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * np.random.default_rng(seed).normal(size=(3, 3))), True)
    return atoms


def argon_cluster() -> Atoms:
    cluster = bulk("Ar", "fcc", a=1.6, cubic=True) * (2, 2, 1)
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    return cluster


def slab() -> Atoms:
    atoms = argon_crystal(5)
    atoms.pbc = [True, True, False]
    atoms.cell[2] *= 3
    return atoms


def test_batched_graph_reproduces_ase_lennard_jones() -> None:
    """Crystals (triclinic, with images beyond the first shell), a slab and a cluster in one batch."""
    structures = [argon_crystal(1), argon_crystal(2, (1, 1, 1)), slab(), argon_cluster()]
    potential = LennardJonesPotential()
    predictions = potential.predict([AtomicSystem.from_ase(a) for a in structures])
    for atoms, prediction in zip(structures, predictions, strict=True):
        energy, forces, stress = lj_reference(atoms)
        assert prediction.energy == pytest.approx(energy, rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(prediction.forces, forces, atol=1e-9)
        if stress is None:
            assert prediction.stress is None
        else:
            np.testing.assert_allclose(prediction.stress, stress, atol=1e-9)


class ListSource:
    """A TaskSource over a plain queue, as the embedded broker's is, recording what was delivered."""

    def __init__(self, tasks: list[Task]):
        self.queue: queue.Queue[Task] = queue.Queue()
        for task in tasks:
            self.queue.put(task)
        self.delivered: list[TaskResult] = []

    def fetch(self, max_tasks: int, timeout: float) -> list[Task]:
        tasks = []
        while len(tasks) < max_tasks:
            try:
                tasks.append(self.queue.get(timeout=timeout) if not tasks else self.queue.get_nowait())
            except queue.Empty:
                break
        return tasks

    def deliver(self, results: list[TaskResult]) -> None:
        self.delivered.extend(results)


counter = itertools.count()


def task(atoms: Atoms) -> Task:
    system = AtomicSystem.from_ase(atoms)
    return Task(id=f"t{next(counter)}", model="toy-lj", system=system, properties=("energy", "forces", "stress"))


def test_batcher_respects_the_atom_budget_and_order() -> None:
    sizes = [4, 4, 8, 32, 2, 2, 2]
    tasks = [task(Atoms(f"Ar{n}", positions=np.arange(3 * n).reshape(n, 3) * 2.0)) for n in sizes]
    batcher = AtomBudgetBatcher(ListSource(tasks), BatchPolicy(max_atoms=16, max_wait=0.0, idle_poll=0.01))
    batches = []
    while batch := batcher.next_batch():
        batches.append([t.n_atoms for t in batch])
    assert batches == [[4, 4, 8], [32], [2, 2, 2]]


def test_batcher_holds_at_most_one_fetch_of_tasks_it_cannot_batch_yet() -> None:
    """A full batch stops taking tasks: what a worker holds unbatched, other workers cannot take."""
    tasks = [task(Atoms("Ar16", positions=np.arange(48).reshape(16, 3) * 2.0)) for _ in range(500)]
    source = ListSource(tasks)
    batcher = AtomBudgetBatcher(source, BatchPolicy(max_atoms=128, max_wait=0.05, idle_poll=0.01))
    batch = batcher.next_batch()
    assert len(batch) == 8  # 128 atoms
    taken = 500 - source.queue.qsize()
    assert len(batcher) <= batcher._fetch_count and taken == len(batch) + len(batcher)


def test_batcher_waits_briefly_for_more_work() -> None:
    source = ListSource([])
    batcher = AtomBudgetBatcher(source, BatchPolicy(max_atoms=100, max_wait=0.2, idle_poll=0.01))
    assert batcher.next_batch() == []
    first = task(Atoms("Ar2", positions=[[0, 0, 0], [2, 0, 0]]))
    source.queue.put(first)
    import threading

    threading.Timer(0.05, lambda: source.queue.put(task(Atoms("Ar", positions=[[0, 0, 0]])))).start()
    assert [t.n_atoms for t in batcher.next_batch()] == [2, 1]


def test_worker_isolates_a_structure_that_makes_the_model_raise() -> None:
    good = [argon_crystal(seed) for seed in range(5)]
    poisoned = Atoms("Og2", positions=[[0, 0, 0], [2.0, 0, 0]])
    tasks = [task(a) for a in good[:2]] + [task(poisoned)] + [task(a) for a in good[2:]]
    source = ListSource(tasks)
    worker = Worker(LennardJonesPotential(), source, BatchPolicy(max_atoms=10_000, max_wait=0.0, idle_poll=0.01))
    assert worker.step() == 6
    by_id = {result.task_id: result for result in source.delivered}
    assert [by_id[t.id].ok for t in tasks] == [True, True, False, True, True, True]
    failed = by_id[tasks[2].id]
    assert failed.error_code == "model_error" and "poisoned structure" in failed.error_message
    energy, _, _ = lj_reference(good[3])
    assert by_id[tasks[4].id].prediction.energy == pytest.approx(energy)


def test_worker_flags_non_finite_model_output() -> None:
    on_top = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 0]])  # r = 0: the LJ energy is infinite
    source = ListSource([task(on_top), task(argon_cluster())])
    worker = Worker(LennardJonesPotential(), source, BatchPolicy(max_wait=0.0, idle_poll=0.01))
    worker.step()
    assert [r.error_code for r in source.delivered] == ["non_finite_output", None]


def test_fail_pending_answers_every_queued_task() -> None:
    tasks = [task(argon_cluster()) for _ in range(3)]
    source = ListSource(tasks)
    worker = Worker(LennardJonesPotential(), source, BatchPolicy(max_atoms=16, max_wait=0.0, idle_poll=0.01))
    worker.fail_pending("worker stopped")
    assert sorted(r.task_id for r in source.delivered) == sorted(t.id for t in tasks)
    assert all(r.error_code == "worker_failed" for r in source.delivered)


def relax_task(atoms: Atoms, **options: object) -> Task:
    spec = RelaxSpec(RelaxOptions(**options))
    return Task(id=f"r{next(counter)}", model="toy-lj", system=AtomicSystem.from_ase(atoms), properties=(), relax=spec)


def test_worker_relaxes_in_flight_and_keeps_answering_predictions() -> None:
    """Relaxations share each batch; a queued one joins when another ends; predictions are not held up."""
    relaxations = [relax_task(argon_crystal(seed, (1, 1, 1)), fmax=1e-3, max_steps=40) for seed in range(3)]
    source = ListSource(relaxations)
    worker = Worker(LennardJonesPotential(), source, BatchPolicy(max_atoms=8, max_wait=0.0, idle_poll=0.01))
    worker.step()
    assert worker.scheduler.relaxing == 2  # the budget holds two 4-atom cells; the third waits
    prediction = task(argon_cluster())
    source.queue.put(prediction)
    worker.step()
    assert [r.task_id for r in source.delivered] == [prediction.id]  # answered in the next round
    rounds = 2
    while len(source.delivered) < 4:
        worker.step()
        rounds += 1
        assert rounds < 200
    ended = {r.task_id: r for r in source.delivered[1:]}
    assert set(ended) == {t.id for t in relaxations}
    assert all(r.relaxation.stop_reason == "max_steps" and r.relaxation.steps == 40 for r in ended.values())
    assert rounds < 3 * 41  # the third started as soon as room freed, alongside the others' last steps


def test_relaxation_that_makes_the_model_raise_fails_alone() -> None:
    poisoned = Atoms("Og2", positions=[[0, 0, 0], [2.0, 0, 0]])
    tasks = [relax_task(argon_cluster(), max_steps=3), relax_task(poisoned, max_steps=3)]
    source = ListSource(tasks)
    worker = Worker(LennardJonesPotential(), source, BatchPolicy(max_atoms=100, max_wait=0.0, idle_poll=0.01))
    while len(source.delivered) < 2:
        worker.step()
    by_id = {r.task_id: r for r in source.delivered}
    assert by_id[tasks[1].id].error_code == "model_error"
    assert by_id[tasks[0].id].relaxation.steps == 3 and by_id[tasks[0].id].ok
