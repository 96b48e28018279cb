"""clients/eval/metrics.py against matbench-discovery 1.3.1's own functions, to 1e-12.

The reference is ``matbench_discovery/metrics.py`` of the installed ``matbench-discovery==1.3.1`` (installed with
``--no-deps``; it needs numpy, pandas and scikit-learn). It is loaded under a stand-in parent package, because the
real ``matbench_discovery/__init__.py`` imports plotly and pymatviz and creates folders. The leaderboard tables of
``matbench_discovery/preds.py`` cannot be imported (that module loads the WBM data when imported), so
:func:`reference_tables` repeats its steps with the reference ``stable_metrics``. Without the reference these tests
skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlipserve.clients.eval.metrics import (
    E_FORM_DFT,
    E_HULL_DFT,
    MATERIAL_ID,
    METRIC_KEYS,
    UNIQUE_PROTOTYPE,
    MetricsInputError,
    classify_stable,
    discovery_metrics,
    drop_unrealistic_predictions,
    metrics_command,
    most_stable,
    read_pred_csv,
    read_truth_csv,
    regression_metrics,
    stable_metrics,
)

REFERENCE = "matbench-discovery"
REFERENCE_VERSION = "1.3.1"
COUNTS = ("TP", "FP", "TN", "FN")


# --- the reference ---------------------------------------------------------------------------------------------------


def load_reference_metrics() -> types.ModuleType:
    """matbench_discovery.metrics of the installed matbench-discovery 1.3.1, without running the package's __init__."""
    if (found := importlib.metadata.version(REFERENCE)) != REFERENCE_VERSION:
        raise ImportError(f"{REFERENCE} {found} is installed, the tests compare with {REFERENCE_VERSION}")
    package = importlib.util.find_spec("matbench_discovery")
    if package is None or package.origin is None:
        raise ImportError("matbench_discovery not found")
    folder = Path(package.origin).parent
    stand_in = types.ModuleType("matbench_discovery")
    stand_in.__path__ = [str(folder)]
    stand_in.STABILITY_THRESHOLD = 0  # type: ignore[attr-defined]  # its value in matbench_discovery/__init__.py
    saved = sys.modules.get("matbench_discovery")
    sys.modules["matbench_discovery"] = stand_in
    try:
        spec = importlib.util.spec_from_file_location("matbench_discovery.metrics", folder / "metrics.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["matbench_discovery"]
        else:
            sys.modules["matbench_discovery"] = saved
    return module


@pytest.fixture(scope="module")
def ref() -> types.ModuleType:
    try:
        return load_reference_metrics()
    except ImportError as exc:  # PackageNotFoundError is an ImportError; so is a missing scikit-learn
        reason = (
            f"reference {REFERENCE}=={REFERENCE_VERSION} unavailable ({exc}); install it with `pip install "
            f"scikit-learn && pip install --no-deps --ignore-requires-python {REFERENCE}=={REFERENCE_VERSION}`"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def ref_metrics(ref: types.ModuleType, each_true: Any, each_pred: Any, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return ref.stable_metrics(each_true, each_pred, **kwargs)


def reference_tables(
    ref: types.ModuleType,
    truth: pd.DataFrame,
    e_form_pred: pd.Series,
    *,
    max_error: float | None = 5.0,
    decimals: int | None = 3,
) -> dict[str, dict[str, Any]]:
    """The three tables of matbench_discovery/preds.py (1.3.1) for one model, step by step as that file takes them:
    load_df_wbm_with_preds (align on material_id, NaN beyond max_error), ``.round(3)``, then its loop body."""
    df_wbm = truth
    df_out = df_wbm.copy()
    df_out["model"] = e_form_pred
    if max_error is not None:
        bad_mask = abs(df_out["model"] - df_out[E_FORM_DFT]) > max_error
        df_out.loc[bad_mask, "model"] = pd.NA
    df_preds = df_out if decimals is None else df_out.round(decimals)
    each_pred = df_preds[E_HULL_DFT] + df_preds["model"] - df_preds[E_FORM_DFT]
    tables = {"full": ref_metrics(ref, df_preds[E_HULL_DFT], each_pred, fillna=True)}
    if UNIQUE_PROTOTYPE not in truth:
        return tables
    prevalence = (df_wbm.query(UNIQUE_PROTOTYPE)[E_HULL_DFT] <= 0).mean()
    uniq = df_preds[df_wbm[UNIQUE_PROTOTYPE]]
    each_pred_uniq = uniq[E_HULL_DFT] + uniq["model"] - uniq[E_FORM_DFT]
    tables["unique_prototypes"] = ref_metrics(ref, uniq[E_HULL_DFT], each_pred_uniq, fillna=True)
    top = each_pred_uniq.nsmallest(10_000)
    tables["most_stable_10k"] = ref_metrics(ref, df_preds[E_HULL_DFT].loc[top.index], top, fillna=True)
    for key in ("unique_prototypes", "most_stable_10k"):
        tables[key]["DAF"] = tables[key]["Precision"] / prevalence
    return tables


def assert_same(ours: dict[str, float], theirs: dict[str, Any]) -> None:
    assert list(ours) == list(theirs) == list(METRIC_KEYS)
    for key, expected in theirs.items():
        got = ours[key]
        if key in COUNTS:
            assert type(got) is int and got == expected, key
        elif math.isnan(expected):
            assert math.isnan(got), f"{key}: {got} != NaN"
        else:
            assert got == pytest.approx(float(expected), rel=1e-12, abs=1e-12), key


# --- random inputs ---------------------------------------------------------------------------------------------------


def random_hull_distances(rng: np.random.Generator, n: int, threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted hull distances with many exact ties on the threshold, some NaN predictions."""
    true = rng.normal(0.08, 0.15, n).round(int(rng.integers(2, 7)))
    true[rng.random(n) < 0.15] = threshold
    pred = true + rng.normal(0, 0.08, n)
    pred[rng.random(n) < 0.1] = threshold
    pred[rng.random(n) < 0.05] = -0.0
    pred[rng.random(n) < 0.08] = np.nan
    true[:2], pred[:2] = (-1.0, 1.0), (-1.0, 1.0)  # both classes in truth and prediction
    return true, pred


def random_truth(rng: np.random.Generator, n: int, *, unique: bool = True) -> pd.DataFrame:
    """WBM-summary-like truth (values at 6 decimals, as matbench saves it) with values near the rounding edges."""
    hull = rng.normal(0.1, 0.15, n)
    hull[rng.random(n) < 0.15] = 0.0
    near = rng.random(n) < 0.1
    hull[near] = rng.choice([0.0004, 0.0005, 0.0006, -0.0005, -0.0004, 1e-6], near.sum())
    truth = pd.DataFrame(
        {E_FORM_DFT: rng.normal(-1.2, 0.9, n).round(6), E_HULL_DFT: hull.round(6)},
        index=pd.Index([f"wbm-{i % 5 + 1}-{i}" for i in range(n)], name=MATERIAL_ID),
    )
    if unique:
        truth[UNIQUE_PROTOTYPE] = rng.random(n) < 0.7
    return truth


def random_predictions(rng: np.random.Generator, truth: pd.DataFrame) -> pd.Series:
    """Formation energies near DFT, some exact, some NaN, some beyond 5 eV/atom (and exactly 5), some missing."""
    n = len(truth)
    dft = truth[E_FORM_DFT].to_numpy()
    pred = dft + rng.normal(0, 0.06, n)
    exact = rng.random(n) < 0.1
    pred[exact] = dft[exact]
    far = rng.random(n) < 0.02
    pred[far] = dft[far] + rng.choice([-1, 1], far.sum()) * rng.uniform(5.0, 9.0, far.sum())
    pred[rng.random(n) < 0.01] = 5.0  # near or beyond the cut
    pred[rng.random(n) < 0.05] = np.nan
    series = pd.Series(pred, index=truth.index, name="e_form_per_atom_model")
    kept = rng.random(n) > 0.03  # the rest have no prediction
    return series[kept].sample(frac=1.0, random_state=int(rng.integers(1 << 31)))  # any order


@pytest.mark.parametrize("seed", range(40))
def test_stable_metrics_matches_reference_on_random_inputs(ref: types.ModuleType, seed: int) -> None:
    rng = np.random.default_rng(seed)
    threshold = float(rng.choice([0.0, 0.0, 0.05, 0.1, -0.01]))
    fillna = bool(seed % 4)
    true, pred = random_hull_distances(rng, int(rng.integers(5, 3000)), threshold)
    index = pd.Index([f"m{i}" for i in range(len(true))])
    expected = ref_metrics(
        ref, pd.Series(true, index), pd.Series(pred, index), stability_threshold=threshold, fillna=fillna
    )
    for inputs in ((true, pred), (pd.Series(true, index), pd.Series(pred, index)), (list(true), list(pred))):
        assert_same(stable_metrics(*inputs, stability_threshold=threshold, fillna=fillna), expected)


@pytest.mark.parametrize(
    ("seed", "n", "unique"), [(s, n, u) for s, n in enumerate((8, 40, 300, 3000)) for u in (True, False)]
)
def test_discovery_metrics_matches_reference_tables(ref: types.ModuleType, seed: int, n: int, unique: bool) -> None:
    rng = np.random.default_rng(100 + seed)
    truth = random_truth(rng, n, unique=unique)
    truth.iloc[:4, :2] = [[-1.0, -0.2], [-1.0, 0.3], [-2.0, -0.1], [-2.0, 0.2]]  # both classes in every subset
    if unique:
        truth.iloc[:4, 2] = True
    e_form_pred = random_predictions(rng, truth)
    e_form_pred[truth.index[:4]] = [-1.1, -1.2, -2.05, -1.9]
    for options in ({}, {"decimals": None}, {"max_error": None}, {"max_error": 0.1, "decimals": 2}):
        ours = discovery_metrics(truth, e_form_pred, **options)
        theirs = reference_tables(ref, truth, e_form_pred, **options)
        assert list(ours) == list(theirs) == (["full", "unique_prototypes", "most_stable_10k"] if unique else ["full"])
        for table, expected in theirs.items():
            assert_same(ours[table], expected)


def test_most_stable_10k_with_more_than_10k_unique_prototypes(ref: types.ModuleType) -> None:
    rng = np.random.default_rng(7)
    truth = random_truth(rng, 25_000)
    e_form_pred = random_predictions(rng, truth)
    ours, theirs = discovery_metrics(truth, e_form_pred), reference_tables(ref, truth, e_form_pred)
    for table, expected in theirs.items():
        assert_same(ours[table], expected)
    ten_k = ours["most_stable_10k"]
    assert ten_k["TP"] + ten_k["FP"] + ten_k["TN"] + ten_k["FN"] == 10_000
    assert ours["unique_prototypes"]["TP"] + ours["unique_prototypes"]["FN"] > ten_k["TP"] + ten_k["FN"]


def test_most_stable_10k_with_fewer_rows_is_every_unique_prototype(ref: types.ModuleType) -> None:
    rng = np.random.default_rng(8)
    truth = random_truth(rng, 500)
    e_form_pred = random_predictions(rng, truth)
    ours = discovery_metrics(truth, e_form_pred)
    assert_same(ours["most_stable_10k"], reference_tables(ref, truth, e_form_pred)["most_stable_10k"])
    ten_k = ours["most_stable_10k"]
    # with fewer than 10k, pandas' nsmallest takes NaN predictions too (last), and they count as predicted unstable
    assert ten_k["TP"] + ten_k["FP"] + ten_k["TN"] + ten_k["FN"] == truth[UNIQUE_PROTOTYPE].sum()
    assert {key: ten_k[key] for key in COUNTS} == {key: ours["unique_prototypes"][key] for key in COUNTS}


# --- edge cases ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fillna", [True, False])
def test_nan_predictions(ref: types.ModuleType, fillna: bool) -> None:
    true = pd.Series([-0.2, -0.1, 0.0, 0.1, 0.2, 0.3, -0.3])
    pred = pd.Series([np.nan, -0.2, np.nan, 0.05, np.nan, -0.1, -0.4])
    assert_same(stable_metrics(true, pred, fillna=fillna), ref_metrics(ref, true, pred, fillna=fillna))
    classes = classify_stable(true, pred, fillna=fillna)
    assert (int(classes.false_neg.sum()), int(classes.true_neg.sum())) == ((2, 2) if fillna else (0, 1))


@pytest.mark.parametrize("threshold", [0.0, 0.05, -0.02])
def test_values_exactly_on_the_threshold_count_as_stable(ref: types.ModuleType, threshold: float) -> None:
    on = threshold
    true = np.array([on, on, -0.0 if on == 0 else on, 1e-300 + on, -1e-300 + on, 0.5, -0.5, np.nextafter(on, 1)])
    pred = np.array([on, np.nextafter(on, 1), on, on, 0.5, on, np.nextafter(on, -1), -0.0 if on == 0 else on])
    ours = stable_metrics(true, pred, stability_threshold=threshold)
    assert_same(ours, ref_metrics(ref, pd.Series(true), pd.Series(pred), stability_threshold=threshold))
    assert ours["TP"] >= 3


def test_nothing_predicted_stable_gives_nan_precision(ref: types.ModuleType) -> None:
    true, pred = np.array([-1.0, 1.0, 0.5]), np.array([1.0, 1.0, np.nan])
    ours = stable_metrics(true, pred)
    assert_same(ours, ref_metrics(ref, true, pred))  # numpy input: NaN where the reference divides by zero
    assert math.isnan(ours["Precision"]) and math.isnan(ours["F1"]) and math.isnan(ours["DAF"])
    with pytest.raises(ZeroDivisionError):  # pandas input: the reference raises instead
        ref_metrics(ref, pd.Series(true), pd.Series(pred))


def test_accuracy_divides_by_pairs_without_nan_as_the_reference_does(ref: types.ModuleType) -> None:
    true, pred = np.array([-1.0, 1.0, 2.0]), np.array([np.nan, np.nan, 1.0])
    ours = stable_metrics(true, pred)
    assert_same(ours, ref_metrics(ref, true, pred))
    assert ours["Accuracy"] == 2.0  # TN = 2 (one a NaN prediction) over 1 pair without NaN


def test_tiny_sets(ref: types.ModuleType) -> None:
    true, pred = np.array([-1.0, 1.0]), np.array([np.nan, -1.0])
    assert_same(stable_metrics(true, pred), ref_metrics(ref, true, pred))  # R2 NaN: one pair
    true, pred = np.array([-1.0, 1.0]), np.array([-0.5, 2.0])
    assert_same(stable_metrics(true, pred), ref_metrics(ref, pd.Series(true), pd.Series(pred)))


def test_all_truth_stable_gives_nan_rates_where_the_reference_raises(ref: types.ModuleType) -> None:
    true, pred = np.array([-1.0, -0.5, 0.0]), np.array([0.1, -1.0, np.nan])
    with pytest.raises(ValueError, match="don't add up to 1"):
        ref_metrics(ref, true, pred)
    ours = stable_metrics(true, pred)
    expected = {"TP": 1, "FP": 0, "TN": 0, "FN": 2, "Precision": 1.0, "Recall": 1 / 3, "F1": 0.5, "DAF": 1.0}
    expected |= {"Accuracy": 0.5, "TPR": 1 / 3, "FNR": 2 / 3, "MAE": 0.8, "RMSE": math.sqrt(0.73)}
    expected["R2"] = 1 - (1.1**2 + 0.5**2) / (2 * 0.25**2)
    assert {key: ours[key] for key in expected} == pytest.approx(expected, rel=1e-12)
    assert math.isnan(ours["FPR"]) and math.isnan(ours["TNR"])


def test_all_truth_unstable_gives_nan_recall_where_the_reference_raises(ref: types.ModuleType) -> None:
    true, pred = np.array([1.0, 2.0, 0.5]), np.array([0.1, -1.0, np.nan])
    with pytest.raises(ValueError, match="don't add up to 1"):
        ref_metrics(ref, true, pred)
    ours = stable_metrics(true, pred)
    assert (ours["TP"], ours["FP"], ours["TN"], ours["FN"]) == (0, 1, 2, 0)
    assert ours["Precision"] == 0.0 and ours["FPR"] == 1 / 3 and ours["TNR"] == 2 / 3 and ours["Accuracy"] == 1.0
    assert all(math.isnan(ours[key]) for key in ("Recall", "TPR", "FNR", "F1", "DAF"))


def test_all_predictions_nan_or_no_input(ref: types.ModuleType) -> None:
    true, pred = np.array([-1.0, 1.0]), np.array([np.nan, np.nan])
    with pytest.raises(ValueError, match="0 sample"):
        ref_metrics(ref, true, pred)  # scikit-learn's r2_score refuses empty input
    ours = stable_metrics(true, pred)
    assert (ours["TP"], ours["FP"], ours["TN"], ours["FN"]) == (0, 0, 1, 1)
    assert all(math.isnan(ours[key]) for key in ("Precision", "F1", "DAF", "Accuracy", "MAE", "RMSE", "R2"))
    empty = stable_metrics([], [])
    assert [empty[key] for key in COUNTS] == [0, 0, 0, 0]
    assert all(math.isnan(value) for key, value in empty.items() if key not in COUNTS)


def test_regression_metrics_follow_scikit_learn_r2(ref: types.ModuleType) -> None:
    from sklearn.metrics import r2_score

    cases = [
        ([0.1, 0.1, 0.1], [0.1, 0.1, 0.2]),  # constant truth whose mean is not exactly 0.1
        ([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]),
        ([0.5, 0.5], [0.5, 0.7]),
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
        ([1.0, 2.0, 3.0, np.nan], [1.5, 2.0, 2.0, 1.0]),
        ([1.0], [2.0]),
    ]
    for true, pred in cases:
        t, p = np.array(true), np.array(pred)
        valid = ~np.isnan(t)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = r2_score(t[valid], p[valid])
        got = regression_metrics(t, p)["R2"]
        assert got == expected or (math.isnan(got) and math.isnan(expected)), (true, pred)


def test_inputs_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="equal length"):
        stable_metrics([0.0, 1.0], [0.0])


def test_drop_unrealistic_predictions_cuts_beyond_5_ev_per_atom() -> None:
    index = ["a", "b", "c", "d", "e", "f"]
    dft = pd.Series([0.0, 0.0, -1.0, -1.0, 2.0, 0.0], index)
    pred = pd.Series([5.0, 5.000001, -6.0, -6.01, np.nan, -4.9], index)
    kept = drop_unrealistic_predictions(pred, dft)
    assert kept.index.tolist() == index
    assert kept.isna().tolist() == [False, True, False, True, True, False]
    assert drop_unrealistic_predictions(pred, dft, max_error=0.5).notna().sum() == 0
    with pytest.raises(ValueError, match="negative"):
        drop_unrealistic_predictions(pred, dft, max_error=-1)


def test_missing_predictions_count_as_nan_predictions() -> None:
    rng = np.random.default_rng(3)
    truth = random_truth(rng, 200)
    full = pd.Series(truth[E_FORM_DFT] + rng.normal(0, 0.05, 200), truth.index)
    partial = full.iloc[::2]
    assert json.dumps(discovery_metrics(truth, partial)) == json.dumps(
        discovery_metrics(truth, full.where(full.index.isin(partial.index)))
    )


def test_most_stable_takes_the_lowest_in_input_order_and_nan_last() -> None:
    each = pd.Series([0.3, np.nan, -0.1, 0.0, -0.1], index=list("abcde"))
    assert most_stable(each, 3).index.tolist() == ["c", "e", "d"]
    assert most_stable(each, 4).index.tolist() == ["c", "e", "d", "a"]
    assert most_stable(each).index.tolist() == ["c", "e", "d", "a", "b"]  # NaN last, when there are too few


def test_discovery_metrics_refuses_unknown_or_duplicate_ids() -> None:
    truth = random_truth(np.random.default_rng(4), 10)
    with pytest.raises(ValueError, match="not in the truth: nope"):
        discovery_metrics(truth, pd.Series([0.0], ["nope"]))
    with pytest.raises(ValueError, match="duplicate"):
        discovery_metrics(truth, pd.Series([0.0, 0.1], [truth.index[0]] * 2))
    with pytest.raises(ValueError, match="lacks column"):
        discovery_metrics(truth.drop(columns=E_HULL_DFT), pd.Series(dtype=float))


# --- files -----------------------------------------------------------------------------------------------------------

# the columns of matbench's 2023-12-13-wbm-summary.csv.gz, in order (values below are made up)
WBM_SUMMARY_COLUMNS = [
    *(MATERIAL_ID, "formula_from_cse", "n_sites", "volume", "uncorrected_energy", "e_form_per_atom_wbm"),
    *("e_above_hull_wbm", "bandgap_pbe", "wyckoff_spglib_initial_structure", "uncorrected_energy_from_cse"),
    *("e_correction_per_atom_mp2020", "e_correction_per_atom_mp_legacy", "e_form_per_atom_uncorrected"),
    *(E_FORM_DFT, E_HULL_DFT, "site_stats_fingerprint_init_final_norm_diff", "wyckoff_spglib", UNIQUE_PROTOTYPE),
]


def write_truth(path: Path, truth: pd.DataFrame) -> Path:
    frame = truth.reset_index()
    for col in WBM_SUMMARY_COLUMNS:
        if col not in frame and col != UNIQUE_PROTOTYPE:
            frame[col] = "A2B_oP12_62_2c_c" if "wyckoff" in col else 1.0
    text = frame[[col for col in WBM_SUMMARY_COLUMNS if col in frame]].to_csv(index=False)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def write_pred(path: Path, e_form_pred: pd.Series, **other_columns: Any) -> Path:
    frame = pd.DataFrame({e_form_pred.name or "e_form_per_atom": e_form_pred, **other_columns})
    frame.index.name = MATERIAL_ID
    frame.to_csv(path)
    return path


def test_metrics_command_writes_what_discovery_metrics_gives(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    truth = random_truth(rng, 300)
    e_form_pred = random_predictions(rng, truth)
    truth_csv = write_truth(tmp_path / "wbm-summary.csv.gz", truth)
    pred_csv = write_pred(tmp_path / "pred.csv", e_form_pred)
    out = tmp_path / "out" / "metrics.json"
    metrics = metrics_command(truth_csv, pred_csv, None, out)
    assert json.dumps(metrics) == json.dumps(discovery_metrics(truth, e_form_pred))
    assert json.loads(out.read_text()) == metrics
    assert out.read_text().startswith('{\n  "full": {\n    "F1": ')


def test_metrics_command_writes_nan_as_null_and_picks_pred_col(tmp_path: Path) -> None:
    truth = pd.DataFrame(
        {E_FORM_DFT: [-1.0, -2.0, -0.5], E_HULL_DFT: [-0.01, 0.0, 0.2], UNIQUE_PROTOTYPE: [True, True, False]},
        index=pd.Index(["wbm-1-1", "wbm-1-2", "wbm-1-3"], name=MATERIAL_ID),
    )
    truth_csv = write_truth(tmp_path / "truth.csv", truth)
    e_form_pred = pd.Series([-1.1, -1.9, -0.4], truth.index, name="chgnet")
    pred_csv = write_pred(tmp_path / "pred.csv", e_form_pred, mace=[-1.5, -2.5, -1.0])
    out = tmp_path / "metrics.json"
    metrics = metrics_command(truth_csv, pred_csv, "chgnet", out)
    assert math.isnan(metrics["unique_prototypes"]["FPR"])  # no unstable unique prototype
    assert json.loads(out.read_text())["unique_prototypes"]["FPR"] is None
    assert metrics["full"]["TP"] == 1 and metrics["full"]["FN"] == 1
    mace = metrics_command(truth_csv, pred_csv, "mace", out)["full"]
    assert (mace["TP"], mace["FP"]) == (2, 1)


def test_metrics_command_without_unique_prototype_column(tmp_path: Path) -> None:
    truth = random_truth(np.random.default_rng(6), 50, unique=False)
    truth_csv = write_truth(tmp_path / "truth.csv", truth)
    pred_csv = write_pred(tmp_path / "pred.csv", truth[E_FORM_DFT].rename("e"))
    metrics = metrics_command(truth_csv, pred_csv, None, tmp_path / "m.json")
    assert list(metrics) == ["full"] and metrics["full"]["MAE"] < 1e-15 and metrics["full"]["F1"] == 1.0


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    truth = random_truth(np.random.default_rng(9), 20)
    return write_truth(tmp_path / "truth.csv", truth), write_pred(tmp_path / "pred.csv", truth[E_FORM_DFT].rename("e"))


@pytest.mark.parametrize(
    ("which", "content", "pred_col", "message"),
    [
        ("truth", f"{MATERIAL_ID},{E_FORM_DFT}\nx,1\n", None, f"truth.csv: missing column\\(s\\) {E_HULL_DFT}"),
        ("truth", f"id,{E_FORM_DFT},{E_HULL_DFT}\nx,1,0\n", None, f"missing column\\(s\\) {MATERIAL_ID}"),
        ("truth", "", None, "truth.csv: cannot read a CSV header"),
        ("truth", f"{MATERIAL_ID},{E_FORM_DFT},{E_HULL_DFT}\nx,1,0\nx,2,0\n", None, "truth.csv: duplicate .*: x"),
        (
            "truth",
            f"{MATERIAL_ID},{E_FORM_DFT},{E_HULL_DFT}\nx,abc,0\n",
            None,
            f"non-numeric .* {E_FORM_DFT}: x: 'abc'",
        ),
        ("truth", f"{MATERIAL_ID},{E_FORM_DFT},{E_HULL_DFT},{UNIQUE_PROTOTYPE}\nx,1,0,maybe\n", None, "True/False"),
        ("pred", "id,e\nx,1\n", None, f"pred.csv: no {MATERIAL_ID} column"),
        ("pred", f"{MATERIAL_ID},e,f\nx,1,2\n", None, "columns e, f besides .*--pred-col"),
        ("pred", f"{MATERIAL_ID}\nx\n", None, "found no column"),
        ("pred", f"{MATERIAL_ID},e,f\nx,1,2\n", "g", "pred.csv: no prediction column 'g' \\(it has: e, f\\)"),
        (
            "pred",
            f"{MATERIAL_ID},e\nnot-in-truth,1\n",
            None,
            "pred.csv: 1 material_id.* not in .*truth.csv: not-in-truth",
        ),
        ("pred", f"{MATERIAL_ID},e\nx,one\n", None, "pred.csv: non-numeric value.* column e: x: 'one'"),
    ],
)
def test_metrics_command_input_errors_name_the_file_and_problem(
    files: tuple[Path, Path], which: str, content: str, pred_col: str | None, message: str
) -> None:
    truth_csv, pred_csv = files
    (truth_csv if which == "truth" else pred_csv).write_text(content)
    with pytest.raises(MetricsInputError, match=message):
        metrics_command(truth_csv, pred_csv, pred_col, truth_csv.parent / "metrics.json")
    assert not (truth_csv.parent / "metrics.json").exists()


def test_readers_keep_ids_as_text_and_parse_unique_prototype(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"{MATERIAL_ID},{E_FORM_DFT},{E_HULL_DFT},{UNIQUE_PROTOTYPE}\n007,-1,0.1,True\n8,-2,,False\n")
    truth = read_truth_csv(path)
    assert truth.index.tolist() == ["007", "8"] and truth[UNIQUE_PROTOTYPE].tolist() == [True, False]
    assert math.isnan(truth.loc["8", E_HULL_DFT])
    pred = tmp_path / "p.csv"
    pred.write_text(f"e,{MATERIAL_ID}\n-1.5,007\n,8\n")
    assert read_pred_csv(pred).isna().tolist() == [False, True]
