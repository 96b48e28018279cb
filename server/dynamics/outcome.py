"""How a relaxation, an MD run or an NEB ended, and what a run reports on its way, as plain data: free of torch,
so the HTTP front end and the Redis codec can use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...models.system import AtomicSystem
from ...protocol import MDStopReason, NEBStopReason, StopReason

__all__ = ["Frame", "MDCheckpoint", "MDFrame", "MDOutcome", "NEBOutcome", "Progress", "RelaxOutcome"]


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
class MDFrame:
    """One recorded MD step. Velocities in Å/fs; ``stress`` (3×3, eV/Å³) for periodic structures."""

    step: int
    time_fs: float
    positions: np.ndarray
    velocities: np.ndarray
    cell: np.ndarray
    #: Potential energy, eV.
    energy: float
    kinetic_energy: float
    temperature: float
    stress: np.ndarray | None = None


@dataclass
class MDCheckpoint:
    """Everything needed to continue an MD run exactly where it was: the last state and the integrator's own.

    ``integrator_state`` holds the integrator's extra variables (e.g. a barostat's) and ``rng_state`` the noise
    generator's state (numpy's ``bit_generator.state`` dict), both plain data that msgpack can carry.
    """

    step: int
    positions: np.ndarray
    velocities: np.ndarray
    cell: np.ndarray
    integrator_state: dict[str, Any] = field(default_factory=dict)
    rng_state: dict[str, Any] | None = None


@dataclass
class MDOutcome:
    """How an MD run ended: the final structure and velocities, the steps run and why it stopped.

    The frames (``MDOptions.trajectory_every``) are not here: they travel as :class:`Progress` while the run goes
    on, so a resumed run's front end holds them all.
    """

    system: AtomicSystem
    #: Å/fs
    velocities: np.ndarray
    steps: int
    stop_reason: MDStopReason
    time_fs: float
    kinetic_energy: float
    temperature: float
    #: The seed the run used (the request's + the structure's index, or one drawn by the server).
    seed: int


@dataclass
class Progress:
    """What a long-running task reports before it ends: a trajectory frame, and/or a checkpoint to resume from.

    A resumed run may report a frame again; the front end keeps one frame per step.
    """

    task_id: str
    frame: MDFrame | None = None
    checkpoint: MDCheckpoint | None = None


@dataclass
class NEBOutcome:
    """A nudged-elastic-band result: every image (end points included) with its energy, and the barrier."""

    images: list[AtomicSystem]
    energies: list[float]
    #: The largest NEB force (component perpendicular to the path, the climbing image's full force), per image.
    image_fmax: list[float]
    steps: int
    converged: bool
    stop_reason: NEBStopReason
    #: The largest NEB force over all moving images at the end, eV/Å.
    fmax: float

    @property
    def saddle_index(self) -> int:
        return int(np.argmax(self.energies))

    @property
    def barrier_forward(self) -> float:
        return max(self.energies) - self.energies[0]

    @property
    def barrier_backward(self) -> float:
        return max(self.energies) - self.energies[-1]
