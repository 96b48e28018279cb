"""Batched molecular dynamics with in-flight batching: many MD runs advanced one time step per round.

An :class:`MDSet` holds the runs a worker is advancing. Each round the worker evaluates all of their current
geometries in one batch and hands the prediction to :meth:`~MDSet.advance_tensors`, which completes every run's
step (the second half kick of velocity Verlet), records frames and checkpoints, returns the runs that ended, and
starts the next step of the others (thermostat, barostat, first half kick, drift). A run's first evaluation only
gives its initial forces. A run that ends leaves at once and a waiting one joins in the next round.

State (positions, velocities, forces, cells) lives in float64 tensors on the model's device; the integrators are
in :mod:`.integrators`. Their random numbers come from one ``numpy.random.default_rng(spec.seed)`` per run on
the host, drawn per step in ASE's order and uploaded. Initial velocities, when none are given and a temperature
is, are ASE's own: ``thermalize_momenta`` (what ``MaxwellBoltzmannDistribution`` calls) then ``Stationary``,
with the run's generator, on the host.

A checkpoint (every ``checkpoint_every`` steps) holds the completed step's positions, velocities, cell and the
generator's state; a run resumed from it evaluates its forces again and goes on with the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.constraints import FixAtoms
from ase.data import atomic_masses
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from ...models.prediction import ENERGY, FORCES, STRESS, Prediction
from ...models.system import AtomicSystem
from ...models.tensor_batch import NeighborSource, TensorBatch, TensorPrediction
from ...protocol import MDStopReason
from .groups import CallerStop, Ended
from .integrators import INTEGRATORS, PARAMETERS, Dynamics, member_parameters
from .options import MDSpec
from .outcome import MDCheckpoint, MDFrame, MDOutcome, Progress

#: A principal stretch of an NPT cell beyond this factor (or below its inverse) from its start flags an explosion.
EXPLODED_STRETCH = 2.0

_GOING, _COMPLETED, _EXPLODED, _CALLER = 0, 1, 2, 3
_CODES: tuple[MDStopReason | None, ...] = (None, "completed", "exploded", None)


@dataclass
class _Run:
    key: str
    system: AtomicSystem
    spec: MDSpec
    rng: np.random.Generator
    step: int
    #: Whether its forces at the current geometry are known (after its first evaluation).
    started: bool = False
    fixed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def ndof(self) -> int:
        return 3 * self.system.n_atoms - 3 * len(self.fixed)


class MDSet:
    """The MD runs of a worker; every run's atoms back to back in one set of tensors on ``device``.

    ``neighbors``, when given, lists the neighbours of every batch (a device list reused across steps); runs keep
    their keys, so a cache can follow them as others join and leave.
    """

    watched = True

    def __init__(self, device: torch.device | str = "cpu", neighbors: NeighborSource | None = None):
        self.device = torch.device(device)
        self.neighbors = neighbors
        self.runs: list[_Run] = []
        self._pending: list[tuple[_Run, np.ndarray, np.ndarray]] = []
        self._progress: list[Progress] = []
        f64 = {"dtype": torch.float64, "device": self.device}
        # per atom
        self.positions = torch.zeros((0, 3), **f64)
        self.velocities = torch.zeros((0, 3), **f64)  # Å / ASE time
        self.forces = torch.zeros((0, 3), **f64)
        self._scratch = torch.zeros((0, 3), **f64)
        self._masses = torch.zeros((0, 1), **f64)
        self._movable = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._numbers = torch.zeros(0, dtype=torch.int64, device=self.device)
        # per run
        self.cells = torch.zeros((0, 3, 3), **f64)
        self._start_cells = torch.zeros((0, 3, 3), **f64)
        self._stress = torch.zeros((0, 3, 3), **f64)
        self._pbc = torch.zeros((0, 3), dtype=torch.bool, device=self.device)
        self._n_atoms = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._ndof = torch.zeros(0, **f64)
        self._parameters = torch.zeros((0, len(PARAMETERS)), **f64)
        self._max_force = torch.zeros(0, **f64)
        self._max_temperature = torch.zeros(0, **f64)
        self._npt = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._layout()

    def __len__(self) -> int:
        return len(self.runs) + len(self._pending)

    @property
    def n_atoms(self) -> int:
        return sum(run.system.n_atoms for run in self.runs) + sum(r.system.n_atoms for r, _, _ in self._pending)

    def add(self, key: str, system: AtomicSystem, spec: MDSpec) -> None:
        """Start (or, with ``spec.resume``, continue) an MD run of ``system``; it is evaluated next round."""
        options = spec.options
        integrator = INTEGRATORS.get(options.integrator)
        if integrator is None:
            raise ValueError(f"unknown integrator {options.integrator!r}")
        if integrator.thermostatted and options.temperature_K is None:
            raise ValueError(f"the {options.integrator} integrator needs temperature_K")
        if options.integrator == "npt_crescale" and not (system.pbc.all() and system.volume > 1e-6):
            raise ValueError("npt_crescale needs a structure periodic in all three directions")
        fixed = np.unique(np.asarray(spec.fixed if spec.fixed is not None else [], dtype=np.int64))
        if len(fixed) and (fixed[0] < 0 or fixed[-1] >= system.n_atoms):
            raise ValueError(f"fixed atom indices must be within 0..{system.n_atoms - 1}")
        rng = np.random.default_rng(spec.seed)
        checkpoint = spec.resume
        if checkpoint is not None:
            if checkpoint.integrator_state.get("integrator", options.integrator) != options.integrator:
                raise ValueError("the checkpoint is of another integrator")
            if checkpoint.rng_state is not None:
                rng.bit_generator.state = checkpoint.rng_state
            system = AtomicSystem(
                system.numbers, np.asarray(checkpoint.positions, float), np.asarray(checkpoint.cell, float), system.pbc
            )
            velocities = np.asarray(checkpoint.velocities, dtype=np.float64) / units.fs
            step = checkpoint.step
        else:
            velocities = initial_velocities(system, spec, fixed, rng)
            step = 0
        if velocities.shape != (system.n_atoms, 3):
            raise ValueError(f"velocities of shape {velocities.shape} for {system.n_atoms} atoms")
        velocities = velocities.copy()
        velocities[fixed] = 0.0
        self._pending.append((_Run(key, system, spec, rng, step, fixed=fixed), velocities, system.positions))

    def keys(self) -> list[str]:
        """The keys of the runs, in order (those added this round last)."""
        return [run.key for run in self.runs] + [run.key for run, _, _ in self._pending]

    def owner(self, key: str) -> str:
        """Evaluation keys are task ids."""
        return key

    def properties(self) -> tuple[str, ...]:
        """Energy and forces; stress too when a run is periodic (for its frames and an NPT barostat)."""
        periodic = any(run.system.is_periodic for run in self.runs) or any(
            run.system.is_periodic for run, _, _ in self._pending
        )
        return (ENERGY, FORCES, STRESS) if periodic else (ENERGY, FORCES)

    def progress(self) -> list[Progress]:
        """Frames and checkpoints since the last call."""
        reported, self._progress = self._progress, []
        return reported

    # -- the device interface ------------------------------------------------------------------------------
    def batch(self) -> TensorBatch:
        """Every run's current geometry as one batch on the device (runs added since the last round join)."""
        self._join()
        return TensorBatch(
            positions=self.positions,
            cells=self.cells,
            numbers=self._numbers,
            batch=self._owner,
            pbc=self._pbc,
            n_atoms=self._n_atoms,
            neighbors=self.neighbors,
            keys=[run.key for run in self.runs],
        )

    def advance_tensors(
        self, prediction: TensorPrediction, failed: torch.Tensor | None = None, stop: CallerStop | None = None
    ) -> list[Ended]:
        """Take the prediction of the last :meth:`batch`: complete each run's step, record frames and checkpoints,
        return the runs that ended and start the next step of the others.

        ``failed`` (a boolean mask over runs) drops runs without an outcome; ``stop`` ends runs at the geometry
        just evaluated for a reason of the caller's (e.g. ``"extrapolating"``); it yields only to ``"exploded"``.
        """
        k = len(self.runs)
        if prediction.energy.shape[0] != k:
            raise ValueError(f"a prediction of {prediction.energy.shape[0]} structures for a batch of {k}")
        if prediction.forces is None:
            raise ValueError("MD needs the model's forces, which it did not return")
        failed = torch.zeros(k, dtype=torch.bool, device=self.device) if failed is None else failed.to(self.device)
        self.forces = torch.where(self._movable[:, None], prediction.forces.to(torch.float64), 0.0)
        if prediction.stress is not None:
            self._stress = torch.nan_to_num(prediction.stress.to(torch.float64), nan=0.0)
        else:
            self._stress = torch.zeros((k, 3, 3), dtype=torch.float64, device=self.device)
        started = [run.started for run in self.runs]
        self._each_integrator(lambda integrator, d: integrator.finish(d), started)
        for i, run in enumerate(self.runs):
            run.step += started[i]
            run.started = True

        kinetic = self._dynamics().kinetic_energy()
        temperature = 2 * kinetic / (self._ndof.clamp(min=1) * units.kB)
        code = self._codes(prediction, temperature, failed, stop)
        codes, failed_host = code.cpu().tolist(), failed.cpu().tolist()  # the round's one synchronisation

        offsets = self._offsets()
        ended, going = [], []
        for i, run in enumerate(self.runs):
            if failed_host[i]:
                continue
            reason = stop[run.key] if codes[i] == _CALLER and stop is not None else _CODES[codes[i]]
            options = run.spec.options
            every = options.trajectory_every
            if every > 0 and (run.step % every == 0 or reason is not None):
                self._progress.append(Progress(run.key, frame=self._frame(i, run, offsets, prediction, kinetic)))
            due = options.checkpoint_every > 0 and run.step > 0 and run.step % options.checkpoint_every == 0
            if reason is None and due and (run.spec.resume is None or run.step != run.spec.resume.step):
                self._progress.append(Progress(run.key, checkpoint=self._checkpoint(i, run, offsets)))
            if reason is not None:
                ended.append(self._ended(i, run, reason, offsets, prediction, kinetic, temperature))
            else:
                going.append(i)

        if len(going) < k:
            keep = torch.zeros(k, dtype=torch.bool)
            keep[going] = True
            self._remove(keep.to(self.device))
        if self.runs:
            self._each_integrator(lambda integrator, d: integrator.begin(d), [True] * len(self.runs), draw=True)
        return ended

    # -- the host interface --------------------------------------------------------------------------------
    def systems(self) -> list[tuple[str, AtomicSystem]]:
        """Each run's current geometry, to evaluate on the host (runs added since the last round join)."""
        batch = self.batch()
        return list(zip(batch.keys, batch.to_systems(), strict=True))

    def advance(self, predictions: Mapping[str, Prediction | None], stop: CallerStop | None = None) -> list[Ended]:
        """Take the host predictions of :meth:`systems`' geometries (None: the model failed; the run is dropped
        without an outcome); step on, return the runs that ended."""
        found = [predictions.get(run.key) for run in self.runs]
        failed = torch.tensor([p is None for p in found], dtype=torch.bool)
        stand_in = [
            p if p is not None else Prediction(np.nan, np.zeros((run.system.n_atoms, 3)))
            for p, run in zip(found, self.runs, strict=True)
        ]
        energy = torch.tensor([p.energy for p in stand_in], dtype=torch.float64)
        forces = torch.as_tensor(np.concatenate([np.zeros((0, 3))] + [np.asarray(p.forces) for p in stand_in]))
        stress = None
        if any(p.stress is not None for p in stand_in):
            stress = torch.as_tensor(np.stack([np.zeros((3, 3)) if p.stress is None else p.stress for p in stand_in]))
        uncertainty = [p.uncertainty for p in stand_in]
        tensors = TensorPrediction(
            energy.to(self.device),
            forces.to(self.device, torch.float64),
            None if stress is None else stress.to(self.device, torch.float64),
            uncertainty if any(u is not None for u in uncertainty) else None,
        )
        return self.advance_tensors(tensors, failed, stop)

    # -- stepping -------------------------------------------------------------------------------------------
    def _dynamics(self, runs: torch.Tensor | None = None) -> Dynamics:
        """The integrator's view of all runs, or of the runs at indices ``runs`` (gathered copies)."""
        if runs is None:
            return Dynamics(
                self.positions,
                self.velocities,
                self.forces,
                self._scratch,
                self._masses,
                self._movable,
                self._owner,
                self.cells,
                self._stress,
                self._n_atoms,
                self._ndof,
                self._parameters,
            )
        atoms = torch.isin(self._owner, runs)
        renumber = torch.full((len(self.runs),), -1, dtype=torch.int64, device=self.device)
        renumber[runs] = torch.arange(runs.shape[0], device=self.device)
        return Dynamics(
            self.positions[atoms],
            self.velocities[atoms],
            self.forces[atoms],
            self._scratch[atoms],
            self._masses[atoms],
            self._movable[atoms],
            renumber[self._owner[atoms]],
            self.cells[runs],
            self._stress[runs],
            self._n_atoms[runs],
            self._ndof[runs],
            self._parameters[runs],
        )

    def _each_integrator(self, apply, chosen: list[bool], draw: bool = False) -> None:
        """Call ``apply(integrator, dynamics)`` for the chosen runs, grouped by integrator; with ``draw``, each
        run's step noise is drawn from its generator first."""
        groups: dict[str, list[int]] = {}
        for i, run in enumerate(self.runs):
            if chosen[i]:
                groups.setdefault(run.spec.options.integrator, []).append(i)
        for name, indices in groups.items():
            integrator = INTEGRATORS[name]  # type: ignore[index]
            whole = len(indices) == len(self.runs)
            index = torch.tensor(indices, dtype=torch.int64, device=self.device)
            d = self._dynamics(None if whole else index)
            if draw:
                noise = [
                    integrator.draw(run.rng, run.system.n_atoms, run.ndof, run.spec.options)
                    for run in (self.runs[i] for i in indices)
                ]
                d.atom_noise = torch.as_tensor(np.concatenate([a for a, _ in noise])).to(self.device, torch.float64)
                d.run_noise = torch.as_tensor(np.stack([r for _, r in noise])).to(self.device, torch.float64)
            apply(integrator, d)
            if not whole:
                atoms = torch.isin(self._owner, index)
                self.positions[atoms] = d.positions
                self.velocities[atoms] = d.velocities
                self._scratch[atoms] = d.scratch
                self.cells[index] = d.cells

    def _codes(
        self, prediction: TensorPrediction, temperature: torch.Tensor, failed: torch.Tensor, stop: CallerStop | None
    ) -> torch.Tensor:
        """Each run's code this round: exploded, stopped by the caller, completed, or going on."""
        k, owner = len(self.runs), self._owner
        f = prediction.forces.to(torch.float64)
        bad = ~torch.isfinite(f).all(dim=1) | (f.abs().amax(dim=1) > self._max_force[owner])
        bad |= ~torch.isfinite(self.positions).all(dim=1) | ~torch.isfinite(self.velocities).all(dim=1)
        exploded = f.new_zeros(k).index_add_(0, owner, bad.to(f.dtype)) > 0
        exploded |= ~torch.isfinite(prediction.energy) | ~(temperature <= self._max_temperature)
        deform = torch.linalg.solve(self._start_cells, self.cells)  # start @ deform = cell
        eye = torch.eye(3, dtype=f.dtype, device=self.device)
        stretch = torch.linalg.svdvals(torch.where(self._npt[:, None, None], deform, eye))
        too_far = (stretch.max(dim=1).values > EXPLODED_STRETCH) | (stretch.min(dim=1).values < 1 / EXPLODED_STRETCH)
        exploded |= self._npt & (too_far | ~torch.isfinite(stretch).all(dim=1))
        completed = torch.tensor([run.step >= run.spec.options.steps for run in self.runs], dtype=torch.bool)
        caller = torch.tensor([bool(stop) and run.key in stop for run in self.runs], dtype=torch.bool)
        code = torch.where(completed.to(self.device), _COMPLETED, _GOING)
        code = torch.where(caller.to(self.device), _CALLER, code)
        return torch.where(exploded & ~failed, _EXPLODED, code)

    # -- reports --------------------------------------------------------------------------------------------
    def _frame(
        self, i: int, run: _Run, offsets: list[int], prediction: TensorPrediction, kinetic: torch.Tensor
    ) -> MDFrame:
        rows = slice(offsets[i], offsets[i + 1])
        stress = None
        if prediction.stress is not None and run.system.is_periodic:
            stress = _host(prediction.stress[i])
        kinetic_energy = float(kinetic[i])
        return MDFrame(
            step=run.step,
            time_fs=run.step * run.spec.options.timestep_fs,
            positions=_host(self.positions[rows]),
            velocities=_host(self.velocities[rows]) * units.fs,
            cell=_host(self.cells[i]),
            energy=float(prediction.energy[i]),
            kinetic_energy=kinetic_energy,
            temperature=_temperature(kinetic_energy, run.ndof),
            stress=stress,
        )

    def _checkpoint(self, i: int, run: _Run, offsets: list[int]) -> MDCheckpoint:
        rows = slice(offsets[i], offsets[i + 1])
        return MDCheckpoint(
            step=run.step,
            positions=_host(self.positions[rows]),
            velocities=_host(self.velocities[rows]) * units.fs,
            cell=_host(self.cells[i]),
            integrator_state=self._integrator_state(i, run),
            rng_state=_plain(run.rng.bit_generator.state),
        )

    def _integrator_state(self, i: int, run: _Run) -> dict[str, Any]:
        """What a checkpoint keeps beyond positions and velocities: the integrator, and an NPT run's first cell."""
        state: dict[str, Any] = {"integrator": run.spec.options.integrator}
        if run.spec.options.integrator == "npt_crescale":
            state["start_cell"] = _host(self._start_cells[i]).tolist()
        return state

    def _ended(
        self,
        i: int,
        run: _Run,
        reason: Any,
        offsets: list[int],
        prediction: TensorPrediction,
        kinetic: torch.Tensor,
        temperature: torch.Tensor,
    ) -> Ended:
        rows = slice(offsets[i], offsets[i + 1])
        system = AtomicSystem(run.system.numbers, _host(self.positions[rows]), _host(self.cells[i]), run.system.pbc)
        result = Prediction(energy=float(prediction.energy[i]))
        if prediction.forces is not None:
            result.forces = _host(prediction.forces[rows])
        if prediction.stress is not None and system.is_periodic and system.volume >= 1e-6:
            result.stress = _host(prediction.stress[i])
        if prediction.uncertainty is not None:
            result.uncertainty = prediction.uncertainty[i]
        kinetic_energy = float(kinetic[i])
        outcome = MDOutcome(
            system=system,
            velocities=_host(self.velocities[rows]) * units.fs,
            steps=run.step,
            stop_reason=reason,
            time_fs=run.step * run.spec.options.timestep_fs,
            kinetic_energy=kinetic_energy,
            temperature=_temperature(kinetic_energy, run.ndof),
            seed=run.spec.seed,
        )
        return Ended(run.key, outcome, result)

    # -- membership -------------------------------------------------------------------------------------------
    def _join(self) -> None:
        """Move the runs added since the last round onto the device, all in one copy."""
        if not self._pending:
            return
        new, self._pending = self._pending, []
        runs = [run for run, _, _ in new]

        def upload(values, dtype: torch.dtype = torch.float64) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values)).to(self.device, dtype)

        numbers = np.concatenate([run.system.numbers for run in runs])
        movable = []
        for run in runs:
            free = np.ones(run.system.n_atoms, dtype=bool)
            free[run.fixed] = False
            movable.append(free)
        n_new = len(numbers)
        self.positions = torch.cat([self.positions, upload(np.concatenate([p for _, _, p in new]))])
        self.velocities = torch.cat([self.velocities, upload(np.concatenate([v for _, v, _ in new]))])
        self.forces = torch.cat([self.forces, self.forces.new_zeros((n_new, 3))])
        self._scratch = torch.cat([self._scratch, self._scratch.new_zeros((n_new, 3))])
        self._masses = torch.cat([self._masses, upload(atomic_masses[numbers][:, None])])
        self._movable = torch.cat([self._movable, upload(np.concatenate(movable), torch.bool)])
        self._numbers = torch.cat([self._numbers, upload(numbers, torch.int64)])
        cells = upload(np.stack([run.system.cell for run in runs]))
        self.cells = torch.cat([self.cells, cells])
        start = np.stack([_start_cell(run) for run in runs])
        self._start_cells = torch.cat([self._start_cells, upload(start)])
        self._stress = torch.cat([self._stress, self._stress.new_zeros((len(runs), 3, 3))])
        self._pbc = torch.cat([self._pbc, upload(np.stack([run.system.pbc for run in runs]), torch.bool)])
        self._n_atoms = torch.cat([self._n_atoms, upload([run.system.n_atoms for run in runs], torch.int64)])
        self._ndof = torch.cat([self._ndof, upload([run.ndof for run in runs])])
        rows = [member_parameters(run.spec.options) for run in runs]
        self._parameters = torch.cat([self._parameters, upload(rows)])
        self._max_force = torch.cat([self._max_force, upload([r.spec.options.max_force for r in runs])])
        self._max_temperature = torch.cat(
            [self._max_temperature, upload([r.spec.options.max_temperature_K for r in runs])]
        )
        npt = [run.spec.options.integrator == "npt_crescale" for run in runs]
        self._npt = torch.cat([self._npt, upload(npt, torch.bool)])
        self.runs += runs
        self._layout()

    def _remove(self, keep: torch.Tensor) -> None:
        """Keep only the runs where the boolean mask ``keep`` (on the device) is True."""
        atoms = keep[self._owner]
        for name in ("positions", "velocities", "forces", "_scratch", "_masses", "_movable", "_numbers"):
            setattr(self, name, getattr(self, name)[atoms])
        for name in (
            "cells",
            "_start_cells",
            "_stress",
            "_pbc",
            "_n_atoms",
            "_ndof",
            "_parameters",
            "_max_force",
            "_max_temperature",
            "_npt",
        ):
            setattr(self, name, getattr(self, name)[keep])
        kept = keep.cpu().tolist()
        self.runs = [run for run, stays in zip(self.runs, kept, strict=True) if stays]
        self._layout()

    def _layout(self) -> None:
        n_total = sum(run.system.n_atoms for run in self.runs)
        self._owner = torch.repeat_interleave(
            torch.arange(len(self.runs), device=self.device), self._n_atoms, output_size=n_total
        )

    def _offsets(self) -> list[int]:
        return np.concatenate([[0], np.cumsum([run.system.n_atoms for run in self.runs])]).astype(int).tolist()


def initial_velocities(system: AtomicSystem, spec: MDSpec, fixed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A run's starting velocities (Å / ASE time): the spec's, else ASE's Maxwell–Boltzmann draw at
    ``temperature_K`` with the centre-of-mass motion removed (``thermalize_momenta`` + ``Stationary``), else rest."""
    if spec.velocities is not None:
        return np.asarray(spec.velocities, dtype=np.float64) / units.fs
    if spec.options.temperature_K is None:
        return np.zeros((system.n_atoms, 3))
    atoms = Atoms(numbers=system.numbers, positions=system.positions, cell=system.cell, pbc=system.pbc)
    if len(fixed):
        atoms.set_constraint(FixAtoms(indices=fixed))
    thermalize_momenta(atoms, spec.options.temperature_K, rng=rng)
    Stationary(atoms)
    return atoms.get_velocities()


def _start_cell(run: _Run) -> np.ndarray:
    """The cell an NPT run's stretch is measured from (its first, also across a resume); the identity otherwise."""
    if run.spec.options.integrator != "npt_crescale":
        return np.eye(3)
    state = run.spec.resume.integrator_state if run.spec.resume is not None else {}
    return np.asarray(state.get("start_cell", run.system.cell), dtype=np.float64)


def _temperature(kinetic_energy: float, ndof: int) -> float:
    """As ASE's ``Atoms.get_temperature``."""
    return 2 * kinetic_energy / (ndof * units.kB) if ndof > 0 else 0.0


def _plain(value: Any) -> Any:
    """Numpy scalars in a generator state as Python numbers."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    return value


def _host(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()
