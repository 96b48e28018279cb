"""Batched structure relaxation with in-flight batching: FIRE on atoms and cell (FrechetCellFilter semantics).

A :class:`RelaxationSet` holds the structures a worker is relaxing. Each round the worker evaluates all of their
current geometries in one batch together with any plain predictions, hands the predictions to :meth:`advance`,
and gets back the relaxations that ended; the others take one FIRE step. A structure that ends leaves at once and
a waiting one joins in the next round, so the batch stays full and nobody waits for the slowest.

Convergence is checked on every evaluation, on the generalised forces including the cell rows, as ASE's optimizer
does with a filter, which reproduces ASE's step counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...models.prediction import Prediction
from ...models.system import AtomicSystem
from ...protocol import StopReason
from .cell_filter import cell_forces, deformation, max_row_norm
from .optimizers import make_optimizer
from .options import RelaxSpec

#: A force beyond this (eV/Å) on any atom, or a non-finite one, flags a relaxation as exploded.
EXPLODED_FORCE = 1e3
#: A principal stretch of the cell beyond this factor (or below its inverse) flags a relaxation as exploded.
EXPLODED_STRETCH = 2.0


@dataclass
class Frame:
    step: int
    energy: float
    positions: np.ndarray
    cell: np.ndarray


@dataclass
class RelaxOutcome:
    """How a relaxation ended: the final geometry, how it got there and why it stopped."""

    system: AtomicSystem
    steps: int
    converged: bool
    stop_reason: StopReason
    #: The largest generalised force (atoms and cell rows) at the final geometry, eV/Å.
    fmax: float
    trajectory: list[Frame] = field(default_factory=list)


@dataclass
class _Member:
    key: str
    start: AtomicSystem
    spec: RelaxSpec
    has_cell: bool
    movable: np.ndarray  # (n,) bool
    steps: int = 0
    trajectory: list[Frame] = field(default_factory=list)


@dataclass
class Ended:
    """A relaxation that left the set: its outcome and the prediction at its final geometry."""

    key: str
    outcome: RelaxOutcome
    prediction: Prediction


class RelaxationSet:
    """The structures being relaxed; generalised coordinates of all of them live in one array of rows."""

    def __init__(self, optimizer: str = "fire"):
        self.optimizer = make_optimizer(optimizer)
        self.members: list[_Member] = []
        #: Generalised coordinates: each structure's atom rows, then 3 cell rows if its cell relaxes.
        self.x = np.zeros((0, 3))
        #: Positions, cells and deformation gradients at ``x``: computed once per round (one batched expm).
        self._geometry_at_x: tuple[list[np.ndarray], list[np.ndarray], np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.members)

    @property
    def n_atoms(self) -> int:
        return sum(member.start.n_atoms for member in self.members)

    def add(self, key: str, system: AtomicSystem, spec: RelaxSpec) -> None:
        """Start relaxing ``system``; it is evaluated in the next round."""
        options = spec.options
        has_cell = options.relax_cell and bool(system.pbc.all())
        movable = np.ones(system.n_atoms, dtype=bool)
        if spec.fixed is not None:
            movable[spec.fixed] = False
        self.members.append(_Member(key, system, spec, has_cell, movable))
        rows = [system.positions] + ([np.zeros((3, 3))] if has_cell else [])
        self.x = np.concatenate([self.x, *rows])
        self._geometry_at_x = None
        self.optimizer.add(system.n_atoms + 3 * has_cell)

    def keys(self) -> list[str]:
        """The keys of the structures being relaxed, in order."""
        return [member.key for member in self.members]

    def systems(self) -> list[tuple[str, AtomicSystem]]:
        """Each member's current geometry, to evaluate."""
        positions, cells, _ = self._geometry()
        return [
            (m.key, AtomicSystem(m.start.numbers, p, c, m.start.pbc))
            for m, p, c in zip(self.members, positions, cells, strict=True)
        ]

    def advance(self, predictions: dict[str, Prediction | None]) -> list[Ended]:
        """Take the evaluated geometries' predictions (None: the model failed); step on, return those that ended.

        Members whose prediction is None are dropped without an outcome (the caller reports their error).
        """
        positions, cells, deform = self._geometry()
        forces, stop, failed = self._generalised_forces(predictions, cells, deform)
        fmax = max_row_norm(forces, self.optimizer.owner, len(self.members))
        ended = []
        for i, member in enumerate(self.members):
            prediction = predictions.get(member.key)
            if failed[i] or prediction is None:
                continue
            options = member.spec.options
            if stop[i] is None and not np.isfinite(fmax[i]):
                stop[i] = "exploded"
            elif stop[i] is None and fmax[i] < options.fmax:
                stop[i] = "converged"
            elif stop[i] is None and member.steps >= options.max_steps:
                stop[i] = "max_steps"
            every = options.trajectory_every
            frame_due = every > 0 and (member.steps % every == 0 or stop[i] is not None)
            if frame_due and (not member.trajectory or member.trajectory[-1].step != member.steps):
                member.trajectory.append(Frame(member.steps, prediction.energy, positions[i], cells[i]))
            if (reason := stop[i]) is not None:
                system = AtomicSystem(member.start.numbers, positions[i], cells[i], member.start.pbc)
                converged = reason == "converged"
                outcome = RelaxOutcome(system, member.steps, converged, reason, float(fmax[i]), member.trajectory)
                ended.append(Ended(member.key, outcome, prediction))
        self._step_on(forces, np.array([not failed[i] and stop[i] is None for i in range(len(self.members))]))
        return ended

    def _generalised_forces(
        self, predictions: dict[str, Prediction | None], cells: list[np.ndarray], deform: np.ndarray
    ) -> tuple[np.ndarray, list[StopReason | None], np.ndarray]:
        """Forces on every row (atoms, then cell rows) as FrechetCellFilter defines them; which members exploded
        and which have no prediction."""
        k = len(self.members)
        owner = self.optimizer.owner
        forces = np.zeros_like(self.x)
        stop: list[StopReason | None] = [None] * k
        failed = np.zeros(k, dtype=bool)
        stress = np.zeros((k, 3, 3))
        rows = self._row_offsets()
        for i, member in enumerate(self.members):
            prediction = predictions.get(member.key)
            if prediction is None:
                failed[i] = True
                continue
            f = np.where(member.movable[:, None], prediction.forces, 0.0)
            if not np.isfinite(f).all() or np.abs(f).max(initial=0.0) > EXPLODED_FORCE:
                stop[i] = "exploded"
            forces[rows[i] : rows[i] + member.start.n_atoms] = f
            if member.has_cell:
                if prediction.stress is None:
                    raise ValueError("relaxing a cell needs the model's stress, which it did not return")
                if np.isfinite(prediction.stress).all():
                    stress[i] = prediction.stress
                else:
                    stop[i] = "exploded"

        log_strain, cell_index = self._log_strains()
        atom_rows = self._atom_row_mask()
        forces[atom_rows] = np.einsum("rj,rji->ri", forces[atom_rows], deform[owner[atom_rows]])
        with_cell = np.flatnonzero(cell_index >= 0)
        if len(with_cell) == 0:
            return forces, stop, failed
        options = [self.members[i].spec.options for i in with_cell]
        generalised = cell_forces(
            log_strain[cell_index[with_cell]],
            deform[with_cell],
            stress[with_cell],
            np.abs(np.linalg.det(np.stack([cells[i] for i in with_cell]))),
            np.array([o.hydrostatic_strain for o in options]),
            np.array([o.scalar_pressure for o in options]),
            np.array([float(self.members[i].start.n_atoms) for i in with_cell]),
        )
        for j, i in enumerate(with_cell):
            first = rows[i] + self.members[i].start.n_atoms
            forces[first : first + 3] = generalised[j]
        stretch = np.linalg.svd(deform[with_cell], compute_uv=False)
        too_far = (stretch.max(axis=1) > EXPLODED_STRETCH) | (stretch.min(axis=1) < 1 / EXPLODED_STRETCH)
        for i in with_cell[too_far]:
            stop[i] = "exploded"
        return forces, stop, failed

    def _step_on(self, forces: np.ndarray, going_on: np.ndarray) -> None:
        """One FIRE step for the members ``going_on``; the others leave the set."""
        if going_on.any():
            self.x = self.x + self.optimizer.step(forces, going_on)
            self._geometry_at_x = None
            for i in np.flatnonzero(going_on):
                self.members[i].steps += 1
        if not going_on.all():
            self.x = self.x[going_on[self.optimizer.owner]]
            self._geometry_at_x = None
            self.optimizer.remove(going_on)
            self.members = [m for m, keep in zip(self.members, going_on, strict=True) if keep]

    # -- geometry -------------------------------------------------------------------------------------------
    def _row_offsets(self) -> list[int]:
        offsets, row = [], 0
        for member in self.members:
            offsets.append(row)
            row += member.start.n_atoms + 3 * member.has_cell
        return offsets

    def _atom_row_mask(self) -> np.ndarray:
        mask = np.ones(len(self.x), dtype=bool)
        for offset, member in zip(self._row_offsets(), self.members, strict=True):
            if member.has_cell:
                first = offset + member.start.n_atoms
                mask[first : first + 3] = False
        return mask

    def _log_strains(self) -> tuple[np.ndarray, np.ndarray]:
        """log F of the members with a relaxed cell, and each member's index into it (-1: none)."""
        logs, index = [], np.full(len(self.members), -1, dtype=np.int64)
        for i, (offset, member) in enumerate(zip(self._row_offsets(), self.members, strict=True)):
            if member.has_cell:
                first = offset + member.start.n_atoms
                index[i] = len(logs)
                logs.append(self.x[first : first + 3] / member.start.n_atoms)
        return (np.array(logs) if logs else np.zeros((0, 3, 3))), index

    def _deformations(self, log_strain: np.ndarray, cell_index: np.ndarray, k: int) -> np.ndarray:
        deform = np.broadcast_to(np.eye(3), (k, 3, 3)).copy()
        with_cell = cell_index >= 0
        deform[with_cell] = deformation(log_strain)[cell_index[with_cell]]
        return deform

    def _geometry(self) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Current positions, cells and deformation gradients of every member, computed once per change of x."""
        if self._geometry_at_x is None:
            self._geometry_at_x = self._compute_geometry()
        return self._geometry_at_x

    def _compute_geometry(self) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        log_strain, cell_index = self._log_strains()
        deform = self._deformations(log_strain, cell_index, len(self.members))
        positions, cells = [], []
        for i, (offset, member) in enumerate(zip(self._row_offsets(), self.members, strict=True)):
            u = self.x[offset : offset + member.start.n_atoms]
            positions.append(u @ deform[i].T)
            cells.append(member.start.cell @ deform[i].T)
        return positions, cells, deform
