"""Nudged-elastic-band paths on the workers, with the model calls batched across paths and requests.

An :class:`NEBSet` holds the paths a worker is optimising. Each path keeps an :class:`ase.mep.NEB` of its images
and an :class:`ase.optimize.FIRE` on it, and both are used as they are: the tangents, spring forces, climbing
image and FIRE's update are ASE's own code. Only the model calls are batched: each round the moving images of all
paths (and, in a path's first round, its two end points, needed for the energies) are evaluated together, as one
device batch (:meth:`NEBSet.batch`) or as host systems (:meth:`NEBSet.systems`), under the evaluation keys
``f"{task_id}#{image}"`` (image 0 is the initial end point). The results go onto the images as
:class:`~ase.calculators.singlepoint.SinglePointCalculator` results, and each path's FIRE goes on exactly as
``FIRE(neb).run(fmax, max_steps)`` would: the convergence test on the forces just evaluated, then one step.

The host work per path is small (images × atoms, a few numpy operations per round); a path joins when it is
added and leaves as soon as it ends, as the other in-flight groups do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.mep import NEB
from ase.optimize import FIRE

from ...models.prediction import ENERGY, FORCES, Prediction
from ...models.system import AtomicSystem
from ...models.tensor_batch import NeighborSource, TensorBatch, TensorPrediction
from ...protocol import NEBStopReason
from .groups import CallerStop, Ended
from .options import NEBSpec, image_mismatch
from .outcome import NEBOutcome, Progress

__all__ = ["NEBSet", "build_images", "image_key", "path_problem"]

#: How far (Å) the cell of an image may differ from the initial end point's in a periodic direction (ASE's limit).
_CELL_TOL = 1e-8
#: How far (Å) a fixed atom may be from its place in the initial end point.
_FIXED_TOL = 1e-6


def image_key(task_id: str, image: int) -> str:
    """The evaluation key of image ``image`` (0: the initial end point) of path ``task_id``."""
    return f"{task_id}#{image}"


def path_problem(initial: AtomicSystem, spec: NEBSpec) -> str | None:
    """Why ASE's NEB cannot take this path (None: it can): every image as the initial end point in atoms, order,
    boundary conditions and cell (:func:`~.options.image_mismatch`, the front end's check, held tighter here), and
    the fixed atoms where the initial end point has them (they are held there on every image)."""
    images = [spec.final, *spec.intermediates]
    for index, image in enumerate(images):
        if problem := image_mismatch(initial, image, _CELL_TOL):
            return f"{'the final end point' if index == 0 else f'intermediate {index - 1}'} {problem}"
    if spec.fixed is not None:
        fixed = np.asarray(spec.fixed)
        if fixed.size and (fixed.min() < 0 or fixed.max() >= initial.n_atoms):
            return f"fixed atom indices must lie in 0..{initial.n_atoms - 1}"
        for index, image in enumerate(images):
            if np.abs(image.positions[fixed] - initial.positions[fixed]).max(initial=0.0) > _FIXED_TOL:
                name = "the final end point" if index == 0 else f"intermediate {index - 1}"
                return f"fixed atoms must be where the initial end point has them; in {name} they are not"
    return None


def build_images(initial: AtomicSystem, spec: NEBSpec) -> NEB:
    """The path's :class:`~ase.mep.NEB`: end points and the given intermediates, or ``spec.options.images``
    images interpolated by ASE (IDPP or linear, minimum-image for periodic structures); fixed atoms as
    :class:`~ase.constraints.FixAtoms` on every image."""
    options = spec.options
    first, last = initial.to_ase(), spec.final.to_ase()
    if spec.intermediates:
        images = [first, *(image.to_ase() for image in spec.intermediates), last]
    else:
        images = [first, *(first.copy() for _ in range(options.images)), last]
    if spec.fixed is not None:
        for image in images:
            image.set_constraint(FixAtoms(indices=np.asarray(spec.fixed, dtype=int)))
    neb = NEB(images, k=options.spring_constant, climb=options.climb, method=options.method)
    if not spec.intermediates:
        neb.interpolate(method=options.interpolation, mic=bool(first.pbc.any()))
    return neb


@dataclass
class _Path:
    """One path: its NEB, the FIRE on it, and the latest prediction of each image."""

    key: str
    spec: NEBSpec
    neb: NEB
    optimizer: FIRE
    #: The latest prediction of each image, end points included (None: not evaluated yet).
    predictions: list[Prediction | None] = field(default_factory=list)
    steps: int = 0

    @property
    def images(self) -> list[Atoms]:
        return self.neb.images

    def due(self) -> list[int]:
        """The images to evaluate this round: the moving ones, and the end points until they have been."""
        last = len(self.images) - 1
        ends = [0, last] if self.predictions[0] is None else []
        return sorted(ends + list(range(1, last)))

    def take(self, evaluated: Mapping[int, Prediction]) -> NEBStopReason | None:
        """Put the round's results on the images; end the path or take one FIRE step (ASE's ``irun`` order)."""
        for index, prediction in evaluated.items():
            self.predictions[index] = prediction
            forces = prediction.forces
            if forces is None:
                raise ValueError("an NEB needs the model's forces, which it did not return")
            image = self.images[index]
            image.calc = SinglePointCalculator(image, energy=prediction.energy, forces=forces)
        if not all(_finite(prediction) for prediction in self.predictions):
            return "exploded"
        optimizable = self.optimizer.optimizable
        gradient = optimizable.get_gradient()
        if not np.isfinite(gradient).all():
            return "exploded"
        if self.optimizer.gradient_converged(gradient):
            return "converged"
        if self.steps >= self.spec.options.max_steps:
            return "max_steps"
        self.optimizer.step()
        self.optimizer.nsteps += 1
        self.steps += 1
        return None

    def ended(self, reason: NEBStopReason) -> Ended:
        """The path as it leaves, at the geometry just evaluated."""
        energies = [float(prediction.energy) for prediction in self.predictions]  # type: ignore[union-attr]
        neb_forces = self.neb.get_forces() if reason != "exploded" else None
        n_moving, n_atoms = len(self.images) - 2, len(self.images[0])
        per_atom = (
            np.full((n_moving, n_atoms), np.nan)
            if neb_forces is None
            else np.linalg.norm(neb_forces.reshape(n_moving, n_atoms, 3), axis=2)
        )
        moving = per_atom.max(axis=1) if n_atoms else np.zeros(n_moving)
        image_fmax = [0.0, *(float(value) for value in moving), 0.0]
        outcome = NEBOutcome(
            images=[AtomicSystem.from_ase(image) for image in self.images],
            energies=energies,
            image_fmax=image_fmax,
            steps=self.steps,
            converged=reason == "converged",
            stop_reason=reason,
            fmax=float(np.max(moving)) if n_moving else 0.0,
        )
        saddle = self.predictions[outcome.saddle_index]
        assert saddle is not None
        return Ended(self.key, outcome, saddle)


class NEBSet:
    """The NEB paths being optimised; see the module docstring.

    ``neighbors``, when given, lists the neighbours of every batch this set builds; images keep their evaluation
    keys across rounds, so a cache can follow them.
    """

    #: Evaluation keys are image keys, not task ids: the uncertainty watch does not apply.
    watched = False

    def __init__(self, device: torch.device | str = "cpu", neighbors: NeighborSource | None = None):
        self.device = torch.device(device)
        self.neighbors = neighbors
        self.paths: list[_Path] = []
        #: Added since the last round: they join when the next round is built.
        self._pending: list[_Path] = []
        #: The last round: each path evaluated and its images, in evaluation order.
        self._round: list[tuple[_Path, list[int]]] = []
        self._batch: TensorBatch | None = None

    def __len__(self) -> int:
        return len(self.paths) + len(self._pending)

    @property
    def n_atoms(self) -> int:
        """Atoms evaluated next round (each path's moving images, and its end points in its first round)."""
        return sum(len(path.images[0]) * len(path.due()) for path in self.paths + self._pending)

    def add(self, key: str, system: AtomicSystem, spec: NEBSpec) -> None:
        """Start path ``key`` from ``system`` (the initial end point) to ``spec.final``; its images are built now
        (interpolated unless given) and evaluated next round. Raises ValueError with :func:`path_problem`'s
        message for a path ASE's NEB cannot take (the front end checks it before)."""
        problem = path_problem(system, spec)
        if problem is not None:
            raise ValueError(problem)
        neb = build_images(system, spec)
        optimizer = FIRE(neb, logfile=None)
        optimizer.fmax = spec.options.fmax
        optimizer.max_steps = spec.options.max_steps
        self._pending.append(_Path(key, spec, neb, optimizer, [None] * len(neb.images)))

    def keys(self) -> list[str]:
        """The task ids of the paths held (those added this round last)."""
        return [path.key for path in self.paths + self._pending]

    def owner(self, key: str) -> str:
        """The task id of an image key."""
        return key.rsplit("#", 1)[0]

    def properties(self) -> tuple[str, ...]:
        return (ENERGY, FORCES)

    def progress(self) -> list[Progress]:
        """NEB paths report nothing before they end."""
        return []

    # -- the round -------------------------------------------------------------------------------------------
    def systems(self) -> list[tuple[str, AtomicSystem]]:
        """The round's images by evaluation key, to evaluate on the host (paths added since the last round join)."""
        self.paths += self._pending
        self._pending = []
        self._round = [(path, path.due()) for path in self.paths]
        return [
            (image_key(path.key, index), AtomicSystem.from_ase(path.images[index]))
            for path, indices in self._round
            for index in indices
        ]

    def batch(self) -> TensorBatch:
        """The round's images as one device batch (its ``keys`` are evaluation keys)."""
        round_ = self.systems()
        systems = [system for _, system in round_]
        batch = TensorBatch.from_systems(systems, self.device, keys=[key for key, _ in round_])
        batch.neighbors = self.neighbors
        self._batch = batch
        return batch

    def advance_tensors(
        self, prediction: TensorPrediction, failed: torch.Tensor | None = None, stop: CallerStop | None = None
    ) -> list[Ended]:
        """Take the prediction of the last :meth:`batch` (``failed``: a mask over its images; a path with a failed
        image is dropped without an outcome); step on; return the paths that ended."""
        batch = self._batch
        if batch is None:
            raise ValueError("advance_tensors without a batch")
        self._batch = None
        if prediction.energy.shape[0] != batch.n_systems:
            raise ValueError(f"a prediction of {prediction.energy.shape[0]} images for a batch of {batch.n_systems}")
        if prediction.forces is None:
            raise ValueError("an NEB needs the model's forces, which it did not return")
        energies = prediction.energy.detach().cpu().numpy()
        forces = prediction.forces.detach().to(torch.float64).cpu().numpy()
        failures = [False] * batch.n_systems if failed is None else failed.cpu().tolist()
        offsets = batch.atom_offsets.cpu().tolist()
        predictions: dict[str, Prediction | None] = {
            key: None if failures[b] else Prediction(float(energies[b]), forces[offsets[b] : offsets[b + 1]].copy())
            for b, key in enumerate(batch.keys)
        }
        return self.advance(predictions, stop)

    def advance(self, predictions: Mapping[str, Prediction | None], stop: CallerStop | None = None) -> list[Ended]:
        """Take the host predictions of :meth:`systems` by evaluation key (None or missing: the model failed; the
        image's path is dropped without an outcome); step on; return the paths that ended.

        ``stop`` is not used: NEB paths are not watched (:attr:`watched`), they end by their own criteria only.
        """
        ended, leaving = [], set()
        for path, indices in self._round:
            found = {index: predictions.get(image_key(path.key, index)) for index in indices}
            if any(prediction is None for prediction in found.values()):
                leaving.add(id(path))
                continue
            reason = path.take(found)  # type: ignore[arg-type]
            if reason is not None:
                ended.append(path.ended(reason))
                leaving.add(id(path))
        self._round = []
        self.paths = [path for path in self.paths if id(path) not in leaving]
        return ended


def _finite(prediction: Prediction | None) -> bool:
    if prediction is None or not np.isfinite(prediction.energy):
        return False
    return prediction.forces is None or bool(np.isfinite(prediction.forces).all())
