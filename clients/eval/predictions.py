"""One row per structure and model: energies, formation energy, hull distances, how the relaxation ended, geometry."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .geometry import compare
from .metrics import (
    DECIMALS,
    E_FORM_DFT,
    E_HULL_DFT,
    MATERIAL_ID,
    drop_unrealistic_predictions,
    predicted_hull_distance,
)
from .reference import Reference
from .store import Record
from .structures import ok, record_atoms, to_pymatgen

COLUMNS = (
    *(MATERIAL_ID, "model", "formula", "n_atoms", "energy", "energy_per_atom"),
    *("e_form_per_atom", "e_form_per_atom_ref", "e_above_hull", "e_above_hull_ref", "stability"),
    *("steps", "converged", "stop_reason", "fmax", "rmsd", "spacegroup", "spacegroup_ref", "symmetry_match"),
    *("seconds", "error"),
)


def prediction_table(
    model: str, ids: Sequence[str], records: Mapping[str, Record], reference: Reference, geometry: bool = True
) -> pd.DataFrame:
    """The model's rows in ``ids`` order; a structure without a record has the error ``not relaxed yet``.

    ``e_above_hull`` is the reference hull distance plus the formation-energy error, NaN where that error exceeds
    5 eV/atom (matbench's filter); ``stability`` is TP/FP/TN/FN at threshold 0 as ``metrics.json`` counts them:
    from values rounded to meV/atom, as matbench rounds them (a NaN prediction is "unstable", a structure
    without reference has none).
    """
    ours = {i: records[i] for i in ids if i in records}
    e_form = reference.formation(ours).reindex(list(ids))
    truth = reference.truth.reindex(list(ids))
    e_form_kept = drop_unrealistic_predictions(e_form, truth[E_FORM_DFT])
    e_hull = predicted_hull_distance(truth, e_form_kept)
    e_hull_rounded = predicted_hull_distance(truth.round(DECIMALS), e_form_kept.round(DECIMALS))
    rows = []
    for i in ids:
        record = ours.get(i, {"error": {"code": "missing", "message": "not relaxed yet"}})
        row: dict[str, Any] = {MATERIAL_ID: i, "model": model, "formula": reference.formulas.get(i)}
        row |= _relaxation(record)
        row |= {
            "e_form_per_atom": e_form[i],
            "e_form_per_atom_ref": truth.at[i, E_FORM_DFT],
            "e_above_hull": e_hull[i],
            "e_above_hull_ref": truth.at[i, E_HULL_DFT],
            "stability": stability_class(round(truth.at[i, E_HULL_DFT], DECIMALS), e_hull_rounded[i]),
        }
        row |= _geometry(record, reference.structures.get(i)) if geometry else {}
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def stability_class(each_ref: float, each_pred: float, threshold: float = 0.0) -> str:
    """TP, FP, TN or FN as matbench classifies them; empty without a reference value."""
    if each_ref is None or math.isnan(each_ref):
        return ""
    actual, predicted = each_ref <= threshold, (not math.isnan(each_pred)) and each_pred <= threshold
    return {(True, True): "TP", (True, False): "FN", (False, True): "FP", (False, False): "TN"}[(actual, predicted)]


def _relaxation(record: Record) -> dict[str, Any]:
    error = record.get("error")
    if not ok(record):
        message = f"{error['code']}: {error['message']}" if error else "no energy"
        return {"seconds": record.get("seconds"), "error": message}
    return {
        "n_atoms": record["n_atoms"],
        "energy": record["energy"],
        "energy_per_atom": record["energy"] / record["n_atoms"],
        "steps": record["steps"],
        "converged": record["converged"],
        "stop_reason": record["stop_reason"],
        "fmax": record["fmax"],
        "seconds": record["seconds"],
        "error": "",
    }


def _geometry(record: Record, reference: Any) -> dict[str, Any]:
    relaxed = to_pymatgen(record_atoms(record)) if ok(record) else None
    if relaxed is None:
        return {}
    if reference is None:
        from .geometry import space_group

        return {"spacegroup": space_group(relaxed)}
    return compare(relaxed, reference)
