"""The device-resident relaxation (torch state, the tensor path of the Potential contract) against ASE, step by step.

ASE's ``FIRE(FrechetCellFilter(atoms))`` with a calculator of the same model is the reference; the batched path
runs through ``Potential.predict_tensors`` (EMT through the host fallback; MTP natively) and ``relax_all``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from mlipserve.models.calculator import PotentialCalculator
from mlipserve.models.cards import ModelCard
from mlipserve.models.potential import ALL_PROPERTIES, Potential
from mlipserve.models.prediction import Uncertainty
from mlipserve.models.system import AtomicSystem
from mlipserve.models.tensor_batch import TensorBatch
from mlipserve.server.dynamics.batched import relax_all
from mlipserve.server.dynamics.options import RelaxOptions, RelaxSpec
from mlipserve.server.dynamics.relaxation import RelaxationSet
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.loop import Worker
from mlipserve.server.engine.tasks import Task

from .conftest import torch_threads
from .test_graph_and_worker import ListSource
from .test_mtp import HEA, HEA_ELEMENTS, potential, random_hea_structures
from .test_relax_engine import emt, strained_crystals
from .toy_potential import POISON, LennardJonesPotential


@pytest.fixture(scope="module", autouse=True)
def _threads():
    with torch_threads(1):
        yield


class EMTPotential(Potential):
    """ASE's EMT as a Potential without a tensor path of its own: relaxations go through the host fallback."""

    def __init__(self) -> None:
        card = {"name": "emt", "family": "toy", "version": "1", "checkpoint": "none", "sha256": "0" * 64}
        self.card = ModelCard.from_dict(
            card | {"license": "MIT", "elements": ["Al", "Cu", "Ni", "Au"], "cutoff": 5.0}, root=None
        )
        self.elements, self.cutoff = self.card.atomic_numbers, 5.0
        self.dtype, self.device = torch.float64, torch.device("cpu")

    def predict_batch(self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES):
        return [emt(system) for system in systems]


def ase_path(atoms: Atoms, calculator: Calculator, options: RelaxOptions) -> tuple[list[float], list[np.ndarray], int]:
    """Energy and positions at every step of ASE's FIRE (with FrechetCellFilter for a periodic cell)."""
    atoms = atoms.copy()
    atoms.calc = calculator
    target = FrechetCellFilter(atoms) if options.relax_cell and atoms.pbc.all() else atoms
    optimizer = FIRE(target, logfile=None)
    energies, positions = [], []
    optimizer.attach(lambda: (energies.append(atoms.get_potential_energy()), positions.append(atoms.positions.copy())))
    optimizer.run(fmax=options.fmax, steps=options.max_steps)
    return energies, positions, optimizer.nsteps


def assert_same_path(structures: list[Atoms], model: Potential, calculator: Calculator, options: RelaxOptions):
    ended = relax_all(model, [AtomicSystem.from_ase(a) for a in structures], RelaxSpec(options), max_atoms=12)
    for atoms, result in zip(structures, ended, strict=True):
        energies, positions, steps = ase_path(atoms, calculator, options)
        frames = result.outcome.trajectory
        assert result.outcome.steps == steps and [frame.step for frame in frames] == list(range(steps + 1))
        per_atom = np.abs(np.array([frame.energy for frame in frames]) - energies) / len(atoms)
        assert per_atom.max() < 1e-9
        for frame, expected in zip(frames, positions, strict=True):
            np.testing.assert_allclose(frame.positions, expected, atol=1e-8)
        assert result.prediction.energy == pytest.approx(energies[-1], abs=1e-9)


def test_device_relaxation_follows_ase_step_by_step() -> None:
    """In-flight batching (max_atoms=12: members join as others leave) through the host fallback of EMT."""
    options = RelaxOptions(fmax=0.03, max_steps=200, trajectory_every=1)
    cluster = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [1.2, 2.2, 0], [1.3, 0.7, 2.1]])  # no cell
    structures = [*strained_crystals()[:3], cluster]
    assert_same_path(structures, EMTPotential(), EMT(), options)


def test_mtp_tensor_path_equals_its_host_path() -> None:
    model = potential(HEA / "pot.mtp", HEA_ELEMENTS)
    systems = [AtomicSystem.from_ase(atoms) for atoms in random_hea_structures(3)]
    systems.append(AtomicSystem.from_ase(Atoms("FeCo", positions=[[0, 0, 0], [0, 0, 2.1]])))
    batch = TensorBatch.from_systems(systems)
    native, reference = model.predict_tensors(batch), Potential.predict_tensors(model, batch)
    assert model.tensor_native
    torch.testing.assert_close(native.energy, reference.energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(native.forces, reference.forces, atol=1e-10, rtol=0)
    torch.testing.assert_close(native.stress, reference.stress, atol=1e-12, rtol=0)
    assert native.stress[-1].abs().max() == 0  # the molecule has no stress
    energy_only = model.predict_tensors(batch, ("energy",))
    assert energy_only.forces is None and torch.equal(energy_only.energy, native.energy)


def test_mtp_device_relaxation_matches_ase() -> None:
    """MTP's native tensor path (edges and forces on the device) relaxes as ASE does with the same model."""
    model = potential(HEA / "pot.mtp", HEA_ELEMENTS)
    structures = random_hea_structures(2)[:2]
    options = RelaxOptions(fmax=0.05, max_steps=25, trajectory_every=1)
    assert_same_path(structures, model, PotentialCalculator(model), options)


def test_stop_and_end_leave_at_the_geometry_evaluated_with_its_uncertainty() -> None:
    crystals = [AtomicSystem.from_ase(atoms) for atoms in strained_crystals()[:3]]
    relaxations = RelaxationSet()
    for i, system in enumerate(crystals):
        relaxations.add(str(i), system, RelaxSpec(RelaxOptions(trajectory_every=1)))
    evaluated = dict(relaxations.systems())
    predictions = {key: emt(system) for key, system in evaluated.items()}
    for i, prediction in enumerate(predictions.values()):
        prediction.uncertainty = Uncertainty("committee", 0.1 * (i + 1))
    with pytest.raises(ValueError, match="advance"):
        relaxations.end("0", "extrapolating")  # a batch is out: the caller stops it through advance
    [stopped] = relaxations.advance(predictions, stop={"1": "extrapolating"})
    assert (stopped.key, stopped.outcome.stop_reason, stopped.outcome.steps) == ("1", "extrapolating", 0)
    np.testing.assert_array_equal(stopped.outcome.system.positions, evaluated["1"].positions)
    assert stopped.prediction.uncertainty.value == pytest.approx(0.2)
    moved = dict(relaxations.systems())
    assert np.abs(moved["0"].positions - evaluated["0"].positions).max() > 0  # "0" stepped on
    relaxations.advance({key: emt(system) for key, system in moved.items()})
    ended = relaxations.end("2", "extrapolating")
    assert ended.outcome.steps == 1 and ended.prediction.energy == pytest.approx(emt(moved["2"]).energy)
    np.testing.assert_array_equal(ended.outcome.system.positions, moved["2"].positions)
    assert [frame.step for frame in ended.outcome.trajectory] == [0, 1]
    assert relaxations.keys() == ["0"]
    with pytest.raises(KeyError):
        relaxations.end("2", "extrapolating")


class TensorLJ(LennardJonesPotential):
    """The toy model routed through the engine's tensor path (its fallback), to exercise the device rounds."""

    @property
    def tensor_native(self) -> bool:
        return True


def test_worker_relaxes_on_the_tensor_path_and_isolates_a_failing_structure() -> None:
    crystals = [bulk("Ar", "fcc", a=1.6, cubic=True) for _ in range(3)]
    for seed, atoms in enumerate(crystals):
        atoms.rattle(0.02, seed=seed)
    crystals[1].numbers[0] = POISON  # makes the model raise
    spec = RelaxSpec(RelaxOptions(fmax=0.01, max_steps=30))
    tasks = [Task(f"t{i}", "toy-lj", AtomicSystem.from_ase(a), (), spec) for i, a in enumerate(crystals)]
    source = ListSource(tasks)
    worker = Worker(TensorLJ(), source, BatchPolicy(max_atoms=10_000, max_wait=0.0, idle_poll=0.01))
    assert worker.scheduler.tensor_path
    while len(source.delivered) < len(tasks):
        worker.step()
    results = {result.task_id: result for result in source.delivered}
    assert results["t1"].error_code is not None and not results["t1"].ok
    alone = relax_all(LennardJonesPotential(), [AtomicSystem.from_ase(crystals[i]) for i in (0, 2)], spec)
    for key, reference in zip(("t0", "t2"), alone, strict=True):
        outcome = results[key].relaxation
        assert outcome.steps == reference.outcome.steps and outcome.stop_reason == reference.outcome.stop_reason
        np.testing.assert_allclose(outcome.system.positions, reference.outcome.system.positions, atol=1e-12)
        assert results[key].prediction.energy == pytest.approx(reference.prediction.energy, abs=1e-12)


def test_a_member_without_prediction_leaves_and_the_others_keep_their_state() -> None:
    """A member missing from the predictions is dropped; the rest step on with device state intact."""
    relaxations = RelaxationSet()
    for i, atoms in enumerate(strained_crystals()[:2]):
        relaxations.add(str(i), AtomicSystem.from_ase(atoms), RelaxSpec(RelaxOptions()))
    systems = dict(relaxations.systems())
    before = relaxations.optimizer.velocity.clone()
    assert relaxations.advance({"1": emt(systems["1"])}) == []
    assert relaxations.keys() == ["1"] and relaxations.x.shape[0] == systems["1"].n_atoms + 3
    assert before.abs().max() == 0 and relaxations.optimizer.velocity.abs().max() > 0
    assert isinstance(relaxations.batch().positions, torch.Tensor)


def test_sevennet_tensor_path_equals_its_host_path(model_dir) -> None:
    """SevenNet's native tensor path builds the same model input as predict_batch (SevenNet's small HfO2 model)."""
    from mlipserve.models.loading import load_model
    from mlipserve.models.registry import ModelRegistry

    model = load_model(ModelRegistry(model_dir), "hfo2-cp0", "cpu")
    crystal = bulk("HfO2", "fluorite", a=5.1, cubic=True)
    crystal.rattle(0.1, seed=1)
    molecule = Atoms("HfO2", positions=[[0, 0, 0], [1.9, 0, 0], [-0.6, 1.8, 0]])
    batch = TensorBatch.from_systems([AtomicSystem.from_ase(crystal), AtomicSystem.from_ase(molecule)])
    native, reference = model.predict_tensors(batch), Potential.predict_tensors(model, batch)
    assert model.tensor_native
    torch.testing.assert_close(native.energy, reference.energy, atol=1e-5, rtol=0)  # float32 model
    torch.testing.assert_close(native.forces, reference.forces, atol=1e-5, rtol=0)
    torch.testing.assert_close(native.stress, reference.stress, atol=1e-6, rtol=0)
    assert native.stress[1].abs().max() == 0 and native.stress[0].abs().max() > 0
