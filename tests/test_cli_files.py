"""``mlipserve predict`` and ``mlipserve relax`` run as commands against a real server (the small ``hfo2-cp0``
model): what they write equals what the Python client gets, failed frames are named while the others are written,
and the exit status says when nothing could be written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read, write
from mlipserve.clients import Client
from mlipserve.clients.files import read_all

from .conftest import free_port, ready_server

MODEL = "hfo2-cp0"  # a small SevenNet test model that knows Hf and O only: Si is a bad frame


def hfo2(repeat: tuple[int, int, int] = (1, 1, 1), seed: int = 0, a: float = 5.1) -> Atoms:
    atoms = bulk("HfO2", "fluorite", a=a, cubic=True).repeat(repeat)
    atoms.rattle(0.1, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def url(model_dir: Path) -> Iterator[str]:
    with ready_server(models=(MODEL,), model_dir=model_dir, device="cpu", torch_threads=1) as running:
        yield running


@pytest.fixture()
def inputs(tmp_path: Path) -> list[Path]:
    """Three files and a folder: 3 + 3 (one of them Si) frames of extxyz, a POSCAR, a CIF and a text file."""
    many = tmp_path / "hfo2.extxyz"
    write(many, [hfo2(seed=1), hfo2((2, 1, 1), seed=2), hfo2(seed=3, a=5.2)])
    mixed = tmp_path / "mixed.extxyz"
    write(mixed, [hfo2(seed=4), bulk("Si"), hfo2(seed=5)])
    folder = tmp_path / "folder"
    folder.mkdir()
    write(folder / "POSCAR", bulk("HfO2", "fluorite", a=5.0), format="vasp")
    write(folder / "b.cif", hfo2(seed=6))
    (folder / "notes.txt").write_text("not a structure\n")
    return [many, mixed, folder]


def mlipserve(*arguments: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mlipserve.server.cli", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def good_frames(inputs: list[Path]) -> list[tuple[Atoms, str, int]]:
    """The frames the server can take, with their file and index, in the order the command writes them."""
    frames, _ = read_all(inputs)
    return [(f.atoms, f.source, f.index) for f in frames if "Si" not in f.atoms.symbols]


@pytest.mark.parametrize("job_above", [256, 0], ids=["requests", "job"])
def test_predict_writes_what_the_client_gets(url: str, inputs: list[Path], tmp_path: Path, job_above: int) -> None:
    out = tmp_path / "out.extxyz"
    run = mlipserve("predict", *inputs, "-o", out, "--server", url, "--model", MODEL, "--job-above", job_above)
    assert run.returncode == 0, run.stderr
    assert f"{inputs[1]} frame 1: element(s) Si not covered by model '{MODEL}' [element_not_covered]" in run.stderr
    assert "notes.txt: skipped" in run.stderr
    assert f"wrote 7 structures to {out}" in run.stderr and "1 failed" in run.stderr

    expected = good_frames(inputs)
    with Client(url, model=MODEL, progress=False) as client:
        reference = client.predict([atoms for atoms, _, _ in expected])
    written = read(out, index=":")
    assert len(written) == len(expected) == 7
    for atoms, (source_atoms, source, index), result in zip(written, expected, reference, strict=True):
        assert (atoms.info["source"], atoms.info["frame"]) == (source, index)
        assert (atoms.info["model"], atoms.info["model_version"]) == (MODEL, "test")
        np.testing.assert_allclose(atoms.positions, source_atoms.positions, atol=1e-8)
        assert atoms.get_potential_energy() == pytest.approx(result.energy, rel=1e-6, abs=1e-7)
        np.testing.assert_allclose(atoms.get_forces(), result.forces, atol=2e-6)
        np.testing.assert_allclose(atoms.get_stress(), result.stress_voigt, atol=1e-7)


def test_relax_writes_relaxed_structures_and_how_they_ended(url: str, inputs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "relaxed.extxyz"
    run = mlipserve("relax", *inputs[:2], "-o", out, "--server", url, "--model", MODEL, "--no-progress")
    assert run.returncode == 0, run.stderr
    assert f"{inputs[1]} frame 1: element(s) Si" in run.stderr

    expected = good_frames(inputs[:2])
    with Client(url, model=MODEL, progress=False) as client:
        reference = client.relax([atoms for atoms, _, _ in expected])
    written = read(out, index=":")
    assert len(written) == len(expected) == 5
    for atoms, (_, source, index), result in zip(written, expected, reference, strict=True):
        assert (atoms.info["source"], atoms.info["frame"]) == (source, index)
        assert atoms.info["converged"] is result.converged is True
        assert (atoms.info["steps"], atoms.info["stop_reason"]) == (result.steps, "converged")
        assert atoms.get_potential_energy() == pytest.approx(result.energy, rel=1e-6, abs=1e-6)
        np.testing.assert_allclose(atoms.cell.array, result.atoms.cell.array, atol=1e-5)
        assert np.abs(atoms.get_forces()).max() < 0.05
    assert f"wrote 5 structures to {out} (model {MODEL} test): 5 converged; 1 failed" in run.stderr


def test_relax_options_through_a_job(url: str, inputs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "short.extxyz"
    options = ("--max-steps", 3, "--no-relax-cell", "--job-above", 0, "--no-progress")
    run = mlipserve("relax", inputs[0], "-o", out, "--server", url, "--model", MODEL, *options)
    assert run.returncode == 0, run.stderr
    written = read(out, index=":")
    assert [(a.info["converged"], a.info["steps"], a.info["stop_reason"]) for a in written] == [
        (False, 3, "max_steps")
    ] * 3
    originals = read(inputs[0], index=":")
    assert all(np.allclose(a.cell.array, b.cell.array) for a, b in zip(written, originals, strict=True))


def test_exit_status_when_nothing_is_written(url: str, tmp_path: Path) -> None:
    silicon, out = tmp_path / "si.extxyz", tmp_path / "out.extxyz"
    write(silicon, bulk("Si"))
    run = mlipserve("predict", silicon, "-o", out, "--server", url, "--model", MODEL)
    assert run.returncode == 1 and "all 1 structures failed; nothing written" in run.stderr
    run = mlipserve("predict", tmp_path / "missing.xyz", "-o", out, "--server", url)
    assert run.returncode == 1 and "no structure could be read" in run.stderr
    run = mlipserve("relax", silicon, "-o", out, "--server", f"http://127.0.0.1:{free_port()}")
    assert run.returncode == 3 and "cannot reach the server" in run.stderr
    assert not out.exists()


def test_frames_before_an_unreadable_one_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "broken.extxyz"
    write(path, [hfo2(seed=1), hfo2(seed=2)])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[: len(lines) - 3]) + "\n")  # the second frame loses its last atoms
    frames, problems = read_all([path])
    assert [f.index for f in frames] == [0]
    assert len(problems) == 1 and "could not read frame 1 and after" in str(problems[0])


def test_the_command_line_wires_every_client_command() -> None:
    from mlipserve.clients.cli import predict_command, relax_command
    from mlipserve.server.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["predict", "a.cif", "-o", "out.extxyz"]).handler is predict_command
    relax = parser.parse_args(["relax", "a.cif", "b", "-o", "o.extxyz", "--fmax", "0.02", "--hydrostatic-strain"])
    assert relax.handler is relax_command and relax.files == ["a.cif", "b"]
    assert (relax.fmax, relax.max_steps, relax.hydrostatic_strain, relax.no_relax_cell) == (0.02, 500, True, False)
    eval_cli = pytest.importorskip("mlipserve.clients.eval.cli")
    metrics = parser.parse_args(["eval", "metrics", "--truth", "t.csv", "--pred", "p.csv", "--out", "m.json"])
    assert metrics.handler is eval_cli.metrics_handler
