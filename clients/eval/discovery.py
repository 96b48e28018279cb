"""``mlipserve eval discovery``: relax a set of candidate crystals with one or more models through a running server,
then score how well each model finds the stable ones, as matbench-discovery does.

The output folder holds ``results/<model>.ndjson`` (one line per relaxed structure, appended as results arrive; a
rerun relaxes only what is missing), ``run.json`` (how the run relaxes), ``predictions.csv``, ``metrics.json``
(``{model: discovery_metrics(...)}``), the PNG plots and ``report.html``. Every file but the results is written
whole through a rename, so an interrupted run never leaves one half written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlipserve import __version__
from mlipserve.protocol import RelaxOptions

from ..options import DEFAULT_URL
from . import store
from .errors import EvalError
from .generic_files import GenericSet, load_generic
from .matbench_files import MatbenchPaths, load_matbench
from .metrics import E_FORM_DFT, discovery_metrics
from .plots import make_plots
from .predictions import prediction_table
from .reference import Reference, generic_reference, matbench_reference
from .report import render_report


@dataclass(frozen=True)
class DiscoveryConfig:
    """One evaluation: ``matbench`` files or a generic ``structures`` set, the models, the server and the output."""

    models: tuple[str, ...]
    out: Path
    server: str = DEFAULT_URL
    matbench: MatbenchPaths | None = None
    subset: str = "unique_prototypes"
    structures: Path | None = None
    relaxed: Path | None = None
    energies: Path | None = None
    reference_model: str | None = None
    sample: int | None = None
    seed: int = 0
    relax: RelaxOptions = field(default_factory=RelaxOptions)
    job_size: int = 1000
    jobs_in_flight: int = 2
    report_only: bool = False
    geometry: bool = True
    progress: bool | None = None


def run_discovery(config: DiscoveryConfig) -> dict[str, Any]:
    """Relax what is missing, score every model, write the outputs; returns ``{model: metrics}``."""
    if (config.matbench is None) == (config.structures is None):
        raise EvalError("give either matbench's files (--matbench-data, --wbm-...) or --structures, not both")
    if config.reference_model is not None and config.structures is None:
        raise EvalError("--reference-model is for generic sets (--structures)")
    data = _load(config)
    relaxed_models = list(dict.fromkeys([*config.models, *filter(None, [config.reference_model])]))
    servers = _check_run_file(config)
    if not config.report_only:
        _relax(config, data.atoms, relaxed_models)
    records = {model: store.read_results(config.out, model) for model in relaxed_models}
    reference = _reference(config, data, records)
    scored = [m for m in config.models if m != config.reference_model]
    if not scored:
        raise EvalError("no model to score: every --model is the --reference-model")
    if reference.truth.empty:
        raise EvalError("nothing to score: no structure has a reference. " + " ".join(reference.notes))
    ids = list(data.atoms)
    table = pd.concat([prediction_table(m, ids, records[m], reference, config.geometry) for m in scored])
    metrics = {m: _metrics(reference, table, m) for m in scored}
    _write_outputs(config, data.description, reference, table, metrics, servers)
    return metrics


def _load(config: DiscoveryConfig) -> Any:
    if config.matbench is not None:
        return load_matbench(config.matbench, config.subset, config.sample, config.seed)
    assert config.structures is not None
    return load_generic(config.structures, config.relaxed, config.energies, config.sample, config.seed)


def _relax(config: DiscoveryConfig, atoms: dict, models: list[str]) -> None:
    from ..client import Client
    from .relax_jobs import check_models, relax_missing

    with Client(config.server, progress=False) as client:
        check_models(client, models)
        relax_missing(
            client,
            atoms,
            models,
            config.out,
            config.relax,
            job_size=config.job_size,
            in_flight=config.jobs_in_flight,
            progress=config.progress,
        )


def _reference(config: DiscoveryConfig, data: Any, records: dict[str, dict]) -> Reference:
    if not isinstance(data, GenericSet):
        return matbench_reference(data)
    if config.reference_model is None:
        return generic_reference(data)
    return generic_reference(data, (config.reference_model, records[config.reference_model]))


def _metrics(reference: Reference, table: pd.DataFrame, model: str) -> dict[str, Any]:
    rows = table[table["model"] == model].set_index("material_id")
    e_form = rows["e_form_per_atom"].astype(float).reindex(reference.truth.index)
    return discovery_metrics(reference.truth.astype({E_FORM_DFT: float}), e_form)


def _check_run_file(config: DiscoveryConfig) -> list[str]:
    """Refuse to mix relaxation settings in one folder; record them, and the servers used, for the next run."""
    path = config.out / "run.json"
    relax, before = config.relax.request(), {}
    if path.exists():
        before = json.loads(path.read_text())
        if before.get("relax") not in (None, relax):
            message = f"{config.out} holds results relaxed with {before['relax']}, not {relax}: use another --out"
            raise EvalError(message)
    servers = list(dict.fromkeys([*before.get("servers", []), *([] if config.report_only else [config.server])]))
    run = {"relax": relax, "servers": servers, "mlipserve": __version__}
    store.write_atomic(path, json.dumps(run, indent=2) + "\n")
    return servers


def _write_outputs(
    config: DiscoveryConfig,
    dataset: str,
    reference: Reference,
    table: pd.DataFrame,
    metrics: dict[str, Any],
    servers: list[str],
) -> None:
    out = config.out
    store.write_atomic(out / "predictions.csv", table.to_csv(index=False))
    store.write_atomic(out / "metrics.json", store.json_text(metrics))
    plots = make_plots(table, list(metrics))
    for name, png in plots.items():
        store.write_atomic(out / f"{name}.png", png)
    info = {
        "dataset": dataset,
        "reference": reference.label,
        "server": ", ".join(servers) or "none (--report-only)",
        "relax": config.relax.request(),
        "notes": reference.notes,
    }
    store.write_atomic(out / "report.html", render_report(metrics, table, plots, info))
