"""The fast path of a small request: the direct overlap check, inline ingest, and no batch wait for a lone task.

The direct overlap check (small structures) must find exactly the pairs ASE's neighbour list finds (large ones
still use it), on random cells: triclinic, partly periodic, with atoms outside the cell and close pairs across
its faces.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import primitive_neighbor_list
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.server.api import validation
from mlipserve.server.api.errors import StructureError
from mlipserve.server.api.ingest import INLINE_ATOMS, quick_to_prepare
from mlipserve.server.config import StructureLimits
from mlipserve.server.engine.batching import AtomBudgetBatcher, BatchPolicy
from mlipserve.server.engine.tasks import Task


def random_systems(count: int, min_distance: float, seed: int = 0) -> list[AtomicSystem]:
    """Random cells whose periodic lattice planes are at least ``min_distance`` apart (validation checks that
    first), 1 to 11 atoms each, many pairs and images closer than ``min_distance``."""
    rng = np.random.default_rng(seed)
    systems: list[AtomicSystem] = []
    while len(systems) < count:
        n, pbc = int(rng.integers(1, 12)), rng.random(3) < 0.7
        cell = np.diag(rng.uniform(0.6, 3, 3)) + rng.normal(0, 0.5, (3, 3))
        volume = abs(np.linalg.det(cell))
        faces = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        if volume < 0.05 or (volume / faces[pbc] < min_distance).any():
            continue
        systems.append(AtomicSystem.from_arrays(np.ones(n), rng.uniform(-2, 4, (n, 3)), cell, pbc))
    return systems


def test_direct_overlap_check_finds_exactly_the_pairs_ases_list_finds() -> None:
    min_distance, found = 0.5, 0
    for system in random_systems(400, min_distance):
        i, j, d = primitive_neighbor_list(
            "ijd", system.pbc, system.cell, system.positions, min_distance, self_interaction=False
        )
        a, b, e = validation._close_pairs_direct(system, min_distance)
        expected = sorted(zip(i.tolist(), j.tolist(), np.round(d, 9).tolist(), strict=True))
        assert sorted(zip(a.tolist(), b.tolist(), np.round(e, 9).tolist(), strict=True)) == expected
        found += len(expected)
    assert found > 1000  # the sample holds many close pairs


@pytest.mark.parametrize("direct_up_to", [0, validation.DIRECT_OVERLAP_ATOMS])
def test_both_overlap_paths_refuse_with_the_same_message(monkeypatch: pytest.MonkeyPatch, direct_up_to: int) -> None:
    monkeypatch.setattr(validation, "DIRECT_OVERLAP_ATOMS", direct_up_to)
    card, limits = ModelRegistry().card("7net-0"), StructureLimits()
    close = bulk("Si", "diamond", a=5.43, cubic=True)
    close.positions[5] = close.positions[2] + [0.1, 0.2, -0.1]
    with pytest.raises(StructureError, match=r"atoms 2 and 5 are 0\.245 Å apart, closer than the 0\.5 Å threshold"):
        validation.validate_structure(0, AtomicSystem.from_ase(close), card, limits)
    across = bulk("Si", "diamond", a=5.43, cubic=True)  # atom 3 close to an image of atom 0, across a face
    across.positions[0], across.positions[3] = [0.05, 0.3, 0.3], [5.43 - 0.1, 0.3, 0.3 + 5.43]
    with pytest.raises(StructureError, match=r"atoms 0 and 3 are 0\.150 Å apart"):
        validation.validate_structure(0, AtomicSystem.from_ase(across), card, limits)
    validation.validate_structure(0, AtomicSystem.from_ase(bulk("Si", "diamond", a=5.43, cubic=True)), card, limits)


def arrays(n_atoms: int) -> dict:
    return {"numbers": [14] * n_atoms, "positions": [[0.0, 0.0, float(k)] for k in range(n_atoms)], "cell": None}


def test_only_a_few_atoms_given_as_arrays_are_prepared_inline() -> None:
    assert quick_to_prepare([arrays(8)])
    assert quick_to_prepare([arrays(INLINE_ATOMS // 2), arrays(INLINE_ATOMS // 2)])
    assert not quick_to_prepare([arrays(INLINE_ATOMS // 2), arrays(INLINE_ATOMS // 2 + 1)])
    assert not quick_to_prepare([{"format": "xyz", "text": "1\n\nSi 0 0 0\n"}])
    assert not quick_to_prepare([{"sites": [], "lattice": {}}])  # pymatgen
    ragged = arrays(2) | {"positions": [[0.0, 0.0, 0.0], [0.0] * 100_000]}
    assert not quick_to_prepare([ragged])
    assert not quick_to_prepare([arrays(2) | {"cell": [[1.0] * 100_000] * 3}])
    assert not quick_to_prepare([arrays(2) | {"numbers": [14]}])


class RecordingSource:
    """A task source that hands out its tasks at once and records how long each fetch was allowed to wait."""

    def __init__(self, tasks: list[Task]):
        self.tasks, self.timeouts = list(tasks), []

    def fetch(self, max_tasks: int, timeout: float) -> list[Task]:
        self.timeouts.append(timeout)
        taken, self.tasks = self.tasks[:max_tasks], self.tasks[max_tasks:]
        return taken

    def deliver(self, results) -> None:
        pass


def test_a_lone_task_is_not_held_back_to_wait_for_company() -> None:
    """By default a batch closes with what is queued: the first fetch may block (an idle worker), no later one."""
    system = AtomicSystem.from_ase(bulk("Si", cubic=True))
    source = RecordingSource([Task("lone", "7net-0", system, ("energy",))])
    batcher = AtomBudgetBatcher(source, BatchPolicy().for_device("cpu"))
    assert [task.id for task in batcher.next_batch()] == ["lone"]
    assert source.timeouts[0] > 0 and all(timeout == 0 for timeout in source.timeouts[1:])
