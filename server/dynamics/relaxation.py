"""Batched structure relaxation with in-flight batching: FIRE on atoms and cell (FrechetCellFilter semantics).

A :class:`RelaxationSet` holds the structures a worker is relaxing. Each round the worker evaluates all of their
current geometries in one batch, hands the prediction to :meth:`~RelaxationSet.advance_tensors`, and gets back
the relaxations that ended; the others take one FIRE step. A structure that ends leaves at once and a waiting one
joins in the next round, so the batch stays full and nobody waits for the slowest.

The state (generalised coordinates, velocities, cells, FIRE's per-structure parameters, convergence) lives in
torch tensors on the model's device, so a round is the model call plus a few tensor operations; only the
structures that ended are copied to the host (and trajectory frames, when asked for). A host-side interface
(:meth:`~RelaxationSet.systems`, :meth:`~RelaxationSet.advance` with numpy :class:`Prediction` objects) serves
callers that evaluate through ``predict_batch``.

Convergence is checked on every evaluation, on the generalised forces including the cell rows, as ASE's optimizer
does with a filter, which reproduces ASE's step counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...models.prediction import ENERGY, FORCES, STRESS, Prediction
from ...models.system import AtomicSystem
from ...models.tensor_batch import NeighborSource, TensorBatch, TensorPrediction
from ...protocol import StopReason
from .cell_filter import cell_forces, deformation, max_row_norm
from .groups import Ended
from .optimizers import make_optimizer
from .options import RelaxSpec
from .outcome import Frame, Progress, RelaxOutcome

#: A force beyond this (eV/Å) on any atom, or a non-finite one, flags a relaxation as exploded.
EXPLODED_FORCE = 1e3
#: A principal stretch of the cell beyond this factor (or below its inverse) flags a relaxation as exploded.
EXPLODED_STRETCH = 2.0

#: Stop codes of one round, as a small integer tensor on the device (0: goes on).
_CODES: tuple[StopReason | None, ...] = (None, "converged", "max_steps", "exploded")
_CONVERGED, _MAX_STEPS, _EXPLODED, _CALLER = 1, 2, 3, 4


@dataclass
class _Member:
    key: str
    start: AtomicSystem
    spec: RelaxSpec
    has_cell: bool
    steps: int = 0
    trajectory: list[Frame] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return self.start.n_atoms + 3 * self.has_cell


@dataclass
class _Evaluated:
    """The last round's geometry and results, kept (without copies) so :meth:`RelaxationSet.end` can use them."""

    index: dict[str, int]
    positions: torch.Tensor
    cells: torch.Tensor
    atom_offsets: list[int]
    prediction: TensorPrediction
    fmax: torch.Tensor


class RelaxationSet:
    """The structures being relaxed; generalised coordinates of all of them live in one tensor of rows.

    Each member owns a block of rows: its atoms (positions in the starting cell's frame), then 3 cell rows if its
    cell relaxes. ``neighbors``, when given, lists the neighbours of every batch this set builds (a device list
    reused across steps); members keep their keys, so a cache can follow them as others join and leave.
    """

    watched = True

    def __init__(
        self, optimizer: str = "fire", device: torch.device | str = "cpu", neighbors: NeighborSource | None = None
    ):
        self.device = torch.device(device)
        self.optimizer = make_optimizer(optimizer, self.device)
        self.neighbors = neighbors
        self.members: list[_Member] = []
        #: Added since the last round: they move to the device together when the next batch is built.
        self._pending: list[_Member] = []
        self._pending_fixed: list[np.ndarray] = []
        f64 = {"dtype": torch.float64, "device": self.device}
        #: Generalised coordinates: each member's atom rows, then 3 cell rows if its cell relaxes.
        self.x = torch.zeros((0, 3), **f64)
        # per member
        self._n_atoms = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._has_cell = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._start_cell = torch.zeros((0, 3, 3), **f64)
        self._pbc = torch.zeros((0, 3), dtype=torch.bool, device=self.device)
        self._hydrostatic = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._pressure = torch.zeros(0, **f64)
        self._fmax = torch.zeros(0, **f64)
        self._max_steps = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._steps = torch.zeros(0, dtype=torch.int64, device=self.device)
        # per atom
        self._numbers = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._movable = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._layout()
        self._geometry_at_x: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._evaluated: _Evaluated | None = None
        #: Whether a batch was handed out and its prediction not taken yet (between batch() and advance).
        self._handed_out = False

    def __len__(self) -> int:
        return len(self.members) + len(self._pending)

    @property
    def n_atoms(self) -> int:
        return sum(member.start.n_atoms for member in self.members + self._pending)

    def add(self, key: str, system: AtomicSystem, spec: RelaxSpec) -> None:
        """Start relaxing ``system``; it is evaluated in the next round."""
        has_cell = spec.options.relax_cell and bool(system.pbc.all())
        movable = np.ones(system.n_atoms, dtype=bool)
        if spec.fixed is not None:
            movable[spec.fixed] = False
        self._pending.append(_Member(key, system, spec, has_cell))
        self._pending_fixed.append(movable)

    def keys(self) -> list[str]:
        """The keys of the structures being relaxed, in order (those added this round last)."""
        return [member.key for member in self.members + self._pending]

    def owner(self, key: str) -> str:
        """Evaluation keys are task ids."""
        return key

    def progress(self) -> list[Progress]:
        """Relaxations report nothing before they end (their frames come with the outcome)."""
        return []

    def properties(self) -> tuple[str, ...]:
        """What each round asks the model for: stress too when a member is periodic in all three directions."""
        periodic = any(member.start.pbc.all() for member in self.members + self._pending)
        return (ENERGY, FORCES, STRESS) if periodic else (ENERGY, FORCES)

    # -- the device interface ------------------------------------------------------------------------------
    def batch(self) -> TensorBatch:
        """Every member's current geometry as one batch on the device (members added since the last round join)."""
        self._join()
        self._handed_out = True
        positions, cells, _, _ = self._geometry()
        return TensorBatch(
            positions=positions,
            cells=cells,
            numbers=self._numbers,
            batch=self._atom_owner,
            pbc=self._pbc,
            n_atoms=self._n_atoms,
            neighbors=self.neighbors,
            keys=[member.key for member in self.members],
        )

    def advance_tensors(
        self,
        prediction: TensorPrediction,
        failed: torch.Tensor | None = None,
        stop: Mapping[str, StopReason] | None = None,
    ) -> list[Ended]:
        """Take the prediction of the last :meth:`batch`; step on, return the relaxations that ended.

        ``failed`` (a boolean mask over members) marks members the model failed on: they are dropped without an
        outcome (the caller reports their error). ``stop`` ends members at the geometry just evaluated for a
        reason of the caller's (e.g. ``"extrapolating"``); it yields only to ``"exploded"``.
        """
        k = len(self.members)
        if prediction.energy.shape[0] != k:
            raise ValueError(f"a prediction of {prediction.energy.shape[0]} structures for a batch of {k}")
        failed = torch.zeros(k, dtype=torch.bool, device=self.device) if failed is None else failed.to(self.device)
        self._handed_out = False
        positions, cells, deform, log_strain = self._geometry()
        forces, exploded = self._generalised_forces(prediction, failed, cells, deform, log_strain)
        fmax = max_row_norm(forces, self.optimizer.owner, k)
        caller = torch.tensor([bool(stop) and member.key in stop for member in self.members], dtype=torch.bool)
        code = torch.where(fmax < self._fmax, _CONVERGED, torch.where(self._steps >= self._max_steps, _MAX_STEPS, 0))
        code = torch.where(caller.to(self.device), _CALLER, code)
        code = torch.where(exploded | ~torch.isfinite(fmax), _EXPLODED, code)
        codes, failed_host = code.cpu().tolist(), failed.cpu().tolist()  # the round's one synchronisation

        offsets = np.concatenate([[0], np.cumsum([member.start.n_atoms for member in self.members])]).tolist()
        ended = []
        for i, member in enumerate(self.members):
            if failed_host[i]:
                continue
            reason = stop[member.key] if codes[i] == _CALLER and stop is not None else _CODES[codes[i]]
            every = member.spec.options.trajectory_every
            frame_due = every > 0 and (member.steps % every == 0 or reason is not None)
            if frame_due and (not member.trajectory or member.trajectory[-1].step != member.steps):
                rows = slice(offsets[i], offsets[i + 1])
                frame = Frame(member.steps, float(prediction.energy[i]), _host(positions[rows]), _host(cells[i]))
                member.trajectory.append(frame)
            if reason is not None:
                ended.append(self._ended(member, i, reason, offsets, positions, cells, prediction, fmax))

        going_on = (code == 0) & ~failed
        self._evaluated = _Evaluated(
            {m.key: i for i, m in enumerate(self.members)}, positions, cells, offsets, prediction, fmax
        )
        self.x = self.x + self.optimizer.step(forces, going_on)
        self._steps = self._steps + going_on.to(torch.int64)
        self._geometry_at_x = None
        for i, member in enumerate(self.members):
            member.steps += codes[i] == 0 and not failed_host[i]
        if len(ended) + sum(failed_host) > 0:
            self._remove(going_on)
        return ended

    def end(self, key: str, reason: StopReason) -> Ended:
        """End member ``key`` now, at the last geometry evaluated (the one its latest prediction belongs to).

        Call it between :meth:`advance_tensors` and the next :meth:`batch`; to end members at the geometry of a
        batch handed out, pass ``stop`` to :meth:`advance_tensors` (or :meth:`advance`) instead. Raises KeyError
        for a key that is not relaxing and ValueError for one not evaluated yet or while a batch is out.
        """
        if self._handed_out:
            raise ValueError("a batch is being evaluated: end members with advance(..., stop={key: reason})")
        index = next((i for i, member in enumerate(self.members) if member.key == key), None)
        if index is None:
            if any(member.key == key for member in self._pending):
                raise ValueError(f"relaxation {key!r} has not been evaluated yet")
            raise KeyError(key)
        last = self._evaluated
        if last is None or key not in last.index:
            raise ValueError(f"relaxation {key!r} has not been evaluated yet")
        member = self.members[index]
        member.steps -= 1  # it stepped on after its last evaluation
        every = member.spec.options.trajectory_every
        if every > 0 and member.trajectory and member.trajectory[-1].step != member.steps:
            i, offsets = last.index[key], last.atom_offsets
            rows = slice(offsets[i], offsets[i + 1])
            energy = float(last.prediction.energy[i])
            member.trajectory.append(Frame(member.steps, energy, _host(last.positions[rows]), _host(last.cells[i])))
        ended = self._ended(
            member, last.index[key], reason, last.atom_offsets, last.positions, last.cells, last.prediction, last.fmax
        )
        keep = torch.ones(len(self.members), dtype=torch.bool, device=self.device)
        keep[index] = False
        self._remove(keep)
        return ended

    # -- the host interface --------------------------------------------------------------------------------
    def systems(self) -> list[tuple[str, AtomicSystem]]:
        """Each member's current geometry, to evaluate on the host (members added since the last round join)."""
        batch = self.batch()
        return list(zip(batch.keys, batch.to_systems(), strict=True))

    def advance(
        self, predictions: Mapping[str, Prediction | None], stop: Mapping[str, StopReason] | None = None
    ) -> list[Ended]:
        """Take the host predictions of :meth:`systems`' geometries (None: the model failed); step on, return
        those that ended. Members whose prediction is None are dropped without an outcome."""
        found = [predictions.get(member.key) for member in self.members]
        failed = torch.tensor([p is None for p in found], dtype=torch.bool)
        stand_in = [
            p if p is not None else Prediction(np.nan, np.zeros((m.start.n_atoms, 3)))
            for p, m in zip(found, self.members, strict=True)
        ]
        stressed = [p for p in stand_in if p.stress is not None]
        energy = torch.tensor([p.energy for p in stand_in], dtype=torch.float64)
        forces = torch.as_tensor(np.concatenate([np.zeros((0, 3))] + [p.forces for p in stand_in]))
        stress = None
        if stressed:
            stress = torch.as_tensor(np.stack([np.zeros((3, 3)) if p.stress is None else p.stress for p in stand_in]))
        uncertainty = [p.uncertainty for p in stand_in]
        tensors = TensorPrediction(
            energy.to(self.device),
            forces.to(self.device, torch.float64),
            None if stress is None else stress.to(self.device, torch.float64),
            uncertainty if any(u is not None for u in uncertainty) else None,
        )
        return self.advance_tensors(tensors, failed, stop)

    # -- forces ---------------------------------------------------------------------------------------------
    def _generalised_forces(
        self,
        prediction: TensorPrediction,
        failed: torch.Tensor,
        cells: torch.Tensor,
        deform: torch.Tensor,
        log_strain: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forces on every row (atoms, then cell rows) as FrechetCellFilter defines them, and which members
        exploded (a huge or non-finite force or stress, or a cell stretched too far)."""
        k, owner = len(self.members), self._atom_owner
        if prediction.forces is None:
            raise ValueError("relaxing needs the model's forces, which it did not return")
        keep = self._movable & ~failed[owner]
        f = torch.where(keep[:, None], prediction.forces.to(torch.float64), 0.0)
        bad_atom = (~torch.isfinite(f) | (f.abs() > EXPLODED_FORCE)).any(dim=1)
        exploded = f.new_zeros(k).index_add_(0, owner, bad_atom.to(f.dtype)) > 0

        relaxing_cell = self._has_cell & ~failed
        if prediction.stress is None:
            if bool(relaxing_cell.any()):
                raise ValueError("relaxing a cell needs the model's stress, which it did not return")
            stress = torch.zeros((k, 3, 3), dtype=torch.float64, device=self.device)
        else:
            stress = prediction.stress.to(torch.float64)
        stress_ok = torch.isfinite(stress).all(dim=2).all(dim=1)
        exploded |= relaxing_cell & ~stress_ok
        stress = torch.where((relaxing_cell & stress_ok)[:, None, None], stress, 0.0)

        forces = torch.zeros((self.x.shape[0] + 1, 3), dtype=torch.float64, device=self.device)  # + a scratch row
        forces[self._atom_rows] = torch.einsum("rj,rji->ri", f, deform[owner])
        generalised = cell_forces(
            log_strain,
            deform,
            stress,
            torch.linalg.det(cells).abs(),
            self._hydrostatic,
            self._pressure,
            self._n_atoms.to(torch.float64),
        )
        generalised = torch.where(self._has_cell[:, None, None], generalised, 0.0)
        forces[self._cell_rows.reshape(-1)] = generalised.reshape(-1, 3)
        stretch = torch.linalg.svdvals(deform)
        too_far = (stretch.max(dim=1).values > EXPLODED_STRETCH) | (stretch.min(dim=1).values < 1 / EXPLODED_STRETCH)
        return forces[:-1], exploded | (self._has_cell & too_far)

    def _ended(
        self,
        member: _Member,
        i: int,
        reason: StopReason,
        offsets: Sequence[int],
        positions: torch.Tensor,
        cells: torch.Tensor,
        prediction: TensorPrediction,
        fmax: torch.Tensor,
    ) -> Ended:
        """Member ``member`` (row ``i`` of the evaluated batch) as it leaves: copied to the host."""
        rows = slice(offsets[i], offsets[i + 1])
        system = AtomicSystem(member.start.numbers, _host(positions[rows]), _host(cells[i]), member.start.pbc)
        result = Prediction(energy=float(prediction.energy[i]))
        if prediction.forces is not None:
            result.forces = _host(prediction.forces[rows])
        if prediction.stress is not None and system.is_periodic and system.volume >= 1e-6:
            result.stress = _host(prediction.stress[i])
        if prediction.uncertainty is not None:
            result.uncertainty = prediction.uncertainty[i]
        converged = reason == "converged"
        outcome = RelaxOutcome(system, member.steps, converged, reason, float(fmax[i]), member.trajectory)
        return Ended(member.key, outcome, result)

    # -- membership -------------------------------------------------------------------------------------------
    def _join(self) -> None:
        """Move the members added since the last round onto the device, all in one copy."""
        if not self._pending:
            return
        new, movable = self._pending, self._pending_fixed
        self._pending, self._pending_fixed = [], []
        rows = []
        for member in new:
            rows += [member.start.positions] + ([np.zeros((3, 3))] if member.has_cell else [])
        options = [member.spec.options for member in new]

        def upload(values, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values)).to(self.device, dtype)

        f64, i64 = torch.float64, torch.int64
        self.x = torch.cat([self.x, upload(np.concatenate(rows), f64)])
        self._n_atoms = torch.cat([self._n_atoms, upload([m.start.n_atoms for m in new], i64)])
        self._has_cell = torch.cat([self._has_cell, upload([m.has_cell for m in new], torch.bool)])
        self._start_cell = torch.cat([self._start_cell, upload(np.stack([m.start.cell for m in new]), f64)])
        self._pbc = torch.cat([self._pbc, upload(np.stack([m.start.pbc for m in new]), torch.bool)])
        self._hydrostatic = torch.cat([self._hydrostatic, upload([o.hydrostatic_strain for o in options], torch.bool)])
        self._pressure = torch.cat([self._pressure, upload([o.scalar_pressure for o in options], f64)])
        self._fmax = torch.cat([self._fmax, upload([o.fmax for o in options], f64)])
        self._max_steps = torch.cat([self._max_steps, upload([o.max_steps for o in options], i64)])
        self._steps = torch.cat([self._steps, upload([m.steps for m in new], i64)])
        self._numbers = torch.cat([self._numbers, upload(np.concatenate([m.start.numbers for m in new]), i64)])
        self._movable = torch.cat([self._movable, upload(np.concatenate(movable), torch.bool)])
        self.optimizer.add([member.n_rows for member in new])
        self.members += new
        self._layout()
        self._geometry_at_x = None

    def _remove(self, keep: torch.Tensor) -> None:
        """Keep only the members where the boolean mask ``keep`` (on the device) is True."""
        owner, atom_owner = self.optimizer.owner, self._atom_owner
        self.x = self.x[keep[owner]]
        self.optimizer.remove(keep)
        for name in ("_n_atoms", "_has_cell", "_start_cell", "_pbc", "_hydrostatic", "_pressure", "_fmax"):
            setattr(self, name, getattr(self, name)[keep])
        self._max_steps, self._steps = self._max_steps[keep], self._steps[keep]
        atoms = keep[atom_owner]
        self._numbers, self._movable = self._numbers[atoms], self._movable[atoms]
        kept = keep.cpu().tolist()
        self.members = [member for member, stays in zip(self.members, kept, strict=True) if stays]
        self._layout()
        self._geometry_at_x = None

    def _layout(self) -> None:
        """Index tensors of the row layout: each atom's row and member, and each member's cell rows.

        A member without a relaxed cell has its cell rows pointed at a scratch row one past the end.
        """
        n_total = sum(member.start.n_atoms for member in self.members)
        k, device = len(self.members), self.device
        n_atoms = self._n_atoms
        rows = n_atoms + 3 * self._has_cell.to(torch.int64)
        first_row = torch.cumsum(rows, 0) - rows
        first_atom = torch.cumsum(n_atoms, 0) - n_atoms
        self._atom_owner = torch.repeat_interleave(torch.arange(k, device=device), n_atoms, output_size=n_total)
        local = torch.arange(n_total, device=device) - first_atom[self._atom_owner]
        self._atom_rows = first_row[self._atom_owner] + local
        cell_rows = (first_row + n_atoms)[:, None] + torch.arange(3, device=device)
        scratch = torch.full_like(cell_rows, int(self.x.shape[0]))
        self._cell_rows = torch.where(self._has_cell[:, None], cell_rows, scratch)

    # -- geometry -------------------------------------------------------------------------------------------
    def _geometry(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions, cells, deformation gradients and log F of every member, computed once per change of x."""
        if self._geometry_at_x is None:
            self._geometry_at_x = self._compute_geometry()
        return self._geometry_at_x

    def _compute_geometry(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        padded = torch.cat([self.x, self.x.new_zeros((1, 3))])
        has_cell = self._has_cell[:, None, None]
        log_strain = torch.where(has_cell, padded[self._cell_rows] / self._n_atoms[:, None, None], 0.0)
        identity = torch.eye(3, dtype=torch.float64, device=self.device)
        deform = torch.where(has_cell, deformation(log_strain), identity)
        u = self.x[self._atom_rows]
        positions = torch.einsum("ri,rji->rj", u, deform[self._atom_owner])
        cells = self._start_cell @ deform.transpose(1, 2)
        return positions, cells, deform, log_strain


def _host(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()
