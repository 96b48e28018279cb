"""The CHGNet backend against chgnet's own ASE calculator and graph converter, with the real 0.3.0 weights."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("chgnet")

import ase.io
from ase import Atoms, units
from ase.build import molecule
from chgnet.model import CHGNet
from chgnet.model.dynamics import CHGNetCalculator
from mlipserve.models.backends.chgnet import CHGNetPotential, load_potential
from mlipserve.models.cards import CardError
from mlipserve.models.loading import load_model
from mlipserve.models.potential import StructureRejected, check_card
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from pymatgen.io.ase import AseAtomsAdaptor

from .toy_potential import saved_for_backward

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "datasets"
FRAMES_PER_FILE = 2
# Float32 noise: CHGNetCalculator itself moves forces by up to ~1e-4 eV/Å on stiff frames when the atoms are
# merely permuted; the smallest frames of each file stay well inside these bounds.
E_TOL, F_TOL, S_TOL = 1e-5, 1e-4, 1e-5  # eV/atom, eV/Å, eV/Å³


def dataset_frames() -> list[tuple[str, Atoms]]:
    """The FRAMES_PER_FILE smallest frames of the HfO2 file and of every mlearn file."""
    files = sorted(DATASETS.glob("SevenNet_example_HfO2*.extxyz")) + sorted(DATASETS.glob("mlearn_*.extxyz"))
    if not files:
        pytest.skip(f"dataset fixtures not found in {DATASETS}")
    frames = []
    for path in files:
        atoms = ase.io.read(path, ":", format="extxyz")  # the HfO2 name contains "OUTCAR": name the format
        order = sorted(range(len(atoms)), key=lambda k: (len(atoms[k]), k))[:FRAMES_PER_FILE]
        frames += [(f"{path.name.split('.')[0]}[{k}]", atoms[k]) for k in order]
    return frames


@pytest.fixture(scope="module")
def potential(tmp_path_factory: pytest.TempPathFactory) -> CHGNetPotential:
    return load_model(ModelRegistry(tmp_path_factory.mktemp("models")), "chgnet-0.3.0", "cpu")


@pytest.fixture(scope="module")
def calculator() -> CHGNetCalculator:
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        # stress_weight converts chgnet's GPa to ASE's eV/Å³ (chgnet's documented default, made explicit).
        return CHGNetCalculator(model, use_device="cpu", stress_weight=units.GPa, on_isolated_atoms="error")


@pytest.fixture(scope="module")
def frames() -> list[tuple[str, Atoms]]:
    return dataset_frames()


def reference(calculator: CHGNetCalculator, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (eV), forces (eV/Å) and 3×3 stress (eV/Å³) from chgnet's ASE calculator, one structure at a time."""
    atoms = atoms.copy()
    atoms.calc = calculator
    with contextlib.redirect_stdout(io.StringIO()):
        return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


def graph_signature(graph) -> tuple[set, set, list]:
    """Order-free description of a CrystalGraph: directed edges, their pairing into bonds, and the angles."""
    images = graph.neighbor_image.numpy().round().astype(int)
    directed = [(int(i), int(j), tuple(s)) for (i, j), s in zip(graph.atom_graph.numpy(), images, strict=True)]
    assert len(set(directed)) == len(directed)
    pairs = defaultdict(list)
    for edge, undirected in zip(directed, graph.directed2undirected.numpy(), strict=True):
        pairs[int(undirected)].append(edge)
    assert all(len(edges) == 2 for edges in pairs.values())
    for undirected, first in enumerate(graph.undirected2directed.numpy()):
        assert directed[first] in pairs[undirected]
    bonds = {k: tuple(sorted(edges)) for k, edges in pairs.items()}
    angles = sorted(
        (int(row[0]), bonds[int(row[1])], directed[int(row[2])], bonds[int(row[3])], directed[int(row[4])])
        for row in graph.bond_graph.numpy().reshape(-1, 5)
    )
    return set(directed), set(bonds.values()), angles


def assert_close(name: str, n_atoms: int, ours, energy: float, forces: np.ndarray, stress: np.ndarray | None):
    assert abs(ours.energy - energy) / n_atoms <= E_TOL, (name, ours.energy, energy)
    assert ours.forces.shape == (n_atoms, 3) and ours.forces.dtype == np.float64
    assert np.abs(ours.forces - forces).max() <= F_TOL, (name, np.abs(ours.forces - forces).max())
    if stress is None:
        assert ours.stress is None
    else:
        assert ours.stress.shape == (3, 3) and ours.stress.dtype == np.float64
        assert np.abs(ours.stress - stress).max() <= S_TOL, (name, np.abs(ours.stress - stress).max())


def test_card_and_attributes(potential):
    assert isinstance(potential, CHGNetPotential)
    assert potential.cutoff == 6.0 and potential.bond_graph_cutoff == 3.0
    assert str(potential.dtype) == "torch.float32" and potential.device.type == "cpu"
    assert {1, 8, 72, 94} <= potential.elements
    # the atom embedding reaches H to Pu; the card narrows the model to MPtrj's 89 elements at load
    assert potential.elements == potential.card.atomic_numbers and len(potential.elements) == 89
    assert {84, 85, 86, 87, 88}.isdisjoint(potential.elements)  # Po to Ra: embedded, never trained


def test_card_cutoff_mismatch_is_refused(potential):
    card = potential.card
    loaded = load_potential(dataclasses.replace(card, cutoff=5.0), card.verified_checkpoint(), potential.device)
    with pytest.raises(CardError, match=r"says cutoff 5\.0 Å, but the loaded potential's cutoff is 6\.0 Å"):
        check_card(loaded.card, loaded)  # as the registry does once the checkpoint is loaded
    wrong = dataclasses.replace(card, options={**card.options, "bond_graph_cutoff": 4.0})
    with pytest.raises(CardError, match="bond graph cutoff"):
        load_potential(wrong, card.verified_checkpoint(), potential.device)


def test_graphs_match_chgnet_converter(potential, frames):
    converter = potential.model.graph_converter
    methane = molecule("CH4")
    boxed = methane.copy()
    boxed.center(vacuum=10.0)
    boxed.pbc = True
    cases = [(atoms, atoms) for _, atoms in frames] + [(methane, boxed)]
    for ours_atoms, reference_atoms in cases:
        ours = potential.crystal_graph(AtomicSystem.from_ase(ours_atoms))
        theirs = converter(AseAtomsAdaptor.get_structure(reference_atoms))
        assert graph_signature(ours) == graph_signature(theirs)


def test_batch_matches_chgnet_calculator(potential, calculator, frames):
    systems = [AtomicSystem.from_ase(atoms) for _, atoms in frames]
    predictions = potential.predict(systems)  # one batch
    assert len(predictions) == len(frames)
    for (name, atoms), ours in zip(frames, predictions, strict=True):
        assert_close(name, len(atoms), ours, *reference(calculator, atoms))


def test_mixed_batch_with_molecules(potential, calculator, frames):
    methane = AtomicSystem.from_arrays(molecule("CH4").numbers, molecule("CH4").positions, np.zeros((3, 3)), False)
    water = molecule("H2O")
    water.positions += 100.0  # far from the origin; no cell
    crystals = [next(atoms for name, atoms in frames if tag in name) for tag in ("HfO2", "_Li_")]
    systems = [
        AtomicSystem.from_ase(crystals[0]),
        methane,
        AtomicSystem.from_ase(crystals[1]),
        AtomicSystem.from_ase(water),
    ]
    assert not methane.is_periodic and not systems[3].is_periodic
    batch = potential.predict(systems)
    for index, (system, ours) in enumerate(zip(systems, batch, strict=True)):
        (alone,) = potential.predict([system])
        assert_close(f"system {index}", system.n_atoms, ours, alone.energy, alone.forces, alone.stress)
    assert batch[1].stress is None and batch[3].stress is None
    assert batch[0].stress is not None and batch[2].stress is not None
    # A molecule equals the same molecule in a periodic vacuum box wider than the cutoff, for chgnet's calculator.
    boxed = molecule("CH4")
    boxed.center(vacuum=8.0)
    boxed.pbc = True
    energy, forces, _ = reference(calculator, boxed)
    assert_close("CH4", 5, batch[1], energy, forces, None)


def test_requested_properties_only(potential, frames):
    system = AtomicSystem.from_ase(frames[0][1])
    (full,) = potential.predict([system])
    with saved_for_backward() as saved:
        (energy_only,) = potential.predict([system], ["energy"])
    assert saved == []  # no autograd graph
    (with_forces,) = potential.predict([system], ["energy", "forces"])
    assert energy_only.forces is None and energy_only.stress is None
    assert with_forces.stress is None and with_forces.forces is not None
    assert abs(energy_only.energy - full.energy) / system.n_atoms <= E_TOL
    assert np.abs(with_forces.forces - full.forces).max() <= F_TOL


def test_left_handed_cell_keeps_the_stress_sign(potential, frames):
    atoms = frames[0][1]
    flipped = atoms.copy()
    flipped.set_cell(atoms.cell.array[[1, 0, 2]], scale_atoms=False)  # same crystal, left-handed basis
    assert np.linalg.det(atoms.cell.array) * np.linalg.det(flipped.cell.array) < 0
    right, left = potential.predict([AtomicSystem.from_ase(atoms), AtomicSystem.from_ase(flipped)])
    assert np.abs(left.stress - right.stress).max() <= S_TOL
    assert abs(left.energy - right.energy) / len(atoms) <= E_TOL


def test_check_rejects_isolated_atoms(potential, frames):
    lonely = AtomicSystem.from_arrays([6, 8], [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], np.eye(3) * 20.0, True)
    with pytest.raises(StructureRejected) as info:
        potential.check(lonely)
    assert info.value.code == "isolated_atom"
    assert "atom 0 (C)" in info.value.message and "6.0 Å" in info.value.message
    stray = molecule("H2O")
    stray.append("Na")
    stray.positions[-1] = [0.0, 0.0, 7.5]
    with pytest.raises(StructureRejected, match=r"atom 3 \(Na\)"):
        potential.check(AtomicSystem.from_ase(stray))
    potential.check(AtomicSystem.from_ase(frames[0][1]))
    potential.check(AtomicSystem.from_ase(molecule("CH4")))
