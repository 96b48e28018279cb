"""The words of the HTTP contract that the server and the clients share: property names, relaxation options,
how a relaxation ends and the states of a job. Error codes are in :mod:`mlipserve.errors`.

Each is declared here once. :class:`RelaxOptions` carries its constraints and descriptions as ``Annotated``
metadata, from which the server builds its request schema (``server/api/schemas.py``); the clients send the same
fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import Field

Property = Literal["energy", "forces", "stress"]
ALL_PROPERTIES: tuple[Property, ...] = get_args(Property)
#: Names of the batched optimizers (the server's registry: ``server/dynamics/optimizers.py``).
OptimizerName = Literal["fire", "bfgs"]
#: How a relaxation ended.
#: ``extrapolating``: the model's uncertainty went above the ``max_grade`` asked for.
StopReason = Literal["converged", "max_steps", "exploded", "extrapolating"]
#: The MD integrators (the server's registry: ``server/dynamics/integrators.py``).
#: ``nve``: velocity Verlet; ``langevin``: ASE's Langevin rule; ``csvr``: Bussi's stochastic velocity rescaling
#: (ASE's ``Bussi``); ``npt_crescale``: CSVR with the stochastic cell rescaling barostat of Bernetti and Bussi.
IntegratorName = Literal["nve", "langevin", "csvr", "npt_crescale"]
#: How a barostat deforms the cell: uniformly (shape kept), or each cell vector on its own (a triangular cell).
BarostatCoupling = Literal["isotropic", "anisotropic"]
#: How an MD run ended: all its steps done, forces or temperature beyond bounds, or the model's uncertainty
#: above ``max_grade``.
MDStopReason = Literal["completed", "exploded", "extrapolating"]
#: How nudged-elastic-band images are placed between the end points before optimising.
Interpolation = Literal["idpp", "linear"]
#: How an NEB ended.
NEBStopReason = Literal["converged", "max_steps", "exploded"]
#: How much of a structure's uncertainty to answer with: its figures, or per atom too.
UncertaintyDetail = Literal["summary", "per_atom"]
JobState = Literal["queued", "running", "done", "cancelled", "failed"]
FINAL_JOB_STATES: frozenset[JobState] = frozenset({"done", "cancelled", "failed"})


@dataclass(frozen=True)
class RelaxOptions:
    """How to relax (``/v1/relax``, a job's ``relax`` block); the field names are the request's.

    The defaults are the matbench-discovery protocol: FIRE with ASE's FrechetCellFilter, 0.05 eV/Å, 500 steps.
    """

    optimizer: Annotated[
        OptimizerName,
        Field(description="fire or bfgs, each with ASE's update rule and defaults (ase.optimize.FIRE, BFGS)."),
    ] = "fire"
    fmax: Annotated[
        float, Field(gt=0, description="Converged when every generalised force (atoms, cell) is below, eV/Å.")
    ] = 0.05
    max_steps: Annotated[int, Field(ge=0, le=100_000, description="Optimizer steps before giving up.")] = 500
    relax_cell: Annotated[
        bool,
        Field(description="Relax the cell too (structures periodic in all three directions); false keeps it fixed."),
    ] = True
    hydrostatic_strain: Annotated[bool, Field(description="Only let the cell scale uniformly (shape kept).")] = False
    scalar_pressure: Annotated[float, Field(description="Applied pressure, eV/Å³ (1 GPa = 0.006241509 eV/Å³).")] = 0.0
    trajectory_every: Annotated[
        int, Field(ge=0, description="Return a frame every this many steps, and the last one; 0: none.")
    ] = 0
    max_grade: Annotated[
        float | None,
        Field(
            gt=0,
            description="Stop (stop_reason 'extrapolating', with that geometry) once the model's uncertainty exceeds "
            "this: an MTP grade or ACE gamma (1: the edge of the active set), a committee's force spread (eV/Å). "
            "Needs a model that reports an uncertainty; null: never stop for it.",
        ),
    ] = None

    @classmethod
    def of(cls, options: RelaxOptions | Mapping[str, Any]) -> RelaxOptions:
        """Options given as a RelaxOptions or as a dict of some of its fields (e.g. ``{"fmax": 0.02}``)."""
        return _options_of(cls, options, "relaxation")

    def request(self) -> dict[str, Any]:
        """The options as request JSON."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MDOptions:
    """How to run molecular dynamics (``/v1/md``, a job's ``md`` block); the field names are the request's.

    Velocities are in Å/fs; a structure without given velocities starts from a Maxwell–Boltzmann distribution at
    ``temperature_K`` (ASE's ``MaxwellBoltzmannDistribution``, with the centre-of-mass motion removed), or at rest
    when no temperature is given.
    """

    integrator: Annotated[
        IntegratorName,
        Field(
            description="nve: velocity Verlet; langevin: ASE's Langevin rule; csvr: Bussi's stochastic velocity "
            "rescaling (NVT); npt_crescale: CSVR with stochastic cell rescaling (NPT, periodic structures)."
        ),
    ] = "nve"
    timestep_fs: Annotated[float, Field(gt=0, le=20, description="Time step, fs.")] = 1.0
    steps: Annotated[int, Field(ge=0, le=10_000_000, description="Time steps to run.")] = 1000
    temperature_K: Annotated[
        float | None,
        Field(
            ge=0,
            description="Thermostat target, K (needed by langevin, csvr, npt_crescale); also the temperature of "
            "the initial Maxwell-Boltzmann velocities when none are given. null with nve: start at rest.",
        ),
    ] = None
    pressure: Annotated[float, Field(description="npt_crescale: target pressure, eV/Å³ (1 GPa = 0.006241509).")] = 0.0
    friction_per_fs: Annotated[float, Field(gt=0, description="langevin: friction coefficient, 1/fs.")] = 0.01
    thermostat_time_fs: Annotated[float, Field(gt=0, description="csvr, npt_crescale: thermostat time, fs.")] = 100.0
    barostat_time_fs: Annotated[float, Field(gt=0, description="npt_crescale: barostat time, fs.")] = 1000.0
    compressibility: Annotated[
        float,
        Field(gt=0, description="npt_crescale: isothermal compressibility, Å³/eV (1/(100 GPa) = 1.602)."),
    ] = 1.602
    barostat: Annotated[
        BarostatCoupling, Field(description="npt_crescale: isotropic (shape kept) or anisotropic cell fluctuations.")
    ] = "isotropic"
    trajectory_every: Annotated[
        int, Field(ge=0, description="Record a frame every this many steps (and the last one); 0: none.")
    ] = 0
    seed: Annotated[
        int | None,
        Field(
            ge=0,
            lt=2**32,
            description="Seed of the initial velocities and of the thermostat noise; structure i uses seed + i. "
            "null: the server draws one and reports it.",
        ),
    ] = None
    max_temperature_K: Annotated[
        float, Field(gt=0, description="Stop as 'exploded' when the temperature goes above this, K.")
    ] = 50_000.0
    max_force: Annotated[float, Field(gt=0, description="Stop as 'exploded' when any force goes above this, eV/Å.")] = (
        1000.0
    )
    checkpoint_every: Annotated[
        int,
        Field(
            ge=0,
            description="Save the run's state every this many steps, so that a crashed worker's run resumes from "
            "there on another worker; 0: never.",
        ),
    ] = 1000
    max_grade: Annotated[
        float | None,
        Field(gt=0, description="Stop ('extrapolating') once the model's uncertainty exceeds this, as for /v1/relax."),
    ] = None

    @classmethod
    def of(cls, options: MDOptions | Mapping[str, Any]) -> MDOptions:
        """Options given as MDOptions or as a dict of some of its fields (e.g. ``{"steps": 200}``)."""
        return _options_of(cls, options, "MD")

    def request(self) -> dict[str, Any]:
        """The options as request JSON."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NEBOptions:
    """How to find a minimum-energy path (``/v1/neb``): ASE's ``NEB`` optimised by FIRE, the same settings."""

    images: Annotated[int, Field(ge=1, le=64, description="Images between the end points (when none are given).")] = 5
    interpolation: Annotated[
        Interpolation,
        Field(description="idpp: image-dependent pair potential (ASE's); linear: straight lines between end points."),
    ] = "idpp"
    climb: Annotated[bool, Field(description="Climbing image: the highest image climbs to the saddle point.")] = True
    spring_constant: Annotated[float, Field(gt=0, description="Spring constant between images, eV/Å².")] = 0.1
    method: Annotated[
        Literal["aseneb", "improvedtangent"], Field(description="ASE's NEB method: the tangent and spring force.")
    ] = "improvedtangent"
    fmax: Annotated[float, Field(gt=0, description="Converged when every image's NEB force is below, eV/Å.")] = 0.05
    max_steps: Annotated[int, Field(ge=0, le=100_000, description="FIRE steps before giving up.")] = 500
    optimizer: Annotated[Literal["fire"], Field(description="FIRE with ASE's update rule and defaults.")] = "fire"

    @classmethod
    def of(cls, options: NEBOptions | Mapping[str, Any]) -> NEBOptions:
        """Options given as NEBOptions or as a dict of some of its fields."""
        return _options_of(cls, options, "NEB")

    def request(self) -> dict[str, Any]:
        """The options as request JSON."""
        return dataclasses.asdict(self)


def _options_of(cls: Any, options: Any, what: str) -> Any:
    """``options`` as an instance of the options dataclass ``cls``; a dict's unknown names raise TypeError."""
    if isinstance(options, cls):
        return options
    names = [field.name for field in dataclasses.fields(cls)]
    if unknown := sorted(set(options) - set(names)):
        raise TypeError(f"unknown {what} option(s) {unknown}; the options are {names}")
    return cls(**options)
