"""Picking structures for DFT: ``Client.select`` (``POST /v1/select``) and what it returns.

The candidates go in one request, since the D-optimal subset is chosen among all of them at once (MaxVol against
the model's active set, on the worker); a set larger than the server's ``--max-structures-per-request`` must be
split by the caller, knowing that each part is then chosen from on its own.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .effects import Plan
from .encoding import as_list, encode_structure
from .errors import StructureFailed
from .options import StructureLike

if TYPE_CHECKING:
    from .planner import Planner


@dataclass
class Selection:
    """Candidates graded by a model's active set, and those picked for DFT (indices into the candidates)."""

    #: Each candidate's grade (or largest per-atom γ); NaN for a candidate the server could not use.
    grades: np.ndarray
    #: Candidates graded above the threshold, ascending.
    above: list[int]
    #: The D-optimal subset, at most ``max_count``.
    selected: list[int]
    #: The selected candidates as extended XYZ, ready for DFT (info: ``index``, ``grade``, ``above_threshold``).
    extxyz: str
    #: Per-atom grades of each candidate (None where not asked for, or for a candidate that failed).
    per_atom: list[np.ndarray | None] = field(default_factory=list)
    #: Candidates the server could not use, with why.
    errors: list[StructureFailed] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)

    def atoms(self) -> list[Any]:
        """The selected candidates as ase.Atoms (read back from :attr:`extxyz`)."""
        from ase.io import read

        return list(read(io.StringIO(self.extxyz), index=":", format="extxyz")) if self.extxyz else []


def select(
    planner: Planner,
    structures: Sequence[StructureLike],
    max_count: int = 10,
    threshold: float = 1.0,
    *,
    model: str | None = None,
    per_atom: bool = False,
) -> Plan[Selection]:
    """Grade ``structures`` with the model's active set (MTP grade, ACE γ) and pick at most ``max_count`` of them
    for DFT: the D-optimal subset MaxVol chooses (as motep and pace_select do); ``above`` lists those graded above
    ``threshold``. The model must have an active set (its card's ``options.active_set``)."""
    _, items = as_list(structures)
    body: dict[str, Any] = {
        "structures": [encode_structure(s) for s in items],
        "max_count": max_count,
        "threshold": threshold,
        "uncertainty": "per_atom" if per_atom else "summary",
    }
    if chosen := model or planner.settings.model:
        body["model"] = chosen
    answer = yield from planner._request("POST", "/v1/select", json=body)
    return decode(cast("dict[str, Any]", answer))


def decode(answer: dict[str, Any]) -> Selection:
    """A :class:`Selection` from the JSON of a ``/v1/select`` answer."""
    grades, per_atom, errors = [], [], []
    for index, entry in enumerate(answer["results"]):
        if "error" in entry:
            errors.append(StructureFailed(index, entry["error"]["code"], entry["error"]["message"]))
        grades.append(entry.get("grade", float("nan")))
        atoms = entry.get("per_atom")
        per_atom.append(None if atoms is None else np.asarray(atoms, dtype=np.float64))
    return Selection(
        grades=np.asarray(grades, dtype=np.float64),
        above=list(answer["above"]),
        selected=list(answer["selected"]),
        extxyz=answer["extxyz"],
        per_atom=per_atom,
        errors=errors,
        model=answer["model"],
    )
