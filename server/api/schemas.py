"""Request and response bodies of the HTTP API (documented in OpenAPI at ``/docs``).

Structures are declared loosely (``dict``) on purpose: each one is decoded separately so that a malformed
structure gets an error entry of its own instead of failing the whole request. Their three accepted forms are
described by :class:`ArraysStructure`, :class:`TextStructure` and pymatgen's ``as_dict()``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from ... import protocol
from ...models.registry import DEFAULT_MODEL
from ...protocol import (
    MDOptions,
    MDStopReason,
    NEBOptions,
    NEBStopReason,
    Property,
    RelaxOptions,
    StopReason,
    UncertaintyDetail,
)

UNCERTAINTY_DETAIL_DOC = (
    "For models that report an uncertainty (an MTP or ACE active set, a committee): `summary` gives its kind, "
    "value and named figures; `per_atom` adds each atom's figure."
)


class ArraysStructure(BaseModel):
    """A structure as arrays (Å). Give ``numbers`` or ``symbols``. No ``cell`` means a molecule."""

    numbers: list[int] | None = Field(None, examples=[[14, 14]])
    symbols: list[str] | None = Field(None, examples=[["Si", "Si"]])
    positions: list[list[float]] = Field(examples=[[[0, 0, 0], [1.3575, 1.3575, 1.3575]]])
    cell: list[list[float]] | None = Field(None, examples=[[[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]]])
    pbc: bool | list[bool] | None = Field(None, examples=[[True, True, True]])


class TextStructure(BaseModel):
    """A structure as the text of a file, read with ase.io (one structure per entry)."""

    format: Literal["extxyz", "xyz", "cif", "poscar", "vasp"]
    text: str


STRUCTURE_FORMS_DOC = (
    "Each structure is one of: arrays (`ArraysStructure`: `numbers` or `symbols`, `positions` in Å, `cell` 3×3 in "
    "Å, `pbc`), a pymatgen `Structure.as_dict()` or `Molecule.as_dict()`, or file text (`TextStructure`: "
    "`format` extxyz|cif|poscar and `text`). A malformed structure gets an error entry; the others are evaluated."
)


#: Structures are decoded one by one (see the module docstring); the schema still shows their accepted forms.
StructureList = Annotated[
    list[dict[str, Any]],
    WithJsonSchema(
        {
            "type": "array",
            "items": {
                "anyOf": [
                    ArraysStructure.model_json_schema(),
                    TextStructure.model_json_schema(),
                    {"type": "object", "title": "PymatgenDict", "description": "Structure/Molecule.as_dict()"},
                ]
            },
        }
    ),
]


def _example(positions: list[list[float]], cell: list[list[float]], **fields: Any) -> ConfigDict:
    """A request of one Si₂ crystal, as the OpenAPI page shows it."""
    structure: dict[str, Any] = {"symbols": ["Si", "Si"], "positions": positions, "cell": cell, "pbc": [True] * 3}
    example: dict[str, Any] = {"model": "7net-0", "structures": [structure], **fields}
    return ConfigDict(json_schema_extra={"examples": [example]})


class PredictRequest(BaseModel):
    model_config = _example(
        [[0, 0, 0], [1.3575, 1.3575, 1.3575]],
        [[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]],
        properties=["energy", "forces", "stress"],
    )

    model: str | None = Field(
        None,
        description=f"Model name, as listed by GET /v1/models; default: the server's first served model "
        f"({DEFAULT_MODEL} unless started otherwise).",
    )
    structures: StructureList = Field(description=STRUCTURE_FORMS_DOC)
    properties: list[Property] = Field(["energy", "forces", "stress"], description="What to compute.")
    uncertainty: UncertaintyDetail = Field("summary", description=UNCERTAINTY_DETAIL_DOC)


class _RelaxOptionsModel(BaseModel):
    def options(self) -> RelaxOptions:
        """The options as the engine takes them."""
        return RelaxOptions(**self.model_dump(include={f.name for f in dataclasses.fields(RelaxOptions)}))


def _relax_fields() -> dict[str, Any]:
    """Each field of :class:`RelaxOptions` with its type, constraints, description and default."""
    hints = get_type_hints(RelaxOptions, vars(protocol), include_extras=True)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(RelaxOptions)}


if TYPE_CHECKING:  # the fields are made at run time; type checkers see the base and its options()

    class RelaxSettings(_RelaxOptionsModel):
        pass

else:
    #: How to relax (the fields of :class:`RelaxOptions`, declared there once); matbench-discovery defaults.
    RelaxSettings = create_model(
        "RelaxSettings",
        __base__=_RelaxOptionsModel,
        __doc__="How to relax: FIRE on atoms and, by default, the cell (ASE's FrechetCellFilter); "
        "matbench-discovery defaults.",
        **_relax_fields(),
    )


FixedAtoms = Field(
    None,
    description="Per structure (same order), the indices of atoms that must not move, or null. "
    "With a relaxing cell they follow its deformation, as with ASE's FixAtoms.",
)


class RelaxRequest(RelaxSettings):
    model_config = _example([[0, 0, 0], [1.40, 1.30, 1.35]], [[0, 2.8, 2.8], [2.8, 0, 2.8], [2.8, 2.8, 0]], fmax=0.05)

    model: str | None = Field(None, description="Model name; default: the server's first served model.")
    structures: StructureList = Field(description=STRUCTURE_FORMS_DOC)
    fixed: list[list[int] | None] | None = FixedAtoms
    uncertainty: UncertaintyDetail = Field("summary", description=UNCERTAINTY_DETAIL_DOC)


def _option_fields(options: type) -> dict[str, Any]:
    """Each field of an options dataclass (protocol.py) with its type, constraints, description and default."""
    hints = get_type_hints(options, vars(protocol), include_extras=True)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(options)}


class _MDOptionsModel(BaseModel):
    def options(self) -> MDOptions:
        """The options as the engine takes them."""
        return MDOptions(**self.model_dump(include={f.name for f in dataclasses.fields(MDOptions)}))


class _NEBOptionsModel(BaseModel):
    def options(self) -> NEBOptions:
        """The options as the engine takes them."""
        return NEBOptions(**self.model_dump(include={f.name for f in dataclasses.fields(NEBOptions)}))


if TYPE_CHECKING:

    class MDSettings(_MDOptionsModel):
        pass

    class NEBSettings(_NEBOptionsModel):
        pass

else:
    #: How to run MD (the fields of :class:`MDOptions`, declared there once).
    MDSettings = create_model(
        "MDSettings",
        __base__=_MDOptionsModel,
        __doc__="How to run molecular dynamics: the integrator, its time step and steps, the thermostat and "
        "barostat, and what to record.",
        **_option_fields(MDOptions),
    )
    #: How to find a minimum-energy path (the fields of :class:`NEBOptions`).
    NEBSettings = create_model(
        "NEBSettings",
        __base__=_NEBOptionsModel,
        __doc__="How to find a minimum-energy path: ASE's NEB (images, interpolation, climbing image, springs) "
        "optimised by FIRE.",
        **_option_fields(NEBOptions),
    )


class MDRequest(MDSettings):
    model_config = _example(
        [[0, 0, 0], [1.3575, 1.3575, 1.3575]],
        [[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]],
        integrator="csvr",
        temperature_K=300,
        steps=100,
        trajectory_every=10,
    )

    model: str | None = Field(None, description="Model name; default: the server's first served model.")
    structures: StructureList = Field(description=STRUCTURE_FORMS_DOC)
    velocities: list[Any] | None = Field(
        None,
        description="Per structure (same order), its initial velocities (N×3, Å/fs), or null: Maxwell-Boltzmann at "
        "temperature_K (at rest without one).",
    )
    fixed: list[list[int] | None] | None = Field(
        None, description="Per structure (same order), the indices of atoms that must not move (ASE's FixAtoms)."
    )
    uncertainty: UncertaintyDetail = Field("summary", description=UNCERTAINTY_DETAIL_DOC)


class NEBPath(BaseModel):
    """One path: its end points, optionally the images between them, and the atoms that must not move."""

    initial: dict[str, Any] = Field(description="The initial end point, in any accepted structure form.")
    final: dict[str, Any] = Field(description="The final end point: same atoms in the same order, same cell.")
    intermediates: list[dict[str, Any]] | None = Field(
        None, description="Images between the end points (then `images` and `interpolation` are not used)."
    )
    fixed: list[int] | None = Field(None, description="Indices of atoms that stay put in every image.")


class NEBRequest(NEBSettings):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "7net-0",
                    "paths": [
                        {
                            "initial": {"symbols": ["H", "H", "H"], "positions": [[0, 0, 0], [0.75, 0, 0], [3, 0, 0]]},
                            "final": {"symbols": ["H", "H", "H"], "positions": [[0, 0, 0], [2.25, 0, 0], [3, 0, 0]]},
                        }
                    ],
                    "images": 5,
                }
            ]
        }
    )

    model: str | None = Field(None, description="Model name; default: the server's first served model.")
    paths: list[NEBPath] = Field(description="The paths; each gets a result entry, in input order.")


class JobRequest(PredictRequest):
    """A job's JSON body: /v1/predict's, or with ``relax`` a relaxation of every structure, or with ``md`` an MD run
    from each."""

    relax: RelaxSettings | None = Field(None, description="Relax the structures (options as for /v1/relax).")
    md: MDSettings | None = Field(None, description="Run MD from each structure (options as for /v1/md).")
    fixed: list[list[int] | None] | None = FixedAtoms


class ModelInfo(BaseModel):
    name: str
    version: str
    sha256: str
    dtype: str
    device: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Short machine-readable reason, e.g. element_not_covered.")
    message: str = Field(description="What is wrong; names the structure index for per-structure errors.")


class ErrorEntry(BaseModel):
    error: ErrorDetail


class UncertaintyInfo(BaseModel):
    """How far a structure lies outside what the model knows, from models that measure it."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["grade", "gamma", "committee"] = Field(
        description="grade: MTP's extrapolation grade (MaxVol); gamma: ACE's γ (D-optimality); committee: the "
        "members' spread. Further fields name figures of the kind, e.g. a committee's energy_std_per_atom (eV/atom), "
        "forces_std_max and forces_std_mean (eV/Å), stress_std_max (eV/Å³)."
    )
    value: float = Field(
        description="The structure's figure: its grade (configuration mode) or largest per-atom grade or γ (above 1: "
        "extrapolating), or a committee's largest per-atom force spread (eV/Å)."
    )
    per_atom: list[float] | None = Field(None, description='Each atom\'s figure, with "uncertainty": "per_atom".')
    max_along_path: float | None = Field(None, description="Relaxations: the largest value at any step.")


class StructureResult(BaseModel):
    energy: float = Field(description="Total energy, eV.")
    energy_per_atom: float = Field(description="eV/atom.")
    forces: list[list[float]] | None = Field(None, description="N×3, eV/Å.")
    stress: list[list[float]] | None = Field(
        None, description="3×3 Cauchy stress, eV/Å³, ASE sign (tensile positive); null for non-periodic structures."
    )
    uncertainty: UncertaintyInfo | None = Field(None, description="Only from models that report an uncertainty.")


class RelaxedStructure(BaseModel):
    numbers: list[int]
    positions: list[list[float]] = Field(description="Å.")
    cell: list[list[float]] = Field(description="Å; rows are lattice vectors.")
    pbc: list[bool]


class Frame(BaseModel):
    step: int
    energy: float
    positions: list[list[float]]
    cell: list[list[float]]


class RelaxResult(StructureResult):
    structure: RelaxedStructure = Field(description="The final geometry; energy, forces and stress are its own.")
    steps: int = Field(description="Optimizer steps taken.")
    converged: bool
    stop_reason: StopReason = Field(
        description="exploded: a force above 1000 eV/Å, a non-finite value, or a cell stretched beyond 2× or 1/2×; "
        "extrapolating: the uncertainty went above max_grade (the structure is that geometry)."
    )
    fmax: float = Field(description="Largest generalised force (atoms and cell rows) at the final geometry, eV/Å.")
    trajectory: list[Frame] | None = Field(None, description="Frames every trajectory_every steps, and the last.")


class MDFrameEntry(BaseModel):
    step: int
    time_fs: float
    positions: list[list[float]] = Field(description="Å.")
    velocities: list[list[float]] = Field(description="Å/fs.")
    cell: list[list[float]]
    energy: float = Field(description="Potential energy, eV.")
    kinetic_energy: float = Field(description="eV.")
    temperature: float = Field(description="K (degrees of freedom less 3 per fixed atom).")
    stress: list[list[float]] | None = Field(None, description="3×3, eV/Å³; periodic structures only.")


class MDResult(StructureResult):
    structure: RelaxedStructure = Field(description="The final geometry; energy, forces and stress are its own.")
    velocities: list[list[float]] = Field(description="Final velocities, Å/fs.")
    steps: int = Field(description="Time steps run.")
    time_fs: float = Field(description="Simulated time, fs.")
    stop_reason: MDStopReason = Field(
        description="completed: all steps run; exploded: forces or temperature beyond max_force / "
        "max_temperature_K, or a non-finite value; extrapolating: the uncertainty went above max_grade."
    )
    temperature: float = Field(description="Final temperature, K.")
    kinetic_energy: float = Field(description="Final kinetic energy, eV.")
    seed: int = Field(description="The seed this structure's run used (the request's + its index, or drawn).")
    trajectory: list[MDFrameEntry] | None = Field(
        None, description="Frames every trajectory_every steps (step 0 included) and the last, by step."
    )


class MDResponse(BaseModel):
    model: ModelInfo
    results: list[MDResult | ErrorEntry] = Field(description="One entry per structure, in input order.")


class NEBResult(BaseModel):
    images: list[RelaxedStructure] = Field(description="Every image, end points included, in path order.")
    energies: list[float] = Field(description="Each image's energy, eV.")
    image_fmax: list[float] = Field(description="Each image's largest NEB force, eV/Å.")
    barrier_forward: float = Field(description="Highest image energy less the initial one, eV.")
    barrier_backward: float = Field(description="Highest image energy less the final one, eV.")
    saddle_index: int = Field(description="Index of the highest-energy image.")
    energy: float = Field(description="The saddle image's energy, eV.")
    forces: list[list[float]] | None = Field(None, description="The saddle image's forces, eV/Å.")
    steps: int = Field(description="FIRE steps taken.")
    converged: bool
    stop_reason: NEBStopReason
    fmax: float = Field(description="Largest NEB force over the moving images at the end, eV/Å.")


class NEBResponse(BaseModel):
    model: ModelInfo
    results: list[NEBResult | ErrorEntry] = Field(description="One entry per path, in input order.")


class RelaxResponse(BaseModel):
    model: ModelInfo
    results: list[RelaxResult | ErrorEntry] = Field(description="One entry per structure, in input order.")


class PredictResponse(BaseModel):
    model: ModelInfo
    results: list[StructureResult | ErrorEntry] = Field(description="One entry per structure, in input order.")


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: ErrorDetail


#: The error answers a route that takes a body may give, for the OpenAPI document (400: a body that could not be
#: read at all, such as one that is not UTF-8).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 413, 422, 503)
}


class SelectRequest(BaseModel):
    """Candidates to grade, and how many to pick for DFT."""

    model_config = _example(
        [[0, 0, 0], [1.3575, 1.3575, 1.3575]],
        [[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]],
        max_count=10,
        threshold=1.0,
    )

    model: str | None = Field(None, description="A model with an active set (MTP grade, ACE γ); default: the first.")
    structures: StructureList = Field(description="The candidates. " + STRUCTURE_FORMS_DOC)
    max_count: int = Field(10, ge=0, le=100_000, description="At most this many in the D-optimal subset.")
    threshold: float = Field(1.0, gt=0, description="Candidates graded above this are listed in `above`.")
    uncertainty: UncertaintyDetail = Field("summary", description="`per_atom`: each candidate's per-atom grades too.")


class CandidateGrade(BaseModel):
    grade: float = Field(description="The candidate's grade or largest per-atom γ (above 1: extrapolating).")
    per_atom: list[float] | None = Field(None, description='Per-atom grades, with "uncertainty": "per_atom".')


class SelectResponse(BaseModel):
    model: ModelInfo
    results: list[CandidateGrade | ErrorEntry] = Field(description="One entry per candidate, in input order.")
    above: list[int] = Field(description="Indices of the candidates graded above the threshold, ascending.")
    selected: list[int] = Field(
        description="Indices of the D-optimal subset (MaxVol against the model's active set), at most max_count."
    )
    extxyz: str = Field(
        description="The selected candidates as extended XYZ, ready for DFT: info `index` (in the request), `grade`, "
        "`above_threshold`, `model`."
    )
