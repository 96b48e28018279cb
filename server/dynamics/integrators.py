"""Batched MD integrators: velocity Verlet, ASE's Langevin rule, Bussi's CSVR thermostat and the C-rescale barostat.

Written here rather than taken from ASE or torch-sim because the batch changes every step: runs join and leave
:class:`~.md.MDSet` at any round, with different integrators, time steps and targets side by side. ASE's
integrators advance one structure each, and torch-sim's state objects fix the batch for a whole run. The tests
(``tests/test_md_engine.py``) check each rule step for step against ASE 3.29 (``VelocityVerlet``, ``Langevin``,
``Bussi``) with the same model and the same seed, and the NPT rule by its statistics.

A step is split around the force evaluation, as velocity Verlet is: :meth:`Integrator.begin` runs everything
before it (thermostat and barostat moves, the first half kick, the drift) and :meth:`Integrator.finish` the rest
(the second half kick). Random numbers come from one ``numpy.random.Generator`` per run on the host
(:meth:`Integrator.draw`), drawn in exactly the order ASE's integrator draws from its ``rng``, then uploaded.

Units are ASE's inside (Å, eV, amu, ASE time units; velocities Å per ASE time unit). Fixed atoms (ASE's
``FixAtoms``) get no force and no velocity; an NPT run scales them with the cell.

NPT (``npt_crescale``) is Bussi's CSVR thermostat with the stochastic cell rescaling barostat of Bernetti &
Bussi, J. Chem. Phys. 153, 114107 (2020), applied at the start of each step with the pressure of the last
evaluation (kinetic + virial). Isotropic: the log-volume moves by
``-(β dt/τ_p)(P₀ - P - kT/V) + sqrt(2 kT β dt/(V τ_p)) R``; anisotropic: each component of an upper-triangular
strain moves the same way with a third of the mobility (diagonal: ``P₀ - P_dd - kT/V``; off-diagonal: ``-P_ij``),
so the volume fluctuates as in the isotropic case and the cell does not rotate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from ase import units

from ...protocol import IntegratorName, MDOptions

__all__ = ["INTEGRATORS", "Dynamics", "Integrator", "member_parameters"]


@dataclass
class Dynamics:
    """The runs one integrator advances this round: atoms back to back (``owner``: each atom's run, 0..k-1).

    The integrator changes ``positions``, ``velocities``, ``cells`` and ``scratch`` (what a step carries from
    :meth:`Integrator.begin` to :meth:`Integrator.finish`) in place; per-run parameters are ASE units.
    """

    positions: torch.Tensor  # (n, 3) Å
    velocities: torch.Tensor  # (n, 3) Å / ASE time
    forces: torch.Tensor  # (n, 3) eV/Å, zero on fixed atoms
    scratch: torch.Tensor  # (n, 3)
    masses: torch.Tensor  # (n, 1) amu
    movable: torch.Tensor  # (n,) bool
    owner: torch.Tensor  # (n,) int64
    cells: torch.Tensor  # (k, 3, 3)
    stress: torch.Tensor  # (k, 3, 3) eV/Å³ of the last evaluation (ASE's sign)
    n_atoms: torch.Tensor  # (k,) int64
    ndof: torch.Tensor  # (k,) float64: 3 n - 3 fixed
    #: (k, len(PARAMETERS)) float64, columns as :data:`PARAMETERS`.
    parameters: torch.Tensor
    #: This step's noise: per atom (n, ·) and per run (k, ·), or None where the integrator draws none.
    atom_noise: torch.Tensor | None = None
    run_noise: torch.Tensor | None = None

    def parameter(self, name: str) -> torch.Tensor:
        return self.parameters[:, PARAMETERS.index(name)]

    def per_atom(self, values: torch.Tensor) -> torch.Tensor:
        """(k,) values as an (n, 1) column, each atom its run's."""
        return values[self.owner][:, None]

    def sum_per_run(self, values: torch.Tensor) -> torch.Tensor:
        """Sum (n, ...) values over each run's atoms."""
        out = values.new_zeros((self.cells.shape[0], *values.shape[1:]))
        return out.index_add_(0, self.owner, values)

    def kinetic_energy(self) -> torch.Tensor:
        return self.sum_per_run(0.5 * self.masses * self.velocities**2).sum(dim=1)


#: Per-run parameter columns: time step, kT (eV), friction (1/ASE time), thermostat and barostat times (ASE time),
#: compressibility (Å³/eV), target pressure (eV/Å³), anisotropic barostat (0/1).
PARAMETERS = ("dt", "kT", "friction", "taut", "taup", "compressibility", "pressure", "anisotropic")


def member_parameters(options: MDOptions) -> list[float]:
    """One run's :data:`PARAMETERS` row from its options."""
    kelvin = options.temperature_K or 0.0
    return [
        options.timestep_fs * units.fs,
        kelvin * units.kB,
        options.friction_per_fs / units.fs,
        options.thermostat_time_fs * units.fs,
        options.barostat_time_fs * units.fs,
        options.compressibility,
        options.pressure,
        float(options.barostat == "anisotropic"),
    ]


class Integrator(Protocol):
    #: Whether the rule needs a target temperature.
    thermostatted: bool

    def draw(self, rng: np.random.Generator, n_atoms: int, ndof: int, options: MDOptions) -> tuple[np.ndarray, ...]:
        """One step's noise of one run: (per-atom rows (n, ·), per-run values (·,)); empty where none."""

    def begin(self, d: Dynamics) -> None:
        """The step up to the force evaluation."""

    def finish(self, d: Dynamics) -> None:
        """The step after the force evaluation."""


def _no_noise(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n_atoms, 0)), np.zeros(0)


def _kick(d: Dynamics) -> None:
    """Half a velocity-Verlet kick."""
    d.velocities += 0.5 * d.per_atom(d.parameter("dt")) * d.forces / d.masses


def _drift(d: Dynamics) -> None:
    step = d.per_atom(d.parameter("dt")) * d.velocities
    d.positions += torch.where(d.movable[:, None], step, 0.0)


def _pin(d: Dynamics) -> None:
    """Fixed atoms have no velocity."""
    d.velocities.masked_fill_(~d.movable[:, None], 0.0)


class VelocityVerlet:
    """ASE's ``VelocityVerlet``."""

    thermostatted = False

    def draw(self, rng: np.random.Generator, n_atoms: int, ndof: int, options: MDOptions) -> tuple[np.ndarray, ...]:
        return _no_noise(n_atoms)

    def begin(self, d: Dynamics) -> None:
        _kick(d)
        _drift(d)

    def finish(self, d: Dynamics) -> None:
        _kick(d)
        _pin(d)


class Langevin:
    """ASE 3.29's ``Langevin`` (Vanden-Eijnden & Ciccotti's propagator) with its default ``fixcm=True``."""

    thermostatted = True

    def draw(self, rng: np.random.Generator, n_atoms: int, ndof: int, options: MDOptions) -> tuple[np.ndarray, ...]:
        xi = rng.standard_normal(size=(n_atoms, 3))
        eta = rng.standard_normal(size=(n_atoms, 3))
        return np.hstack([xi, eta]), np.zeros(0)

    def _coefficients(self, d: Dynamics) -> tuple[torch.Tensor, ...]:
        dt, fr = d.per_atom(d.parameter("dt")), d.per_atom(d.parameter("friction"))
        sigma = torch.sqrt(2 * d.per_atom(d.parameter("kT")) * fr / d.masses)
        c1 = dt / 2.0 - dt * dt * fr / 8.0
        c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
        return dt, c1, c2, sigma

    def begin(self, d: Dynamics) -> None:
        assert d.atom_noise is not None
        dt, c1, c2, sigma = self._coefficients(d)
        fr = d.per_atom(d.parameter("friction"))
        c3 = torch.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr * sigma / 8.0
        c5 = dt**1.5 * sigma / (2 * math.sqrt(3))
        c4 = fr / 2.0 * c5
        xi, eta = d.atom_noise[:, :3], d.atom_noise[:, 3:]
        rnd_pos = c5 * eta
        rnd_vel = c3 * xi - c4 * eta
        n = d.per_atom(d.n_atoms.to(torch.float64))  # fixcm
        rnd_pos = rnd_pos - d.sum_per_run(rnd_pos)[d.owner] / n
        rnd_vel = rnd_vel - d.sum_per_run(rnd_vel * d.masses)[d.owner] / (d.masses * n)
        factor = torch.where(n > 1, torch.sqrt(n / (n - 1.0).clamp(min=1.0)), 0.0)
        rnd_pos, rnd_vel = rnd_pos * factor, rnd_vel * factor

        d.velocities += c1 * d.forces / d.masses - c2 * d.velocities + rnd_vel
        x = d.positions.clone()
        d.positions += torch.where(d.movable[:, None], dt * d.velocities + rnd_pos, 0.0)
        d.velocities.copy_((d.positions - x - rnd_pos) / dt)
        d.scratch.copy_(rnd_vel)

    def finish(self, d: Dynamics) -> None:
        _, c1, c2, _ = self._coefficients(d)
        d.velocities += c1 * d.forces / d.masses - c2 * d.velocities + d.scratch
        _pin(d)


def _bussi_draw(rng: np.random.Generator, ndof: int) -> list[float]:
    normal = rng.standard_normal()
    return [normal, 2.0 * rng.standard_gamma(0.5 * (ndof - 1))]


def _bussi_scale(d: Dynamics, noise: torch.Tensor) -> None:
    """ASE's ``Bussi.scale_velocities`` (Bussi et al. 2007, eq. A7); a run at rest stays at rest."""
    kinetic = d.kinetic_energy()
    exp_term = torch.exp(-d.parameter("dt") / d.parameter("taut"))
    target = 0.5 * d.parameter("kT") * d.ndof
    resting = kinetic <= 0
    scaling = (1 - exp_term) * target / torch.where(resting, 1.0, kinetic) / d.ndof
    r1, chi2 = noise[:, 0], noise[:, 1]
    alpha = torch.sqrt(exp_term + scaling * (chi2 + r1**2) + 2 * r1 * torch.sqrt(exp_term * scaling))
    d.velocities *= d.per_atom(torch.where(resting, 1.0, alpha))


class CSVR(VelocityVerlet):
    """ASE 3.29's ``Bussi``: stochastic velocity rescaling before each velocity-Verlet step."""

    thermostatted = True

    def draw(self, rng: np.random.Generator, n_atoms: int, ndof: int, options: MDOptions) -> tuple[np.ndarray, ...]:
        return np.zeros((n_atoms, 0)), np.array(_bussi_draw(rng, ndof))

    def begin(self, d: Dynamics) -> None:
        assert d.run_noise is not None
        _bussi_scale(d, d.run_noise)
        super().begin(d)


#: Upper-triangular strain components of the anisotropic barostat, in the order their noise is drawn.
_STRAIN = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


class CRescale(VelocityVerlet):
    """CSVR with stochastic cell rescaling (Bernetti & Bussi 2020); see the module docstring."""

    thermostatted = True

    def draw(self, rng: np.random.Generator, n_atoms: int, ndof: int, options: MDOptions) -> tuple[np.ndarray, ...]:
        barostat = np.zeros(6)
        barostat[: 6 if options.barostat == "anisotropic" else 1] = rng.standard_normal(
            6 if options.barostat == "anisotropic" else 1
        )
        return np.zeros((n_atoms, 0)), np.concatenate([barostat, _bussi_draw(rng, ndof)])

    def begin(self, d: Dynamics) -> None:
        assert d.run_noise is not None
        self._rescale(d, d.run_noise[:, :6])
        _bussi_scale(d, d.run_noise[:, 6:])
        super().begin(d)

    def _rescale(self, d: Dynamics, noise: torch.Tensor) -> None:
        volume = torch.linalg.det(d.cells).abs()
        v = d.velocities
        kinetic = d.sum_per_run(d.masses[:, :, None] * v[:, :, None] * v[:, None, :])
        pressure = kinetic / volume[:, None, None] - d.stress
        pressure = 0.5 * (pressure + pressure.transpose(1, 2))
        dt, kT, taup = d.parameter("dt"), d.parameter("kT"), d.parameter("taup")
        beta, target = d.parameter("compressibility"), d.parameter("pressure")
        mobility = beta * dt / taup
        drive = target + kT / volume  # P₀ + kT/V

        # isotropic: the log-volume
        scalar = torch.diagonal(pressure, dim1=1, dim2=2).sum(dim=1) / 3
        log_volume = -mobility * (drive - scalar) + torch.sqrt(2 * kT * mobility / volume) * noise[:, 0]
        eye = torch.eye(3, dtype=v.dtype, device=v.device)
        isotropic = torch.exp(log_volume / 3)[:, None, None] * eye

        # anisotropic: an upper-triangular strain
        strain = (mobility / 3)[:, None, None] * (pressure - drive[:, None, None] * eye)
        rows, cols = zip(*_STRAIN, strict=True)
        random = torch.zeros_like(strain)
        random[:, rows, cols] = noise
        strain = torch.triu(strain + torch.sqrt(2 * kT * mobility / (3 * volume))[:, None, None] * random)
        anisotropic = torch.triu(strain, 1) + torch.diag_embed(torch.exp(torch.diagonal(strain, dim1=1, dim2=2)))

        mu = torch.where(d.parameter("anisotropic")[:, None, None] > 0, anisotropic, isotropic)
        d.positions.copy_(torch.einsum("ni,nji->nj", d.positions, mu[d.owner]))
        d.cells.copy_(d.cells @ mu.transpose(1, 2))
        inverse = torch.linalg.inv(mu)
        d.velocities.copy_(torch.einsum("ni,nji->nj", v, inverse[d.owner]))


INTEGRATORS: dict[IntegratorName, Integrator] = {
    "nve": VelocityVerlet(),
    "langevin": Langevin(),
    "csvr": CSVR(),
    "npt_crescale": CRescale(),
}
