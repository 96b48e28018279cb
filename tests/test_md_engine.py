"""Batched MD (:class:`MDSet`) against ASE's integrators, and by its statistics.

* Step for step against ASE 3.29 with the same float64 MTP (Mo, ``shared/fixtures/mtp/mlearn_Mo_test``) wrapped in an
  ASE calculator: ``VelocityVerlet`` over 200 steps with runs of different sizes batched and one joining later;
  ``Langevin`` and ``Bussi`` with ``rng=np.random.default_rng(seed)``, with and without fixed atoms.
* Statistics with Lennard-Jones argon (the ``pair`` family): Langevin and CSVR hold the target temperature and give
  Maxwell–Boltzmann velocities; the C-rescale barostat (both couplings) holds the target pressure.
* A resumed checkpoint gives the same numbers as a run never interrupted; explosions, caller stops, failures,
  frame and checkpoint cadence.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.constraints import FixAtoms
from ase.md.bussi import Bussi
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from mlipserve.models.calculator import PotentialCalculator
from mlipserve.models.potential import Potential
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.groups import Ended
from mlipserve.server.dynamics.md import MDSet
from mlipserve.server.dynamics.options import MDOptions, MDSpec
from mlipserve.server.dynamics.outcome import MDCheckpoint, MDFrame
from scipy import stats

from .conftest import FIXTURES, torch_threads
from .test_mtp import potential
from .test_pair import ARGON, install

MO = FIXTURES / "mtp" / "mlearn_Mo_test" / "fitted.mtp"
ARGON_MASS = 39.948
POSITION_TOL = 1e-8  # Å


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def mo() -> Potential:
    return potential(MO, "Mo")


@pytest.fixture(scope="module")
def argon(tmp_path_factory: pytest.TempPathFactory) -> Potential:
    return install(tmp_path_factory.mktemp("argon"), "lj-argon", ARGON | {"rc": 7.0})


def system_of(atoms: Atoms) -> AtomicSystem:
    return AtomicSystem.from_arrays(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)


def rattled_mo(repeat: tuple[int, int, int], seed: int) -> Atoms:
    """A rattled, slightly strained bcc Mo supercell (not from the potential's training or test data)."""
    atoms = bulk("Mo", "bcc", a=3.16, cubic=True) * repeat
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.uniform(-0.01, 0.01, (3, 3))), scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def argon_crystal() -> Atoms:
    return bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 2, 2)


def thermalize(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """ASE's Maxwell–Boltzmann velocities without centre-of-mass motion (what MDSet does for a run without any)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)


class Driver:
    """Runs an MDSet with a model, through the device or the host interface, collecting frames and checkpoints."""

    def __init__(self, model: Potential, md: MDSet | None = None, host: bool = False):
        self.model, self.md, self.host = model, md or MDSet(), host
        self.frames: dict[str, list[MDFrame]] = {}
        self.checkpoints: dict[str, list[MDCheckpoint]] = {}
        self.ended: dict[str, Ended] = {}
        self.rounds = 0

    def round(self, **advance) -> list[Ended]:
        if self.host:
            keys, systems = zip(*self.md.systems(), strict=True)
            predictions = self.model.predict(list(systems), self.md.properties())
            ended = self.md.advance(dict(zip(keys, predictions, strict=True)), **advance)
        else:
            batch = self.md.batch()
            ended = self.md.advance_tensors(self.model.predict_tensors(batch, self.md.properties()), **advance)
        for progress in self.md.progress():
            if progress.frame is not None:
                self.frames.setdefault(progress.task_id, []).append(progress.frame)
            if progress.checkpoint is not None:
                self.checkpoints.setdefault(progress.task_id, []).append(progress.checkpoint)
        self.ended |= {end.key: end for end in ended}
        self.rounds += 1
        return ended

    def run(self, joining: dict[int, tuple[str, AtomicSystem, MDSpec]] | None = None) -> None:
        joining = dict(joining or {})
        while len(self.md) or joining:
            if self.rounds in joining:
                self.md.add(*joining.pop(self.rounds))
            self.round()


def ase_frames(dyn, atoms: Atoms, steps: int, every: int) -> dict[int, tuple[np.ndarray, np.ndarray, float, float]]:
    """Positions, velocities (Å/fs), temperature and potential energy of an ASE run every ``every`` steps."""
    recorded = {}

    def record() -> None:
        state = (atoms.positions.copy(), atoms.get_velocities() * units.fs, atoms.get_temperature())
        recorded[dyn.nsteps] = (*state, atoms.get_potential_energy())

    dyn.attach(record, interval=every)
    dyn.run(steps)
    record()
    return recorded


def assert_frames_match(frames: list[MDFrame], reference: dict, steps: int, every: int) -> None:
    assert [frame.step for frame in frames] == sorted({*range(0, steps + 1, every), steps})
    for frame in frames:
        positions, velocities, temperature, energy = reference[frame.step]
        np.testing.assert_allclose(frame.positions, positions, rtol=0, atol=POSITION_TOL)
        np.testing.assert_allclose(frame.velocities, velocities, rtol=0, atol=1e-9)
        assert frame.temperature == pytest.approx(temperature, rel=1e-9, abs=1e-9)
        assert frame.energy == pytest.approx(energy, rel=0, abs=1e-9)


# -- against ASE, step for step ----------------------------------------------------------------------------------------
def test_nve_matches_ase_velocity_verlet_with_runs_joining(mo: Potential) -> None:
    steps, every, dt = 200, 10, 2.0
    structures = {"small": (rattled_mo((1, 1, 2), 1), 11), "large": (rattled_mo((2, 2, 2), 2), 12)}
    late = ("late", (rattled_mo((1, 2, 2), 3), 13), 37)
    options = MDOptions(timestep_fs=dt, steps=steps, temperature_K=800.0, trajectory_every=every)
    driver = Driver(mo)
    for key, (atoms, seed) in structures.items():
        driver.md.add(key, system_of(atoms), MDSpec(options, seed=seed))
    key, (atoms, seed), joins = late
    driver.run({joins: (key, system_of(atoms), MDSpec(options, seed=seed))})

    for key, (atoms, seed) in [*structures.items(), late[:2]]:
        reference = atoms.copy()
        reference.calc = PotentialCalculator(mo)
        thermalize(reference, 800.0, np.random.default_rng(seed))
        expected = ase_frames(VelocityVerlet(reference, timestep=dt * units.fs), reference, steps, every)
        assert_frames_match(driver.frames[key], expected, steps, every)
        outcome = driver.ended[key].outcome
        assert (outcome.stop_reason, outcome.steps, outcome.time_fs, outcome.seed) == ("completed", steps, 400.0, seed)
        np.testing.assert_allclose(outcome.system.positions, expected[steps][0], rtol=0, atol=POSITION_TOL)
        assert driver.ended[key].prediction.energy == driver.frames[key][-1].energy
    # the late run joined while the others went on: all three ran their 200 steps
    assert driver.rounds == joins + steps + 1


@pytest.mark.parametrize(
    ("integrator", "fixed", "host"),
    [("langevin", None, False), ("csvr", None, True), ("langevin", [0, 5], True), ("csvr", [0, 5], False)],
)
def test_thermostats_match_ase_with_the_same_seed(mo: Potential, integrator: str, fixed, host: bool) -> None:
    steps, every, dt, temperature, seed = 100, 5, 2.0, 600.0, 21
    atoms = rattled_mo((2, 2, 2), 4)
    options = MDOptions(
        integrator=integrator,  # type: ignore[arg-type]
        timestep_fs=dt,
        steps=steps,
        temperature_K=temperature,
        friction_per_fs=0.02,
        thermostat_time_fs=20.0,
        trajectory_every=every,
    )
    driver = Driver(mo, host=host)
    driver.md.add("run", system_of(atoms), MDSpec(options, seed=seed, fixed=None if fixed is None else np.array(fixed)))
    driver.run()

    reference = atoms.copy()
    reference.calc = PotentialCalculator(mo)
    if fixed is not None:
        reference.set_constraint(FixAtoms(indices=fixed))
    rng = np.random.default_rng(seed)
    thermalize(reference, temperature, rng)
    if integrator == "langevin":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # fixcm's deprecation
            dyn = Langevin(reference, dt * units.fs, temperature_K=temperature, friction=0.02 / units.fs, rng=rng)
    else:
        dyn = Bussi(reference, dt * units.fs, temperature_K=temperature, taut=20.0 * units.fs, rng=rng)
    expected = ase_frames(dyn, reference, steps, every)
    assert_frames_match(driver.frames["run"], expected, steps, every)
    if fixed is not None:
        for frame in driver.frames["run"]:
            np.testing.assert_array_equal(frame.positions[fixed], atoms.positions[fixed])
            np.testing.assert_array_equal(frame.velocities[fixed], 0.0)


def test_fixed_atoms_do_not_move_in_nve(mo: Potential) -> None:
    atoms = rattled_mo((2, 2, 2), 5)
    fixed = np.array([1, 2, 9])
    options = MDOptions(timestep_fs=2.0, steps=50, temperature_K=900.0, trajectory_every=10)
    driver = Driver(mo)
    driver.md.add("run", system_of(atoms), MDSpec(options, seed=3, fixed=fixed))
    driver.run()
    frames = driver.frames["run"]
    for frame in frames:
        np.testing.assert_array_equal(frame.positions[fixed], atoms.positions[fixed])
        np.testing.assert_array_equal(frame.velocities[fixed], 0.0)
    free = np.setdiff1d(np.arange(len(atoms)), fixed)
    assert np.abs(frames[-1].positions[free] - atoms.positions[free]).max() > 0.01
    # ASE's temperature: 3 degrees of freedom fewer per fixed atom
    ke = 0.5 * (atoms.get_masses()[:, None] * (frames[-1].velocities / units.fs) ** 2).sum()
    assert frames[-1].temperature == pytest.approx(2 * ke / ((3 * len(atoms) - 9) * units.kB), rel=1e-12)


# -- statistics --------------------------------------------------------------------------------------------------------
def block_mean(series: np.ndarray, block: int) -> tuple[float, float]:
    """Mean of (runs, samples) series and its standard error from block averages (blocks of ``block`` samples)."""
    runs, n = series.shape
    blocks = series[:, : n - n % block].reshape(runs, -1, block).mean(axis=2).ravel()
    return float(series.mean()), float(blocks.std(ddof=1) / np.sqrt(len(blocks)))


def hot_start(atoms: Atoms, temperature_K: float, seed: int) -> np.ndarray:
    """Velocities (Å/fs) at twice the target: a crystal at rest shares its kinetic energy with the potential, so the
    run starts near the target temperature."""
    atoms = atoms.copy()
    thermalize(atoms, 2 * temperature_K, np.random.default_rng(seed))
    return atoms.get_velocities() * units.fs


def run_argon(argon: Potential, options: dict[str, MDOptions], runs: int) -> Driver:
    """``runs`` runs of 32 argon atoms per entry of ``options``, all in one MDSet."""
    driver = Driver(argon)
    crystal = argon_crystal()
    for name, opts in options.items():
        for r in range(runs):
            velocities = hot_start(crystal, opts.temperature_K or 0.0, 1000 + r)
            driver.md.add(f"{name}-{r}", system_of(crystal), MDSpec(opts, seed=r, velocities=velocities))
    driver.run()
    return driver


def test_thermostats_sample_the_canonical_distribution(argon: Potential) -> None:
    """Langevin and CSVR side by side: mean temperature within 4 standard errors of the target, and velocity
    components (every 10th step, scaled by sqrt(kT/m)) normal by a Kolmogorov–Smirnov test."""
    temperature, steps, skip = 60.0, 300, 50
    common = {"timestep_fs": 5.0, "steps": steps, "temperature_K": temperature, "trajectory_every": 1}
    options = {
        "langevin": MDOptions(integrator="langevin", friction_per_fs=0.02, **common),
        "csvr": MDOptions(integrator="csvr", thermostat_time_fs=50.0, **common),
    }
    driver = run_argon(argon, options, runs=4)
    scale = np.sqrt(units.kB * temperature / ARGON_MASS) * units.fs  # Å/fs
    for name in options:
        keys = [key for key in driver.frames if key.startswith(name)]
        series = np.array([[frame.temperature for frame in driver.frames[key][skip:]] for key in keys])
        mean, error = block_mean(series, 25)
        assert abs(mean - temperature) < 4 * error, (name, mean, error)
        assert error < 0.02 * temperature
        velocities = np.concatenate([f.velocities.ravel() for k in keys for f in driver.frames[k][skip::10]])
        assert stats.kstest(velocities / scale, "norm").pvalue > 0.01, name


def test_crescale_barostat_holds_the_target_pressure(argon: Potential) -> None:
    """Isotropic and anisotropic C-rescale: mean pressure (kinetic + virial) within 4 standard errors of the
    target, the cell having moved (volume, and for the anisotropic coupling its shape)."""
    temperature, pressure, steps, skip = 60.0, 0.0005, 300, 100
    common = {
        "integrator": "npt_crescale",
        "timestep_fs": 5.0,
        "steps": steps,
        "temperature_K": temperature,
        "pressure": pressure,
        "compressibility": 50.0,
        "barostat_time_fs": 200.0,
        "thermostat_time_fs": 50.0,
        "trajectory_every": 1,
    }
    options = {coupling: MDOptions(barostat=coupling, **common) for coupling in ("isotropic", "anisotropic")}  # type: ignore[arg-type]
    driver = run_argon(argon, options, runs=3)
    start = argon_crystal().cell.array
    for name in options:
        keys = [key for key in driver.frames if key.startswith(name)]
        frames = [driver.frames[key][skip:] for key in keys]
        series = np.array([[instantaneous_pressure(frame) for frame in run] for run in frames])
        mean, error = block_mean(series, 25)
        assert abs(mean - pressure) < 4 * error, (name, mean, error)
        assert error < 0.2 * pressure
        last = frames[0][-1].cell
        assert abs(np.linalg.det(last)) > 1.02 * np.linalg.det(start)  # a hot crystal expands
        shape = last / np.cbrt(abs(np.linalg.det(last)))
        sheared = np.abs(shape - np.diag(np.diag(shape))).max() > 1e-4 or np.ptp(np.diag(shape)) > 1e-4
        assert sheared == (name == "anisotropic")


def instantaneous_pressure(frame: MDFrame) -> float:
    """(Σ m v² / 3 - tr(σ) V / 3) / V, eV/Å³ (argon only)."""
    velocities = frame.velocities / units.fs
    volume = abs(np.linalg.det(frame.cell))
    assert frame.stress is not None
    return float(ARGON_MASS * (velocities**2).sum() / (3 * volume) - np.trace(frame.stress) / 3)


# -- resuming, ending, reporting ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        MDOptions(integrator="langevin", temperature_K=700.0, timestep_fs=2.0, friction_per_fs=0.05),
        MDOptions(
            integrator="npt_crescale",
            temperature_K=700.0,
            timestep_fs=2.0,
            barostat="anisotropic",
            compressibility=5.0,
            barostat_time_fs=50.0,
        ),
    ],
    ids=["langevin", "npt-anisotropic"],
)
def test_a_resumed_checkpoint_continues_exactly(mo: Potential, options: MDOptions) -> None:
    atoms = rattled_mo((2, 2, 2), 6)
    options = MDOptions.of(options.request() | {"steps": 40, "checkpoint_every": 20, "trajectory_every": 40})
    straight = Driver(mo)
    straight.md.add("run", system_of(atoms), MDSpec(options, seed=5))
    straight.run()

    first = Driver(mo)
    first.md.add("run", system_of(atoms), MDSpec(options, seed=5))
    while not first.checkpoints:
        first.round()
    (checkpoint,) = first.checkpoints["run"]
    assert checkpoint.step == 20
    resumed = Driver(mo)  # a fresh set, as on another worker
    resumed.md.add("run", system_of(atoms), MDSpec(options, seed=5, resume=checkpoint))
    resumed.run()

    final, again = straight.ended["run"].outcome, resumed.ended["run"].outcome
    assert again.steps == final.steps == 40
    np.testing.assert_allclose(again.system.positions, final.system.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(again.velocities, final.velocities, rtol=0, atol=1e-12)
    np.testing.assert_allclose(again.system.cell, final.system.cell, rtol=0, atol=1e-12)
    assert np.abs(final.system.positions - atoms.positions).max() > 0.01
    assert straight.checkpoints["run"][0].rng_state == checkpoint.rng_state


def test_a_collapsed_structure_explodes_while_a_good_one_completes(argon: Potential) -> None:
    crystal = argon_crystal()
    collapsed = crystal.copy()
    collapsed.positions[1] = collapsed.positions[0] + [0.4, 0.0, 0.0]
    options = MDOptions(steps=20, temperature_K=40.0, timestep_fs=5.0)
    driver = Driver(argon)
    driver.md.add("good", system_of(crystal), MDSpec(options, seed=1))
    driver.md.add("collapsed", system_of(collapsed), MDSpec(options, seed=2))
    driver.run()
    assert driver.ended["collapsed"].outcome.stop_reason == "exploded"
    assert driver.ended["collapsed"].outcome.steps == 0
    assert driver.ended["good"].outcome.stop_reason == "completed"
    assert driver.ended["good"].outcome.steps == 20


def test_a_run_too_hot_explodes(argon: Potential) -> None:
    options = MDOptions(steps=20, temperature_K=3000.0, timestep_fs=5.0, max_temperature_K=1000.0)
    driver = Driver(argon)
    driver.md.add("hot", system_of(argon_crystal()), MDSpec(options, seed=1))
    driver.run()
    outcome = driver.ended["hot"].outcome
    assert outcome.stop_reason == "exploded" and outcome.temperature > 1000.0


def test_frames_checkpoints_caller_stops_and_failures(argon: Potential) -> None:
    crystal = system_of(argon_crystal())
    options = MDOptions(steps=30, temperature_K=50.0, timestep_fs=4.0, trajectory_every=7, checkpoint_every=10)
    driver = Driver(argon)
    for seed, key in enumerate(("cadence", "stopped", "failing")):
        driver.md.add(key, crystal, MDSpec(options, seed=seed))
    for _ in range(13):  # steps 0..12
        driver.round()
    batch = driver.md.batch()
    prediction = argon.predict_tensors(batch, driver.md.properties())
    failed = torch.tensor([key == "failing" for key in batch.keys])
    ended = driver.md.advance_tensors(prediction, failed=failed, stop={"stopped": "extrapolating"})
    assert [end.key for end in ended] == ["stopped"]
    assert (ended[0].outcome.stop_reason, ended[0].outcome.steps) == ("extrapolating", 13)
    driver.ended |= {end.key: end for end in ended}
    for progress in driver.md.progress():
        if progress.frame is not None:
            driver.frames.setdefault(progress.task_id, []).append(progress.frame)
        if progress.checkpoint is not None:
            driver.checkpoints.setdefault(progress.task_id, []).append(progress.checkpoint)
    driver.run()

    assert driver.md.keys() == [] and "failing" not in driver.ended
    assert [f.step for f in driver.frames["cadence"]] == [0, 7, 14, 21, 28, 30]
    assert [f.time_fs for f in driver.frames["cadence"]] == [0.0, 28.0, 56.0, 84.0, 112.0, 120.0]
    assert [f.step for f in driver.frames["stopped"]] == [0, 7, 13]
    assert [c.step for c in driver.checkpoints["cadence"]] == [10, 20]
    assert [c.step for c in driver.checkpoints["failing"]] == [10]
    checkpoint = driver.checkpoints["cadence"][0]
    assert checkpoint.integrator_state == {"integrator": "nve"}
    assert checkpoint.velocities.shape == (32, 3) and isinstance(checkpoint.rng_state, dict)
    final = driver.ended["cadence"]
    assert final.outcome.stop_reason == "completed"
    np.testing.assert_array_equal(final.outcome.system.positions, driver.frames["cadence"][-1].positions)
    assert final.prediction.stress is not None and final.prediction.forces.shape == (32, 3)


def test_options_a_run_cannot_use(argon: Potential) -> None:
    md = MDSet()
    crystal = system_of(argon_crystal())
    with pytest.raises(ValueError, match="temperature_K"):
        md.add("a", crystal, MDSpec(MDOptions(integrator="csvr"), seed=1))
    molecule = AtomicSystem.from_arrays(crystal.numbers[:4], crystal.positions[:4])
    with pytest.raises(ValueError, match="periodic"):
        md.add("b", molecule, MDSpec(MDOptions(integrator="npt_crescale", temperature_K=10.0), seed=1))
    with pytest.raises(ValueError, match="fixed atom"):
        md.add("d", crystal, MDSpec(MDOptions(), seed=1, fixed=np.array([32])))
    with pytest.raises(ValueError, match="velocities"):
        md.add("e", crystal, MDSpec(MDOptions(), seed=1, velocities=np.zeros((4, 3))))
    # nve without a temperature starts at rest
    md.add("c", molecule, MDSpec(MDOptions(steps=0), seed=1))
    driver = Driver(argon, md)
    driver.run()
    outcome = driver.ended["c"].outcome
    assert outcome.steps == 0 and outcome.kinetic_energy == 0.0 and outcome.stop_reason == "completed"


def test_units_of_given_velocities(argon: Potential) -> None:
    """Given velocities are Å/fs: one atom at 0.01 Å/fs moves 0.05 Å in 5 fs (no force on a lone atom)."""
    lone = AtomicSystem.from_arrays([18], [[0.0, 0.0, 0.0]])
    options = MDOptions(steps=1, timestep_fs=5.0, trajectory_every=1)
    driver = Driver(argon)
    driver.md.add("lone", lone, MDSpec(options, seed=1, velocities=np.array([[0.01, 0.0, 0.0]])))
    driver.run()
    np.testing.assert_allclose(driver.ended["lone"].outcome.system.positions, [[0.05, 0.0, 0.0]], atol=1e-14)
    np.testing.assert_allclose(driver.frames["lone"][-1].velocities, [[0.01, 0.0, 0.0]], atol=1e-14)
