"""`mlipserve eval discovery` end to end, through a real server with SevenNet-0 and CHGNet: a generic set of real DFT
frames (interrupted, then resumed), a model as the reference, and matbench's own file formats (tests/data/matbench).

Every number the command writes is recomputed here independently: hulls with pymatgen, formation energies from the
energies in predictions.csv, and the metrics with a small implementation of matbench's definitions.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.io import read, write
from mlipserve.clients.eval import store
from mlipserve.clients.eval.cli import main
from mlipserve.clients.eval.errors import EvalError
from mlipserve.clients.eval.generic_files import load_generic
from mlipserve.clients.eval.matbench_files import read_initial_atoms
from mlipserve.server.api.jobs import JobManager
from mlipserve.server.config import ServerSettings
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from .conftest import DATASETS, FIXTURES, REPO, RunningServer, free_port

MODELS = ("7net-0", "chgnet-0.3.0")
MATBENCH_DATA = REPO / "tests" / "data" / "matbench"
MP_REFS = FIXTURES / "matbench" / "2023-02-07-mp-elemental-reference-entries.json.gz"
#: Li cells (2 atoms) and a Li slab, a Ni slab, two HfO2 cells (no pure Hf or O frame: left out of the hull).
FRAMES = (
    ("mlearn_Li_test_DFT.DERIVED.extxyz", (26, 27, 28, 25)),
    ("mlearn_Ni_test_DFT.DERIVED.extxyz", (4,)),
    ("SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz", (4, 9)),
)
PLOTS = ("parity", "hull_histogram", "precision_recall", "confusion", "rmsd")
RELAX = ("--max-steps", "12")


@pytest.fixture(scope="module")
def eval_server() -> Iterator[RunningServer]:
    settings = ServerSettings(port=free_port(), models=MODELS, device="cpu", torch_threads=1)
    with RunningServer(settings) as running:
        from mlipserve.clients import Client

        Client(running.url).wait_until_ready(timeout=300)
        yield running


@pytest.fixture()
def submitted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Structures the server was asked to relax, per model (counted where the server creates jobs)."""
    counts: dict[str, int] = {}
    create = JobManager.create

    def counting(self: JobManager, card, status, properties, load, total=None, **kwargs):  # type: ignore[no-untyped-def]
        counts[card.name] = counts.get(card.name, 0) + (total or 0)
        return create(self, card, status, properties, load, total, **kwargs)

    monkeypatch.setattr(JobManager, "create", counting)
    return counts


@pytest.fixture()
def generic_set(tmp_path: Path) -> Path:
    frames = []
    for name, indices in FRAMES:
        for index in indices:
            atoms = read(DATASETS / name, index=index, format="extxyz")
            atoms.info = {"id": f"{name.split('_')[1]}-{index}"}
            frames.append(atoms)
    path = tmp_path / "set.extxyz"
    write(path, frames, format="extxyz")
    return path


def discovery(*args: object) -> list[str]:
    return ["eval", "discovery", *(str(a) for a in args)]


def test_generic_set_interrupted_then_resumed(
    eval_server: RunningServer, generic_set: Path, tmp_path: Path, submitted: dict[str, int]
) -> None:
    out = tmp_path / "out"
    models = [arg for m in MODELS for arg in ("--model", m)]
    args = discovery(
        *models,
        "--server",
        eval_server.url,
        "--out",
        out,
        "--structures",
        generic_set,
        "--relaxed",
        generic_set,
        *RELAX,
        "--job-size",
        1,
    )
    total = len(read(generic_set, ":"))

    # first run: a real process, stopped by SIGINT (Ctrl-C) once the first results are on disk
    first = store.results_path(out, MODELS[0])
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mlipserve.clients.eval.cli", *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (first.exists() and first.read_text().count("\n") >= 1):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no result within 180 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    before = {m: _lines(store.results_path(out, m)) for m in MODELS}
    assert len(before[MODELS[0]]) >= 1 and sum(map(len, before.values())) < 2 * total, before
    assert not (out / "metrics.json").exists()  # nothing half-made: reports come when every structure is done

    # the rerun relaxes only what is missing, then writes everything
    submitted.clear()
    main(args)
    for model in MODELS:
        assert submitted.get(model, 0) == total - len(before[model]), (submitted, before)
        after = _lines(store.results_path(out, model))
        assert after[: len(before[model])] == before[model]  # kept as they were
        assert sorted(r["id"] for r in after) == sorted({r["id"] for r in after}) and len(after) == total
    _check_outputs(out)

    table = pd.read_csv(out / "predictions.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    frames = {a.info["id"]: a for a in read(generic_set, ":")}
    energies = {i: a.get_potential_energy() for i, a in frames.items()}
    expected_truth = _hull({i: frames[i].get_chemical_formula() for i in frames}, energies)
    assert set(expected_truth.index) == {i for i in frames if not i.startswith("example")}  # HfO2: no Hf, O frames
    for model in MODELS:
        rows = table[table["model"] == model].set_index("material_id")
        assert rows["rmsd"].notna().all() and rows["symmetry_match"].notna().all()
        records = {r["id"]: r for r in _lines(store.results_path(out, model))}
        assert np.allclose(rows["energy"], [records[i]["energy"] for i in rows.index], rtol=0, atol=1e-9)
        _check_scores(rows, expected_truth, _own_formation(rows, frames, energies), metrics[model]["full"])

    # a model as the reference (labelled so): rescoring the results already there needs no server work
    submitted.clear()
    main(
        discovery(
            "--model",
            MODELS[0],
            "--reference-model",
            MODELS[1],
            "--server",
            eval_server.url,
            "--out",
            out,
            "--structures",
            generic_set,
            *RELAX,
        )
    )
    assert submitted == {}
    assert list(json.loads((out / "metrics.json").read_text())) == [MODELS[0]]
    assert "not DFT" in (out / "report.html").read_text()
    chgnet = {r["id"]: r["energy"] for r in _lines(store.results_path(out, MODELS[1]))}
    truth = _hull({i: frames[i].get_chemical_formula() for i in frames}, chgnet)
    rows = pd.read_csv(out / "predictions.csv").set_index("material_id")
    assert np.allclose(rows.loc[truth.index, "e_above_hull_ref"], truth["each"], rtol=0, atol=1e-9)


def test_matbench_files(eval_server: RunningServer, tmp_path: Path, submitted: dict[str, int]) -> None:
    out = tmp_path / "out"
    models = [arg for m in MODELS for arg in ("--model", m)]
    main(
        discovery(
            *models,
            "--server",
            eval_server.url,
            "--out",
            out,
            "--matbench-data",
            MATBENCH_DATA,
            "--mp-refs",
            MP_REFS,
            "--subset",
            "full",
            *RELAX,
        )
    )
    assert submitted == dict.fromkeys(MODELS, 8)
    _check_outputs(out)
    summary = pd.read_csv(MATBENCH_DATA / "2023-12-13-wbm-summary.DERIVED.csv.gz", index_col="material_id")
    table = pd.read_csv(out / "predictions.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics[MODELS[0]]) == {"full", "unique_prototypes", "most_stable_10k"}
    for model in MODELS:
        rows = table[table["model"] == model].set_index("material_id").loc[summary.index]
        # MP2020's corrections are the DFT entry's (same composition and oxide type), so the formation energy moves
        # by the energy difference per atom; the summary is rounded to 1e-6
        expected = (
            summary["e_form_per_atom_mp2020_corrected"]
            + (rows["energy"] - summary["uncorrected_energy_from_cse"]) / summary["n_sites"]
        )
        assert np.allclose(rows["e_form_per_atom"], expected, rtol=0, atol=2e-6)
        oxide = summary.index[summary["formula"] == "Hf4 O8"]
        assert (summary.loc[oxide, "e_correction_per_atom_mp2020"] < -0.4).all()  # the oxide correction is in there
        assert rows.loc[oxide, "e_above_hull"].isna().all()  # over 5 eV/atom from the (fixture's) DFT: dropped
        names = {"e_form_per_atom_mp2020_corrected": "e_form", "e_above_hull_mp2020_corrected_ppd_mp": "each"}
        truth = summary.rename(columns=names)
        _check_scores(rows, truth, rows["e_form_per_atom"], metrics[model]["full"])
        unique = summary.index[summary["unique_prototype"]]
        _check_scores(
            rows.loc[unique],
            truth.loc[unique],
            rows.loc[unique, "e_form_per_atom"],
            metrics[model]["unique_prototypes"],
            prevalence=_prevalence(truth.loc[unique]),
        )

    # `eval metrics` on the same predictions gives the same numbers
    pred = tmp_path / "pred.csv"
    table[table["model"] == MODELS[0]][["material_id", "e_form_per_atom"]].to_csv(pred, index=False)
    truth_csv = MATBENCH_DATA / "2023-12-13-wbm-summary.DERIVED.csv.gz"
    main(["eval", "metrics", "--truth", str(truth_csv), "--pred", str(pred), "--out", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == metrics[MODELS[0]]

    # a sample of the unique prototypes, scored from the results already there
    submitted.clear()
    main(
        discovery(
            *models,
            "--out",
            out,
            "--matbench-data",
            MATBENCH_DATA,
            "--mp-refs",
            MP_REFS,
            "--sample",
            3,
            "--seed",
            1,
            *RELAX,
            "--report-only",
        )
    )
    assert submitted == {}
    sampled = pd.read_csv(out / "predictions.csv")
    ids = list(dict.fromkeys(sampled["material_id"]))
    assert len(ids) == 3 and summary.loc[ids, "unique_prototype"].all()
    chosen = set(pd.Series(summary.index[summary["unique_prototype"]]).sample(n=3, random_state=1))
    assert ids == [i for i in summary.index if i in chosen]  # pandas' sampler with the seed, in file order


def test_results_file_survives_a_torn_line(tmp_path: Path) -> None:
    path = store.results_path(tmp_path, "m")
    path.parent.mkdir(parents=True)
    path.write_text('{"id": "a", "energy": 1.0}\n{"id": "b", "ener')
    assert list(store.read_results(tmp_path, "m")) == ["a"]
    with store.appender(tmp_path, "m") as file:
        store.append(file, {"id": "b", "energy": 2.0})
    assert store.read_results(tmp_path, "m") == {"a": {"id": "a", "energy": 1.0}, "b": {"id": "b", "energy": 2.0}}


def test_reads_other_layouts(tmp_path: Path) -> None:
    """A folder of CIF/POSCAR files with a CSV of energies; a zip whose members are not named by material_id."""
    frames = [read(DATASETS / "mlearn_Li_test_DFT.DERIVED.extxyz", index=i, format="extxyz") for i in (26, 27, 25)]
    folder = tmp_path / "cifs"
    folder.mkdir()
    write(folder / "a.cif", frames[0], format="cif")
    write(folder / "b.cif", frames[1], format="cif")
    write(folder / "POSCAR", frames[2], format="vasp")
    (tmp_path / "e.csv").write_text("id,energy\na,-3.5\nPOSCAR,-17.0\n")
    data = load_generic(folder, energies=tmp_path / "e.csv")
    assert list(data.atoms) == ["POSCAR", "a", "b"] and data.energies == {"a": -3.5, "POSCAR": -17.0}
    assert np.allclose(data.atoms["POSCAR"].positions, frames[2].positions, atol=1e-6)

    archive = tmp_path / "atoms.extxyz.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for n, atoms in enumerate(frames):
            atoms.info = {"material_id": f"wbm-9-{n}"}
            text = io.StringIO()
            write(text, atoms, format="extxyz")
            zipped.writestr(f"{n}.extxyz", text.getvalue())
    found = read_initial_atoms(archive, ["wbm-9-2", "wbm-9-0"])
    assert list(found) == ["wbm-9-2", "wbm-9-0"] and len(found["wbm-9-2"]) == len(frames[2])
    with pytest.raises(EvalError, match="no initial structure for 1 material"):
        read_initial_atoms(archive, ["wbm-9-7"])


def test_refuses_bad_runs(generic_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (out / "run.json").parent.mkdir()
    (out / "run.json").write_text(json.dumps({"relax": {"fmax": 0.02}}))
    cases = {
        "holds results relaxed with": discovery("--model", "m", "--out", out, "--structures", generic_set),
        "no such file": discovery("--model", "m", "--out", tmp_path / "o", "--structures", tmp_path / "nothing"),
        "not both": discovery(
            "--model",
            "m",
            "--out",
            tmp_path / "o",
            "--structures",
            generic_set,
            "--matbench-data",
            MATBENCH_DATA,
            "--mp-refs",
            MP_REFS,
        ),
        "no *wbm-initial-atoms*": discovery("--model", "m", "--out", tmp_path / "o", "--matbench-data", tmp_path),
    }
    for message, args in cases.items():
        with pytest.raises(SystemExit) as stopped:
            main(args)
        assert str(stopped.value.code).startswith("mlipserve eval: ") and message in str(stopped.value.code)


# --- independent computations -------------------------------------------------------------------------------------


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _hull(formulas: dict[str, str], energies: dict[str, float]) -> pd.DataFrame:
    """Reference formation energies and hull distances of the frames whose elements all have a pure frame."""
    pure = {str(Composition(f).elements[0]) for i, f in formulas.items() if Composition(f).is_element and i in energies}
    entries = {
        i: PDEntry(Composition(f), energies[i])
        for i, f in formulas.items()
        if i in energies and {str(el) for el in Composition(f)} <= pure
    }
    diagram = PhaseDiagram(list(entries.values()))
    return pd.DataFrame(
        {
            "e_form": {i: diagram.get_form_energy_per_atom(e) for i, e in entries.items()},
            "each": {i: diagram.get_e_above_hull(e, allow_negative=True) for i, e in entries.items()},
        }
    )


def _own_formation(rows: pd.DataFrame, frames: dict, reference: dict[str, float]) -> pd.Series:
    """Formation energies from predictions.csv's energies, against the model's energies of the elemental frames
    that are lowest in reference energy per atom."""
    per_atom = {}
    for i, atoms in frames.items():
        composition = Composition(atoms.get_chemical_formula())
        if composition.is_element:
            element = str(composition.elements[0])
            best = per_atom.get(element)
            if best is None or reference[i] / len(atoms) < reference[best] / len(frames[best]):
                per_atom[element] = i
    mu = {el: rows.at[i, "energy"] / rows.at[i, "n_atoms"] for el, i in per_atom.items()}
    values = {}
    for i in rows.index:
        composition = Composition(frames[i].get_chemical_formula())
        if not all(str(el) in mu for el in composition):
            values[i] = math.nan
            continue
        references = sum(n * mu[str(el)] for el, n in composition.items())
        values[i] = (rows.at[i, "energy"] - references) / composition.num_atoms
    return pd.Series(values)


def _prevalence(truth: pd.DataFrame) -> float:
    """The unique-prototype prevalence of matbench's tables: from the unrounded truth."""
    return float((truth["each"] <= 0).mean())


def _check_scores(
    rows: pd.DataFrame, truth: pd.DataFrame, e_form: pd.Series, metrics: dict, prevalence: float | None = None
) -> None:
    """predictions.csv's formation energies and hull distances, and metrics.json's numbers, recomputed."""
    scored = truth.index
    assert np.allclose(rows.loc[scored, "e_form_per_atom"], e_form.loc[scored], rtol=0, atol=2e-6, equal_nan=True)
    assert np.allclose(rows.loc[scored, "e_form_per_atom_ref"], truth["e_form"], rtol=0, atol=1e-6)
    assert np.allclose(rows.loc[scored, "e_above_hull_ref"], truth["each"], rtol=0, atol=1e-6)
    error = e_form.loc[scored] - truth["e_form"]
    each_pred = (truth["each"] + error).where(error.abs() <= 5)
    assert np.allclose(rows.loc[scored, "e_above_hull"], each_pred, rtol=0, atol=2e-6, equal_nan=True)
    # matbench rounds to meV/atom, then: stable means <= 0, a missing prediction counts as unstable
    true = truth["each"].round(3).to_numpy()
    kept = e_form.loc[scored].where(error.abs() <= 5).round(3)
    pred = (truth["each"].round(3) + kept - truth["e_form"].round(3)).to_numpy()
    tp = int(((true <= 0) & (pred <= 0)).sum())
    fp = int(((true > 0) & (pred <= 0)).sum())
    fn = int(((true <= 0) & ~(pred <= 0)).sum())
    tn = int(((true > 0) & ~(pred <= 0)).sum())
    assert (metrics["TP"], metrics["FP"], metrics["FN"], metrics["TN"]) == (tp, fp, fn, tn)
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else math.nan
    valid = ~np.isnan(pred)
    expected = {
        "Precision": precision,
        "Recall": recall,
        "F1": f1,
        "MAE": float(np.abs(true[valid] - pred[valid]).mean()),
        "DAF": precision / (prevalence if prevalence is not None else float((true <= 0).mean())),
    }
    for key, value in expected.items():
        got = math.nan if metrics[key] is None else metrics[key]
        assert got == pytest.approx(value, abs=1e-12, nan_ok=True), key
    assert sorted(rows.loc[scored, "stability"]) == sorted(["TP"] * tp + ["FP"] * fp + ["FN"] * fn + ["TN"] * tn)


def _check_outputs(out: Path) -> None:
    for name in ("metrics.json", "predictions.csv", "report.html", "run.json"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    for plot in PLOTS:
        assert (out / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    assert html.count("data:image/png;base64,") == len(PLOTS)
    assert all(model in html for model in MODELS)
    assert "SevenNet-l3i5 (published)" in html and "0.760" in html
