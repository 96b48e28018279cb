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
OptimizerName = Literal["fire"]
#: How a relaxation ended.
#: ``extrapolating``: the model's uncertainty went above the ``max_grade`` asked for.
StopReason = Literal["converged", "max_steps", "exploded", "extrapolating"]
#: How much of a structure's uncertainty to answer with: its figures, or per atom too.
UncertaintyDetail = Literal["summary", "per_atom"]
JobState = Literal["queued", "running", "done", "cancelled", "failed"]
FINAL_JOB_STATES: frozenset[JobState] = frozenset({"done", "cancelled", "failed"})


@dataclass(frozen=True)
class RelaxOptions:
    """How to relax (``/v1/relax``, a job's ``relax`` block); the field names are the request's.

    The defaults are the matbench-discovery protocol: FIRE with ASE's FrechetCellFilter, 0.05 eV/Å, 500 steps.
    """

    optimizer: Annotated[OptimizerName, Field(description="FIRE with ASE's update rule and defaults.")] = "fire"
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
        if isinstance(options, RelaxOptions):
            return options
        names = [field.name for field in dataclasses.fields(cls)]
        if unknown := sorted(set(options) - set(names)):
            raise TypeError(f"unknown relaxation option(s) {unknown}; the options are {names}")
        return cls(**options)

    def request(self) -> dict[str, Any]:
        """The options as request JSON."""
        return dataclasses.asdict(self)
