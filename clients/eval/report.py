"""``report.html``: one self-contained page with every model's metrics side by side, the published leaderboard rows
for comparison, how each relaxation run went, and the plots (embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .plots import TITLES

#: matbench-discovery's published leaderboard (WBM unique prototypes), as issue 13 gives it: F1 only.
LEADERBOARD = (
    ("SevenNet-l3i5", 0.760),
    ("SevenNet-0", 0.724),
    ("MACE-MP-0", 0.669),
    ("CHGNet", 0.613),
    ("M3GNet", 0.569),
)
METRIC_COLUMNS = ("F1", "DAF", "Precision", "Recall", "Accuracy", "MAE", "RMSE", "R2", "TP", "FP", "TN", "FN")
SUBSET_TITLES = {
    "unique_prototypes": "Unique prototypes (matbench's headline)",
    "full": "All structures of this run",
    "most_stable_10k": "10k most stable predictions among unique prototypes",
}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.published td { color: #666; font-style: italic; background: #f7f7f7; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; margin-bottom: 1.5em; }
"""


def render_report(
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]],
    table: pd.DataFrame,
    plots: Mapping[str, bytes],
    info: Mapping[str, Any],
) -> str:
    """The page's HTML; ``info`` holds ``dataset``, ``reference``, ``server``, ``relax`` and ``notes``."""
    models = list(metrics)
    parts = [f"<h1>mlipserve eval discovery</h1>{_info(info)}"]
    subsets = [s for s in SUBSET_TITLES if any(s in metrics[m] for m in models)]
    for subset in subsets:  # the published rows go with the headline: unique prototypes where there are any
        table_html = _metrics_table(metrics, subset, published=subset == subsets[0])
        parts.append(f"<h2>{html.escape(SUBSET_TITLES[subset])}</h2>{table_html}")
    parts.append(f"<h2>Relaxations</h2>{_runs_table(table, models)}")
    for name, png in plots.items():
        data = base64.b64encode(png).decode()
        parts.append(
            f'<h2>{html.escape(TITLES.get(name, name))}</h2><img alt="{name}" src="data:image/png;base64,{data}">'
        )
    body = "\n".join(parts)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>mlipserve eval discovery</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def _info(info: Mapping[str, Any]) -> str:
    relax = ", ".join(f"{k} {v}" for k, v in info.get("relax", {}).items() if k != "trajectory_every")
    rows = [
        ("structures", info.get("dataset", "")),
        ("reference", info.get("reference", "")),
        ("server", info.get("server", "")),
        ("relaxation", f"{relax} (FIRE; relax_cell true is ASE's FrechetCellFilter)"),
    ]
    items = "".join(
        f"<tr><td>{html.escape(k)}</td><td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in info.get("notes", []))
    return f"<table>{items}</table>" + (f"<ul class='note'>{notes}</ul>" if notes else "")


def _metrics_table(metrics: Mapping[str, Mapping[str, Mapping[str, Any]]], subset: str, published: bool) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("model", *METRIC_COLUMNS))
    rows = []
    for model, subsets in metrics.items():
        values = subsets.get(subset, {})
        cells = "".join(f"<td>{_number(values.get(c))}</td>" for c in METRIC_COLUMNS)
        rows.append(f"<tr><td>{html.escape(model)}</td>{cells}</tr>")
    note = ""
    if published:
        for name, f1 in LEADERBOARD:
            cells = "".join(f"<td>{_number(f1) if c == 'F1' else '–'}</td>" for c in METRIC_COLUMNS)
            rows.append(f"<tr class='published'><td>{name} (published)</td>{cells}</tr>")
        note = (
            "<p class='note'>Grey rows: matbench-discovery's published leaderboard on all 215k WBM unique "
            "prototypes (F1 only given here), for comparison; this run's rows are computed on the structures above, "
            "against the reference named above. Accuracy is matbench's: (TP + TN) over the structures with a "
            "prediction, so it can exceed 1 when some predictions are missing or dropped.</p>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{note}"


def _runs_table(table: pd.DataFrame, models: Sequence[str]) -> str:
    columns = ("model", "structures", "relaxed", "errors", "converged", "median steps", "median RMSD", "symmetry kept")
    head = "".join(f"<th>{c}</th>" for c in (*columns, "seconds", "structures/min"))
    rows = []
    for model in models:
        rows_of = table[table["model"] == model]
        relaxed = rows_of[rows_of["error"] == ""]
        seconds = float(rows_of["seconds"].fillna(0).sum())
        symmetry = relaxed["symmetry_match"].dropna().astype(bool)
        cells = [
            len(rows_of),
            len(relaxed),
            len(rows_of) - len(relaxed),
            int(relaxed["converged"].fillna(False).astype(bool).sum()),
            _number(relaxed["steps"].median(), 0),
            _number(relaxed["rmsd"].median()),
            f"{symmetry.mean():.0%}" if len(symmetry) else "–",
            _number(seconds, 1),
            _number(60 * len(relaxed) / seconds if seconds > 0 else math.nan, 1),
        ]
        rows.append(f"<tr><td>{html.escape(model)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    note = (
        "<p class='note'>seconds: the wall-clock time between consecutive results of the run(s) that relaxed them, "
        "so they add up to the time spent; RMSD where a reference-relaxed structure is known.</p>"
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{note}"


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"
