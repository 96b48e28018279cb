"""The PNG plots of a discovery evaluation, drawn with matplotlib's Agg canvas (no pyplot, no display needed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from io import BytesIO
from typing import Any

import numpy as np
import pandas as pd

from .metrics import DECIMALS

#: Colour-blind-safe colours (Okabe–Ito) for models and for the four stability classes.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
LINE_STYLES = ("-", "--", ":", "-.")
CLASS_COLOURS = {"TP": "#009E73", "FN": "#E69F00", "FP": "#D55E00", "TN": "#56B4E9"}
TITLES = {
    "parity": "formation energy: model against reference",
    "hull_histogram": "reference hull distance, by predicted class",
    "precision_recall": "precision and recall against candidates screened",
    "confusion": "confusion matrices",
    "rmsd": "RMSD to the reference-relaxed structure",
}


def make_plots(table: pd.DataFrame, models: Sequence[str]) -> dict[str, bytes]:
    """The PNG of each plot of :data:`TITLES`, by name."""
    draw: dict[str, Callable[[pd.DataFrame, Sequence[str]], Any]] = {
        "parity": _parity,
        "hull_histogram": _hull_histogram,
        "precision_recall": _precision_recall,
        "confusion": _confusion,
        "rmsd": _rmsd,
    }
    return {name: _png(function(table, models)) for name, function in draw.items()}


def _figure(panels: int, height: float = 3.6) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(4.2 * panels, 5.0), height), dpi=110, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _rows(table: pd.DataFrame, model: str) -> pd.DataFrame:
    return table[table["model"] == model]


def _parity(table: pd.DataFrame, models: Sequence[str]) -> Any:
    figure, axes = _figure(len(models))
    for ax, model, colour in zip(axes, models, COLOURS, strict=False):
        rows = _rows(table, model).dropna(subset=["e_form_per_atom", "e_form_per_atom_ref"])
        kept = rows["e_above_hull"].notna()  # NaN: more than 5 eV/atom off, dropped as matbench drops it
        x, y = rows["e_form_per_atom_ref"].to_numpy(float), rows["e_form_per_atom"].to_numpy(float)
        ax.scatter(x[kept], y[kept], s=14, color=colour, alpha=0.8, edgecolors="none")
        if (~kept).any():
            ax.scatter(x[~kept], y[~kept], s=18, color="grey", marker="x", label="dropped: > 5 eV/atom off")
            ax.legend(loc="lower right", fontsize=8, frameon=False)
        if len(x):
            low, high = min(x.min(), y.min()), max(x.max(), y.max())
            pad = 0.05 * (high - low or 1.0)
            ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", lw=0.8, ls="--")
            mae = np.abs(x[kept] - y[kept]).mean() if kept.any() else float("nan")
            text = f"MAE {mae:.3f} eV/atom\nn = {int(kept.sum())}"
            ax.text(0.04, 0.94, text, transform=ax.transAxes, va="top")
        ax.set(title=model, xlabel="reference E_form (eV/atom)", ylabel="model E_form (eV/atom)")
    return figure


def _hull_histogram(table: pd.DataFrame, models: Sequence[str]) -> Any:
    figure, axes = _figure(len(models))
    values = table["e_above_hull_ref"].to_numpy(float)
    finite = values[np.isfinite(values)]
    low, high = np.clip([finite.min(), finite.max()], -1.0, 1.0) if len(finite) else (-0.5, 0.5)
    if high - low < 1e-3:
        low, high = low - 0.05, high + 0.05
    bins = np.linspace(low, high, 31)
    for ax, model in zip(axes, models, strict=False):
        rows = _rows(table, model)
        groups = [
            rows.loc[rows["stability"] == c, "e_above_hull_ref"].clip(low, high).to_numpy(float) for c in CLASS_COLOURS
        ]
        labels = [f"{c} ({len(g)})" for c, g in zip(CLASS_COLOURS, groups, strict=True)]
        ax.hist(groups, bins=bins, stacked=True, color=list(CLASS_COLOURS.values()), label=labels)
        ax.axvline(0, color="black", lw=0.8)
        ax.set(title=model, xlabel="reference hull distance (eV/atom)", ylabel="structures")
        ax.legend(fontsize=8, frameon=False)
    return figure


def _precision_recall(table: pd.DataFrame, models: Sequence[str]) -> Any:
    figure, (precision_ax, recall_ax) = _figure(2)
    for n, (model, colour) in enumerate(zip(models, COLOURS, strict=False)):
        style = {"color": colour, "label": model, "ls": LINE_STYLES[n % len(LINE_STYLES)], "lw": 1.6}
        rows = _rows(table, model).dropna(subset=["e_above_hull_ref"])
        ordered = rows.sort_values("e_above_hull", na_position="last")
        stable = (ordered["e_above_hull_ref"].round(DECIMALS) <= 0).to_numpy()  # as metrics.json counts
        if not len(stable):
            continue
        screened = np.arange(1, len(stable) + 1)
        found = np.cumsum(stable)
        precision_ax.plot(screened, found / screened, **style)
        recall_ax.plot(screened, found / max(stable.sum(), 1), **style)
    precision_ax.set(xlabel="candidates screened (most stable predicted first)", ylabel="precision", ylim=(0, 1.05))
    recall_ax.set(xlabel="candidates screened (most stable predicted first)", ylabel="recall", ylim=(0, 1.05))
    precision_ax.legend(frameon=False)
    return figure


def _confusion(table: pd.DataFrame, models: Sequence[str]) -> Any:
    figure, axes = _figure(len(models), height=3.4)
    for ax, model in zip(axes, models, strict=False):
        counts = _rows(table, model)["stability"].value_counts()
        matrix = np.array([[counts.get("TP", 0), counts.get("FN", 0)], [counts.get("FP", 0), counts.get("TN", 0)]])
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(matrix.max(), 1))
        for (row, col), name in np.ndenumerate(np.array([["TP", "FN"], ["FP", "TN"]])):
            dark = matrix[row, col] > 0.6 * max(matrix.max(), 1)
            ax.text(
                col, row, f"{name}\n{matrix[row, col]}", ha="center", va="center", color="white" if dark else "black"
            )
        ax.set(title=model, xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="reference")
        ax.set_xticklabels(["stable", "unstable"])
        ax.set_yticklabels(["stable", "unstable"])
    return figure


def _rmsd(table: pd.DataFrame, models: Sequence[str]) -> Any:
    figure, (ax,) = _figure(1)
    known = table.dropna(subset=["rmsd"])
    if known.empty:
        ax.text(0.5, 0.5, "no RMSD: no reference-relaxed structures\n(or none matched)", ha="center", va="center")
        ax.set_axis_off()
        return figure
    bins = np.linspace(0, max(float(known["rmsd"].max()), 1e-3), 31)
    for model, colour in zip(models, COLOURS, strict=False):
        values = _rows(known, model)["rmsd"].to_numpy(float)
        if len(values):
            ax.hist(
                values,
                bins=bins,
                histtype="step",
                lw=1.6,
                color=colour,
                label=f"{model} (median {np.median(values):.3f})",
            )
    ax.set(xlabel="RMSD, StructureMatcher (normalised by (V/N)^1/3)", ylabel="structures")
    ax.legend(frameon=False)
    return figure
