"""Request and response bodies of the HTTP API (documented in OpenAPI at ``/docs``).

Structures are declared loosely (``dict``) on purpose: each one is decoded separately so that a malformed
structure gets an error entry of its own instead of failing the whole request. Their three accepted forms are
described by :class:`ArraysStructure`, :class:`TextStructure` and pymatgen's ``as_dict()``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ..models.registry import DEFAULT_MODEL

Property = Literal["energy", "forces", "stress"]


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


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "7net-0",
                    "structures": [
                        {
                            "symbols": ["Si", "Si"],
                            "positions": [[0, 0, 0], [1.3575, 1.3575, 1.3575]],
                            "cell": [[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]],
                            "pbc": [True, True, True],
                        }
                    ],
                    "properties": ["energy", "forces", "stress"],
                }
            ]
        }
    )

    model: str | None = Field(
        None,
        description=f"Model name, as listed by GET /v1/models; default: the server's first served model "
        f"({DEFAULT_MODEL} unless started otherwise).",
    )
    structures: StructureList = Field(description=STRUCTURE_FORMS_DOC)
    properties: list[Property] = Field(["energy", "forces", "stress"], description="What to compute.")


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


class StructureResult(BaseModel):
    energy: float = Field(description="Total energy, eV.")
    energy_per_atom: float = Field(description="eV/atom.")
    forces: list[list[float]] | None = Field(None, description="N×3, eV/Å.")
    stress: list[list[float]] | None = Field(
        None, description="3×3 Cauchy stress, eV/Å³, ASE sign (tensile positive); null for non-periodic structures."
    )


class PredictResponse(BaseModel):
    model: ModelInfo
    results: list[StructureResult | ErrorEntry] = Field(description="One entry per structure, in input order.")


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: ErrorDetail
