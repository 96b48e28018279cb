"""Device neighbour lists (models/neighbors.py): fresh lists equal vesin's host lists, and lists reused with a skin
give the same edges, and the same float64 MTP and ACE energies to 1e-10 eV, as fresh ones at every step of a
trajectory that moves atoms and strains cells until the skin is spent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from mlipserve.models.backends.ace import AcePotential
from mlipserve.models.backends.ace_format import read_potential
from mlipserve.models.cards import ModelCard, file_sha256
from mlipserve.models.graph import BatchedGraph
from mlipserve.models.neighbors import SkinNeighborList, device_lists_available, fresh_edges
from mlipserve.models.system import AtomicSystem
from mlipserve.models.tensor_batch import EdgeList, TensorBatch, host_neighbor_list

from .conftest import torch_threads
from .test_mtp import HEA, HEA_ELEMENTS, potential

ACE_CU = Path(__file__).resolve().parent / "data" / "ace" / "Cu_sbessel.yace"
ENERGY_TOL = 1e-10  # eV per structure


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    with torch_threads(1):
        yield


def crystals(elements: tuple[str, ...], seed: int) -> list[Atoms]:
    """Small periodic cells (8-32 atoms, some smaller than the cutoff), a slab and a molecule."""
    rng = np.random.default_rng(seed)
    structures = [
        bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2),
        bulk("Fe", "bcc", a=2.87, cubic=True) * (2, 2, 2),
        bulk("Ni", "fcc", a=3.5) * (2, 2, 2),
        bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1),
    ]
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    slab.pbc = (True, True, False)
    slab.cell[2, 2] = 20.0
    structures.append(slab)
    structures.append(molecule("CH4"))
    for atoms in structures:
        atoms.set_chemical_symbols(rng.choice(elements, len(atoms)))
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
    return structures


def step(atoms: Atoms, rng: np.random.Generator, move: float, strain: float) -> Atoms:
    """``atoms`` with every atom moved by about ``move`` Å and, if periodic in 3D, its cell strained."""
    atoms = atoms.copy()
    if atoms.pbc.all():
        deformation = np.eye(3) + strain * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
    atoms.positions += move * rng.standard_normal(atoms.positions.shape)
    return atoms


def batch_of(structures: list[Atoms], keys: list[str]) -> TensorBatch:
    return TensorBatch.from_systems([AtomicSystem.from_ase(a) for a in structures], keys=keys)


def edge_set(edges: EdgeList) -> set[tuple[int, ...]]:
    columns = [edges.senders, edges.receivers, *edges.shifts.round().to(torch.int64).T]
    return set(map(tuple, torch.stack(columns, dim=1).tolist()))


def graph_of(batch: TensorBatch, edges: EdgeList, cutoff: float) -> BatchedGraph:
    """The numpy graph the MTP and ACE backends evaluate, with ``edges`` as its edges."""
    senders = edges.senders.numpy()
    return BatchedGraph(
        numbers=batch.numbers.numpy(),
        positions=batch.positions.numpy(),
        batch=batch.batch.numpy(),
        n_atoms=batch.n_atoms.numpy(),
        cells=batch.cells.numpy(),
        pbc=batch.pbc.numpy(),
        senders=senders,
        receivers=edges.receivers.numpy(),
        shifts=edges.shifts.numpy(),
        n_edges=np.bincount(batch.batch.numpy()[senders], minlength=batch.n_systems),
        cutoff=cutoff,
    )


def test_vesin_torch_is_installed() -> None:
    """The test environment has the device build (the dev extra), so the tests below exercise it."""
    assert device_lists_available()


def test_fresh_lists_equal_vesins_host_lists() -> None:
    structures = crystals(("Cu", "Ni"), seed=1)
    batch = batch_of(structures, [])
    for cutoff in (2.0, 4.5, 7.5):
        assert edge_set(fresh_edges(batch, cutoff)) == edge_set(host_neighbor_list(batch, cutoff))


def test_skin_lists_track_fresh_lists_and_are_reused() -> None:
    """Edges equal to fresh ones at every step; lists are reused while the skin lasts and rebuilt after."""
    rng = np.random.default_rng(7)
    structures = crystals(("Cu", "Ni"), seed=2)
    keys = [f"m{i}" for i in range(len(structures))]
    skin, cutoff = 0.6, 4.5
    source = SkinNeighborList(skin=skin)
    for index in range(16):
        batch = batch_of(structures, keys)
        assert edge_set(source(batch, cutoff)) == edge_set(fresh_edges(batch, cutoff)), index
        structures = [step(atoms, rng, move=0.03, strain=0.004) for atoms in structures]
    assert source.reuses > 3 * len(structures)  # most steps reused the lists
    assert source.builds > len(structures)  # and the drift spent the skin: some were rebuilt


def test_a_strained_cell_alone_triggers_a_rebuild() -> None:
    """Compressing a cell brings image pairs closer without moving any atom relative to the cell."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    source = SkinNeighborList(skin=0.4)
    cutoff = 5.0
    for scale in (1.0, 0.97, 0.92, 0.9):
        squeezed = atoms.copy()
        squeezed.set_cell(atoms.cell.array * scale, scale_atoms=True)
        batch = batch_of([squeezed], ["a"])
        assert edge_set(source(batch, cutoff)) == edge_set(fresh_edges(batch, cutoff)), scale
    # 0.97 * (5 + 0.4) > 5: reused; 0.92 * 5.4 < 5: rebuilt, then 0.9 / 0.92 is within the new skin
    assert (source.builds, source.reuses) == (2, 2)


def test_members_join_and_leave() -> None:
    """New keys get lists, keys gone for a while are forgotten, a batch without keys gets fresh lists."""
    structures = crystals(("Cu",), seed=3)[:3]
    source = SkinNeighborList(skin=0.5, keep_calls=2)
    source(batch_of(structures, ["a", "b", "c"]), 4.0)
    batch = batch_of(structures[1:], ["b", "c"])
    assert edge_set(source(batch, 4.0)) == edge_set(fresh_edges(batch, 4.0))
    for _ in range(3):
        source(batch, 4.0)
    assert set(source._entries) == {"b", "c"}
    assert (source.builds, source.reuses) == (3, 8)
    unkeyed = batch_of(structures, [])
    assert edge_set(source(unkeyed, 4.0)) == edge_set(fresh_edges(unkeyed, 4.0))
    assert source.builds == 3


def energies_along_a_trajectory(energy_of, elements: tuple[str, ...], cutoff: float) -> int:
    """Compare ``energy_of(graph)`` with skin and fresh edges over a drifting trajectory; return the rebuilds."""
    rng = np.random.default_rng(11)
    structures = crystals(elements, seed=5)
    keys = [str(i) for i in range(len(structures))]
    source = SkinNeighborList(skin=0.5)
    for index in range(10):
        batch = batch_of(structures, keys)
        reused = energy_of(graph_of(batch, source(batch, cutoff), cutoff))
        fresh = energy_of(graph_of(batch, fresh_edges(batch, cutoff), cutoff))
        np.testing.assert_allclose(reused, fresh, rtol=0, atol=ENERGY_TOL, err_msg=f"step {index}")
        structures = [step(atoms, rng, move=0.04, strain=0.003) for atoms in structures]
    assert source.reuses > 0
    return source.builds - len(structures)


def test_mtp_energies_with_reused_lists_equal_fresh_ones() -> None:
    mtp = potential(HEA / "pot.mtp", HEA_ELEMENTS)
    assert mtp.dtype == torch.float64
    rebuilt = energies_along_a_trajectory(lambda graph: mtp.evaluate(graph).energy, HEA_ELEMENTS, mtp.cutoff)
    assert rebuilt > 0


def test_ace_energies_with_reused_lists_equal_fresh_ones() -> None:
    model = read_potential(ACE_CU)
    card = ModelCard.from_dict(
        {"name": "cu", "family": "ace", "version": "test", "checkpoint": ACE_CU.name, "sha256": file_sha256(ACE_CU),
         "license": "MIT", "elements": list(model.elements), "cutoff": model.cutoff},
        root=ACE_CU.parent,
    )  # fmt: skip
    ace = AcePotential(card, model)

    def energy_of(graph: BatchedGraph) -> np.ndarray:
        vectors = torch.as_tensor(graph.edge_vectors(), dtype=torch.float64)
        return ace.system_energies(graph, vectors).detach().numpy()

    assert energies_along_a_trajectory(energy_of, ("Cu",), ace.cutoff) > 0


def test_mtp_tensor_path_with_a_skin_source_equals_fresh_lists() -> None:
    """Through the engine's tensor path (``TensorBatch.neighbors``): energies, forces and stresses as fresh lists."""
    mtp = potential(HEA / "pot.mtp", HEA_ELEMENTS)
    rng = np.random.default_rng(3)
    structures = crystals(HEA_ELEMENTS, seed=4)
    keys = [str(i) for i in range(len(structures))]
    source = SkinNeighborList(skin=0.5)
    for index in range(6):
        batch = batch_of(structures, keys)
        fresh = mtp.predict_tensors(batch)
        batch.neighbors = source
        reused = mtp.predict_tensors(batch)
        for name in ("energy", "forces", "stress"):
            difference = (getattr(reused, name) - getattr(fresh, name)).abs().max()
            assert difference <= ENERGY_TOL, (index, name, float(difference))
        structures = [step(atoms, rng, move=0.05, strain=0.003) for atoms in structures]
    assert source.reuses > 0 and source.builds > len(structures)
