"""Matbench Discovery's stability metrics, as our own code.

The definitions are those of PyPI ``matbench-discovery==1.3.1``: ``matbench_discovery.metrics.stable_metrics`` and the
leaderboard tables that ``matbench_discovery/preds.py`` builds (full test set, unique prototypes, 10k most stable).
That package cannot be a run-time dependency: it pulls wandb, plotly, pymatviz and more, and importing it creates
folders and sets plot defaults. ``tests/test_eval_metrics.py`` checks these functions against it to 1e-12.

One deliberate difference: where a ratio's denominator is zero (an empty class, such as no truly unstable structure,
or no valid prediction at all), the reference raises (ZeroDivisionError for pandas input; ValueError from its sanity
checks or from scikit-learn) or gives NaN (numpy input). Here that ratio is NaN, and nothing raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .errors import EvalError
from .store import json_text

log = logging.getLogger(__name__)

# Column names of matbench's WBM summary (and of our TRUTH/PRED files).
MATERIAL_ID = "material_id"
E_FORM_DFT = "e_form_per_atom_mp2020_corrected"
E_HULL_DFT = "e_above_hull_mp2020_corrected_ppd_mp"
UNIQUE_PROTOTYPE = "unique_prototype"

STABILITY_THRESHOLD = 0.0  # eV/atom above the hull; at or below it counts as stable
MAX_ERROR_EV_PER_ATOM = 5.0  # predictions further than this from DFT are dropped (NaN)
MOST_STABLE_N = 10_000
DECIMALS = 3  # matbench rounds DFT values and predictions to meV/atom before its leaderboard tables

METRIC_KEYS = (
    *("F1", "DAF", "Precision", "Recall", "Accuracy", "TPR", "FPR", "TNR", "FNR"),
    *("TP", "FP", "TN", "FN", "MAE", "RMSE", "R2"),
)


class MetricsInputError(EvalError, ValueError):
    """A TRUTH or PRED file that cannot be scored; the message names the file and the problem."""


class StabilityClasses(NamedTuple):
    """Per-structure masks, in matbench's order."""

    true_pos: np.ndarray
    false_neg: np.ndarray
    false_pos: np.ndarray
    true_neg: np.ndarray


# --- stable_metrics -------------------------------------------------------------------------------------------------


def classify_stable(
    each_true: ArrayLike,
    each_pred: ArrayLike,
    *,
    stability_threshold: float = STABILITY_THRESHOLD,
    fillna: bool = True,
) -> StabilityClasses:
    """Masks of TP/FN/FP/TN; stable means hull distance <= threshold (so exactly on it is stable).

    A NaN prediction is "predicted unstable" when ``fillna``, in no class otherwise; a NaN truth is in no class.
    Inputs are taken by position.
    """
    true, pred = _as_arrays(each_true, each_pred)
    actual_pos, actual_neg = true <= stability_threshold, true > stability_threshold
    model_pos, model_neg = pred <= stability_threshold, pred > stability_threshold
    if fillna:
        model_neg = model_neg | np.isnan(pred)
    return StabilityClasses(
        actual_pos & model_pos, actual_pos & model_neg, actual_neg & model_pos, actual_neg & model_neg
    )


def stable_metrics(
    each_true: ArrayLike,
    each_pred: ArrayLike,
    *,
    stability_threshold: float = STABILITY_THRESHOLD,
    fillna: bool = True,
) -> dict[str, float]:
    """matbench's classification and regression metrics of predicted against true hull distances (eV/atom).

    Keys are :data:`METRIC_KEYS`; TP, FP, TN and FN are ints. As in matbench, Accuracy divides by the number of pairs
    where neither value is NaN, although NaN predictions are counted as TN or FN: with NaN predictions it can
    exceed 1. MAE, RMSE and R2 leave out those pairs. A ratio with a zero denominator is NaN.
    """
    true, pred = _as_arrays(each_true, each_pred)
    classes = classify_stable(true, pred, stability_threshold=stability_threshold, fillna=fillna)
    tp, fn, fp, tn = (int(mask.sum()) for mask in classes)
    n_pos, n_neg = tp + fn, tn + fp
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, n_pos)
    true, pred = _valid_pairs(true, pred)
    return {
        "F1": _ratio(2 * (precision * recall), precision + recall),
        "DAF": _ratio(precision, _ratio(n_pos, n_pos + n_neg)),
        "Precision": precision,
        "Recall": recall,
        "Accuracy": _ratio(tp + tn, len(true)),
        "TPR": recall,
        "FPR": _ratio(fp, n_neg),
        "TNR": _ratio(tn, n_neg),
        "FNR": _ratio(fn, n_pos),
        **{"TP": tp, "FP": fp, "TN": tn, "FN": fn},
        **regression_metrics(true, pred),
    }


def regression_metrics(each_true: ArrayLike, each_pred: ArrayLike) -> dict[str, float]:
    """MAE, RMSE and R2 (scikit-learn's ``r2_score``) over the pairs where neither value is NaN; NaN if none."""
    true, pred = _valid_pairs(*_as_arrays(each_true, each_pred))
    if len(true) == 0:
        return {"MAE": math.nan, "RMSE": math.nan, "R2": math.nan}
    error = true - pred
    return {
        "MAE": float(np.abs(error).mean()),
        "RMSE": float((error**2).mean() ** 0.5),
        "R2": _r2_score(true, pred),
    }


def _r2_score(true: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's ``r2_score``: NaN under two samples; 1 for an exact fit; 0 for a constant truth otherwise."""
    if len(true) < 2:
        return math.nan
    # column vectors and sums along axis 0, as scikit-learn computes them, so that the results agree to the last bit
    true, pred = true.reshape(-1, 1), pred.reshape(-1, 1)
    numerator = float(np.sum((true - pred) ** 2, axis=0)[0])
    denominator = float(np.sum((true - np.mean(true, axis=0)) ** 2, axis=0)[0])
    if numerator == 0:
        return 1.0
    if denominator == 0:
        return 0.0
    return 1 - numerator / denominator


def _ratio(numerator: float, denominator: float) -> float:
    return math.nan if denominator == 0 else numerator / denominator


def _as_arrays(each_true: ArrayLike, each_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    true, pred = np.asarray(each_true, dtype=float), np.asarray(each_pred, dtype=float)
    if true.ndim != 1 or true.shape != pred.shape:
        raise ValueError(f"expected two 1-d sequences of equal length, got shapes {true.shape} and {pred.shape}")
    return true, pred


def _valid_pairs(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    valid = ~(np.isnan(true) | np.isnan(pred))
    return true[valid], pred[valid]


# --- the leaderboard tables -----------------------------------------------------------------------------------------


def drop_unrealistic_predictions(
    e_form_pred: pd.Series, e_form_dft: pd.Series, max_error: float = MAX_ERROR_EV_PER_ATOM
) -> pd.Series:
    """``e_form_pred`` with NaN where it is more than ``max_error`` eV/atom from DFT (aligned on the index).

    matbench's ``load_df_wbm_with_preds`` (``max_error_threshold=5.0``) does this to every model's formation energies
    before any metric, so such predictions count as "predicted unstable" and leave MAE, RMSE and R2. Exactly
    ``max_error`` away is kept.
    """
    if max_error < 0:
        raise ValueError(f"max_error must not be negative, got {max_error}")
    return e_form_pred.mask((e_form_pred - e_form_dft).abs() > max_error)


def predicted_hull_distance(truth: pd.DataFrame, e_form_pred: pd.Series) -> pd.Series:
    """DFT hull distance + (predicted - DFT formation energy), in matbench's order of operations."""
    return truth[E_HULL_DFT] + e_form_pred - truth[E_FORM_DFT]


def unique_prototype_prevalence(truth: pd.DataFrame) -> float:
    """The fraction of unique prototypes that DFT puts on or below the hull: the DAF baseline of matbench's
    unique-prototype and 10k tables (from the unrounded truth; a NaN hull distance counts as unstable)."""
    stable = truth.loc[truth[UNIQUE_PROTOTYPE].to_numpy(dtype=bool), E_HULL_DFT] <= STABILITY_THRESHOLD
    return _ratio(float(stable.sum()), len(stable))


def most_stable(each_pred: pd.Series, n: int = MOST_STABLE_N) -> pd.Series:
    """The ``n`` lowest predicted hull distances by pandas ``nsmallest``, as matbench takes them: ties in input order,
    and NaN sorted last, so NaN predictions are taken (and count as predicted unstable) when fewer than ``n`` are
    not NaN."""
    return each_pred.nsmallest(n)


def discovery_metrics(
    truth: pd.DataFrame,
    e_form_pred: pd.Series,
    *,
    max_error: float | None = MAX_ERROR_EV_PER_ATOM,
    decimals: int | None = DECIMALS,
) -> dict[str, dict[str, float]]:
    """matbench's leaderboard metrics of predicted formation energies (eV/atom, indexed by material_id).

    ``truth`` is indexed by material_id with :data:`E_FORM_DFT`, :data:`E_HULL_DFT` and optionally a boolean
    :data:`UNIQUE_PROTOTYPE`. Returns ``{"full": ...}``, plus ``"unique_prototypes"`` and ``"most_stable_10k"`` when
    the truth has :data:`UNIQUE_PROTOTYPE`; in both, DAF is Precision over :func:`unique_prototype_prevalence`.
    As in ``matbench_discovery/preds.py``: predictions far from DFT are dropped first
    (:func:`drop_unrealistic_predictions`, ``max_error=None`` keeps all), then DFT values and predictions are rounded
    to ``decimals`` (3, i.e. meV/atom; ``None`` keeps them as they are); structures without a prediction count as
    NaN predictions ("predicted unstable"); the 10k subset is :func:`most_stable` among unique prototypes.
    """
    _check_truth(truth)
    pred = _aligned_predictions(truth, e_form_pred)
    if max_error is not None:
        pred = drop_unrealistic_predictions(pred, truth[E_FORM_DFT], max_error)
    dft = truth[[E_FORM_DFT, E_HULL_DFT]]
    if decimals is not None:
        dft, pred = dft.round(decimals), pred.round(decimals)
    each_true, each_pred = dft[E_HULL_DFT], predicted_hull_distance(dft, pred)
    metrics = {"full": stable_metrics(each_true, each_pred)}
    if UNIQUE_PROTOTYPE in truth:
        metrics |= _unique_prototype_metrics(truth, each_true, each_pred)
    return metrics


def _unique_prototype_metrics(
    truth: pd.DataFrame, each_true: pd.Series, each_pred: pd.Series
) -> dict[str, dict[str, float]]:
    unique = truth[UNIQUE_PROTOTYPE].to_numpy(dtype=bool)
    prevalence = unique_prototype_prevalence(truth)
    top = most_stable(each_pred.loc[unique])
    return {
        "unique_prototypes": _with_daf(stable_metrics(each_true.loc[unique], each_pred.loc[unique]), prevalence),
        "most_stable_10k": _with_daf(stable_metrics(each_true.loc[top.index], top), prevalence),
    }


def _with_daf(metrics: dict[str, float], prevalence: float) -> dict[str, float]:
    return metrics | {"DAF": _ratio(metrics["Precision"], prevalence)}


def _check_truth(truth: pd.DataFrame) -> None:
    if missing := [col for col in (E_FORM_DFT, E_HULL_DFT) if col not in truth]:
        raise ValueError(f"truth lacks column(s) {', '.join(missing)}")
    if UNIQUE_PROTOTYPE in truth and truth[UNIQUE_PROTOTYPE].dtype != bool:
        raise ValueError(f"truth column {UNIQUE_PROTOTYPE} must be boolean, got {truth[UNIQUE_PROTOTYPE].dtype}")
    if truth.index.has_duplicates:
        raise ValueError(f"truth has duplicate material_id(s): {_some(truth.index[truth.index.duplicated()])}")


def _aligned_predictions(truth: pd.DataFrame, e_form_pred: pd.Series) -> pd.Series:
    """Predictions in the truth's order, NaN where missing; ids unknown to the truth are an error."""
    if e_form_pred.index.has_duplicates:
        raise ValueError(
            f"duplicate material_id(s) in predictions: {_some(e_form_pred.index[e_form_pred.index.duplicated()])}"
        )
    if len(unknown := e_form_pred.index.difference(truth.index)):
        raise ValueError(f"{len(unknown)} predicted material_id(s) not in the truth: {_some(unknown)}")
    return e_form_pred.astype(float).reindex(truth.index)


def _some(values: Any, n: int = 5) -> str:
    values = list(values)
    return ", ".join(map(str, values[:n])) + (f" (and {len(values) - n} more)" if len(values) > n else "")


# --- files: `mlipserve eval metrics` --------------------------------------------------------------------------------


def metrics_command(truth_csv: Path, pred_csv: Path, pred_col: str | None, out: Path) -> dict[str, dict[str, float]]:
    """Score PRED's formation energies against TRUTH with :func:`discovery_metrics`; write them to ``out`` as JSON.

    Raises :class:`MetricsInputError` naming the file and the problem for unreadable input.
    """
    truth_csv, pred_csv, out = Path(truth_csv), Path(pred_csv), Path(out)
    truth = read_truth_csv(truth_csv)
    e_form_pred = read_pred_csv(pred_csv, pred_col)
    if len(unknown := e_form_pred.index.difference(truth.index)):
        raise MetricsInputError(f"{pred_csv}: {len(unknown)} material_id(s) not in {truth_csv}: {_some(unknown)}")
    if n_missing := len(truth.index.difference(e_form_pred.index)):
        log.warning(
            "%d of %d structures in %s have no prediction: counted as predicted unstable",
            n_missing,
            len(truth),
            truth_csv,
        )
    metrics = discovery_metrics(truth, e_form_pred)
    write_metrics_json(metrics, out)
    return metrics


def read_truth_csv(path: Path) -> pd.DataFrame:
    """TRUTH (e.g. matbench's WBM summary, any extra columns ignored) indexed by material_id."""
    header = _header(path)
    if missing := [col for col in (MATERIAL_ID, E_FORM_DFT, E_HULL_DFT) if col not in header]:
        raise MetricsInputError(f"{path}: missing column(s) {', '.join(missing)} (it has: {_some(header, 30)})")
    columns = [MATERIAL_ID, E_FORM_DFT, E_HULL_DFT] + [UNIQUE_PROTOTYPE] * (UNIQUE_PROTOTYPE in header)
    frame = _read_columns(path, columns)
    for col in (E_FORM_DFT, E_HULL_DFT):
        frame[col] = _numeric(frame[col], path, col)
    if UNIQUE_PROTOTYPE in frame:
        frame[UNIQUE_PROTOTYPE] = _boolean(frame[UNIQUE_PROTOTYPE], path)
    return frame


def read_pred_csv(path: Path, pred_col: str | None = None) -> pd.Series:
    """PRED's formation energies (eV/atom) indexed by material_id: ``pred_col``, or the only other column."""
    header = _header(path)
    if MATERIAL_ID not in header:
        raise MetricsInputError(f"{path}: no {MATERIAL_ID} column (it has: {_some(header, 30)})")
    col = _prediction_column(path, header, pred_col)
    return _numeric(_read_columns(path, [MATERIAL_ID, col])[col], path, col)


def write_metrics_json(metrics: Mapping[str, Any], path: Path) -> None:
    """``metrics`` as JSON (indent 2); NaN and infinities are written as null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text(dict(metrics)))


def _header(path: Path) -> list[str]:
    try:
        return [str(col) for col in pd.read_csv(path, nrows=0).columns]
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MetricsInputError(f"{path}: cannot read a CSV header ({exc})") from exc


def _read_columns(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, usecols=columns, dtype={MATERIAL_ID: str})
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise MetricsInputError(f"{path}: cannot read columns {', '.join(columns)} ({exc})") from exc
    ids = frame[MATERIAL_ID]
    if ids.isna().any():
        raise MetricsInputError(f"{path}: {int(ids.isna().sum())} row(s) without a {MATERIAL_ID}")
    if ids.duplicated().any():
        raise MetricsInputError(f"{path}: duplicate {MATERIAL_ID}(s): {_some(ids[ids.duplicated()].unique())}")
    return frame.set_index(MATERIAL_ID)[[col for col in columns if col != MATERIAL_ID]]


def _prediction_column(path: Path, header: list[str], pred_col: str | None) -> str:
    others = [col for col in header if col != MATERIAL_ID]
    if pred_col is not None:
        if pred_col not in others:
            raise MetricsInputError(f"{path}: no prediction column {pred_col!r} (it has: {_some(others, 30)})")
        return pred_col
    if len(others) != 1:
        found = f"columns {_some(others, 30)}" if others else "no column"
        raise MetricsInputError(
            f"{path}: expected {MATERIAL_ID} and one formation-energy column, found {found} besides {MATERIAL_ID}: "
            "name the prediction column (--pred-col)"
        )
    return others[0]


def _numeric(values: pd.Series, path: Path, col: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    if (bad := numbers.isna() & values.notna()).any():
        examples = _some(f"{mid}: {values[mid]!r}" for mid in values.index[bad])
        raise MetricsInputError(f"{path}: non-numeric value(s) in column {col}: {examples}")
    return numbers


def _boolean(values: pd.Series, path: Path) -> pd.Series:
    if values.dtype == bool:
        return values
    words = values.astype(str).str.strip().str.lower()
    parsed = words.map({"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False})
    if (bad := parsed.isna()).any():
        examples = _some(f"{mid}: {values[mid]!r}" for mid in values.index[bad])
        raise MetricsInputError(f"{path}: column {UNIQUE_PROTOTYPE} must be True/False, got {examples}")
    return parsed.astype(bool)
