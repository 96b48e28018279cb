"""MD and NEB in the clients and the command line: ``Client.md`` / ``AsyncClient.md`` (NDJSON frames, velocities in
ASE units, seeds across split requests, progress by steps), ``neb`` / ``neb_many`` with :class:`NEBResult` and its
plot, and ``mlipserve md`` / ``mlipserve neb``, against a real server hosting Lennard-Jones argon (checked against
ASE's own VelocityVerlet and LennardJones); the planner's requests without a server first."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.constraints import FixAtoms
from ase.io import read, write
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from mlipserve.clients import Client, MDResult, NEBResult, StructureFailed
from mlipserve.clients.effects import Open, ReadLine, Reply
from mlipserve.clients.md import md, unique_frames
from mlipserve.clients.neb import neb_many
from mlipserve.clients.options import ClientSettings
from mlipserve.clients.planner import Planner

from .conftest import ready_server, write_card
from .test_client_planner import drive
from .test_clients import CLIENT_KINDS, connect

MODEL = "lj-argon"
EPSILON, SIGMA = 0.0104, 3.40  # the same as benchmarks/bench_pair.py's lj-argon


def lj() -> LennardJones:
    return LennardJones(epsilon=EPSILON, sigma=SIGMA)  # rc = 3 σ, as the pair family's default


def argon(repeat: int = 2, rattle: int | None = 0) -> Atoms:
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(repeat)
    if rattle is not None:
        atoms.rattle(0.05, seed=rattle)
    return atoms


def thermalised(atoms: Atoms, temperature_K: float = 60.0, seed: int = 0) -> Atoms:
    thermalize_momenta(atoms, temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def vacancy_hop() -> tuple[Atoms, Atoms]:
    """A vacancy in fcc argon (31 atoms) and the same cell after a neighbour hopped into it (same atom order)."""
    perfect = argon(rattle=None)
    initial = perfect[1:]
    distances = np.linalg.norm(initial.positions - perfect.positions[0], axis=1)
    final = initial.copy()
    final.positions[int(np.argmin(distances))] = perfect.positions[0]
    return initial, final


# -- the planner, without a server ---------------------------------------------------------------------------------


class FakeMDServer:
    """Answers the plan's ``/v1/md`` streams: frames every ``trajectory_every`` steps (the first one twice, as a
    resumed run repeats it), then each result; the request bodies are kept."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lines: Iterator[str] = iter(())

    def __call__(self, effect: Any) -> Any:
        if isinstance(effect, Open):
            assert effect.call.path == "/v1/md" and effect.call.params == {"format": "ndjson"}
            self.bodies.append(effect.call.json)
            self.lines = iter(self.stream(effect.call.json))
            return Reply(200)
        assert isinstance(effect, ReadLine)
        return next(self.lines, None)

    def stream(self, body: dict[str, Any]) -> Iterator[str]:
        every, steps = body["trajectory_every"], body["steps"]
        for index, structure in enumerate(body["structures"]):
            n = len(structure["numbers"])
            if n == 1:
                error = {"code": "atoms_too_close", "message": f"structure {index}: bad"}
                yield json.dumps({"type": "result", "index": index, "result": {"error": error}})
                continue
            velocities = (body.get("velocities") or [None] * (index + 1))[index] or [[0.0] * 3] * n
            for step in [every, *range(every, steps + 1, every)]:
                frame = {"step": step, "time_fs": step * body["timestep_fs"], "positions": structure["positions"]}
                frame |= {"velocities": velocities, "cell": structure["cell"], "energy": -float(step)}
                frame |= {"kinetic_energy": 0.5, "temperature": 10.0 + step}
                yield json.dumps({"type": "frame", "index": index, "frame": frame})
            result = {"energy": -1.0, "energy_per_atom": -1.0 / n, "forces": [[0.0] * 3] * n, "stress": None}
            result |= {"structure": {**structure, "pbc": [True] * 3}, "velocities": velocities, "steps": steps}
            result |= {"time_fs": steps * body["timestep_fs"], "stop_reason": "completed", "temperature": 1.0}
            result |= {"kinetic_energy": 0.5, "seed": body["seed"] + index}
            yield json.dumps({"type": "result", "index": index, "result": result})
        yield json.dumps({"type": "done", "model": {"name": "fake"}})


def test_md_requests_carry_velocities_fixed_atoms_and_shifted_seeds() -> None:
    """Split into one-structure requests: the seeds go seed + i, ase momenta become Å/fs, FixAtoms become fixed;
    the frames come back one per step, sorted, as ase.Atoms with velocities in ASE units."""
    moving, still, held = thermalised(argon(1)), argon(1), argon(1)
    held.set_constraint(FixAtoms(indices=[0, 2]))
    lonely = Atoms("Ar", cell=[5, 5, 5], pbc=True)
    planner = Planner(ClientSettings(chunk_size=1, progress=False))
    server = FakeMDServer()
    plan = md(planner, [moving, still, held, lonely], steps=20, trajectory_every=10, seed=7, errors="return")
    results, _ = drive(plan, server)
    assert [body["seed"] for body in server.bodies] == [7, 8, 9, 10]
    assert [len(body["structures"]) for body in server.bodies] == [1, 1, 1, 1]
    np.testing.assert_allclose(server.bodies[0]["velocities"][0], moving.get_velocities() * units.fs, rtol=1e-12)
    assert "velocities" not in server.bodies[1] and "fixed" not in server.bodies[1]
    assert server.bodies[2]["fixed"] == [[0, 2]]
    assert all(body["steps"] == 20 and body["integrator"] == "nve" for body in server.bodies)
    assert [r.ok for r in results] == [True, True, True, False]
    assert results[3].error.index == 3 and results[3].error.message == "structure 3: bad"
    first = results[0]
    assert isinstance(first, MDResult) and first.seed == 7 and first.stop_reason == "completed"
    assert [image.info["step"] for image in first.trajectory] == [10, 20]
    np.testing.assert_allclose(first.times_fs, [10.0, 20.0])
    np.testing.assert_allclose(first.energies, [-10.0, -20.0])
    np.testing.assert_allclose(first.temperatures, [20.0, 30.0])
    np.testing.assert_allclose(first.trajectory[0].get_velocities(), moving.get_velocities(), rtol=1e-12)
    np.testing.assert_allclose(first.atoms.get_velocities(), moving.get_velocities(), rtol=1e-12)


def test_md_options_are_checked_by_name_and_velocities_by_count() -> None:
    planner = Planner(ClientSettings(progress=False))
    with pytest.raises(TypeError, match=r"unknown MD option\(s\) \['temprature'\]"):
        next(md(planner, [argon(1)], temprature=300))
    with pytest.raises(ValueError, match="velocities has 1 entries for 2 structures"):
        next(md(planner, [argon(1), argon(1)], velocities=[None]))


def test_md_progress_bar_counts_steps(capsys: pytest.CaptureFixture[str]) -> None:
    planner = Planner(ClientSettings(chunk_size=1, progress=True))
    drive(md(planner, [argon(1), argon(1)], steps=30, trajectory_every=10, seed=0), FakeMDServer())
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any("60/60" in line and "step" in line for line in bar)


def test_frames_keep_one_per_step_the_last_told() -> None:
    frames = [{"step": 20, "n": 1}, {"step": 10, "n": 2}, {"step": 20, "n": 3}]
    assert unique_frames(frames) == [{"step": 10, "n": 2}, {"step": 20, "n": 3}]


def neb_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A ``/v1/neb`` answer whose images are the end points and a midpoint, energies a bump of 0.3 eV."""
    results = []
    for path in body["paths"]:
        initial, final = np.array(path["initial"]["positions"]), np.array(path["final"]["positions"])
        images = [{**path["initial"], "positions": (initial + t * (final - initial)).tolist()} for t in (0, 0.5, 1)]
        energies = [-1.0, -0.7, -0.9]
        results.append(
            {
                "images": images,
                "energies": energies,
                "image_fmax": [0.0, 0.01, 0.0],
                "barrier_forward": 0.3,
                "barrier_backward": 0.2,
                "saddle_index": 1,
                "energy": -0.7,
                "forces": np.zeros_like(initial).tolist(),
                "steps": 12,
                "converged": True,
                "stop_reason": "converged",
                "fmax": 0.01,
            }
        )
    return {"model": {"name": "fake"}, "results": results}


def test_neb_requests_and_profile_plot(tmp_path: Path) -> None:
    """Paths split over requests keep their order and indices; the plot is a PNG of the profile against distance."""
    from PIL import Image

    planner = Planner(ClientSettings(chunk_size=1, progress=False))
    initial, final = vacancy_hop()
    initial.set_constraint(FixAtoms(indices=[5]))
    bodies: list[dict[str, Any]] = []

    def answer(effect: Any) -> Reply:
        assert effect.call.path == "/v1/neb"
        bodies.append(effect.call.json)
        return Reply(200, {}, json.dumps(neb_answer(effect.call.json)).encode())

    paths = [(initial, final), (final, initial, [initial])]
    results, _ = drive(neb_many(planner, paths, images=3, climb=False), answer)
    assert [len(body["paths"]) for body in bodies] == [1, 1]
    assert bodies[0]["paths"][0]["fixed"] == [5] and "fixed" not in bodies[1]["paths"][0]
    assert len(bodies[1]["paths"][0]["intermediates"]) == 1
    assert bodies[0]["images"] == 3 and bodies[0]["climb"] is False and bodies[0]["interpolation"] == "idpp"
    result = results[0]
    assert isinstance(result, NEBResult) and result.barrier == 0.3 and result.saddle is result.images[1]
    hop = np.linalg.norm(final.positions - initial.positions, axis=1).max()
    np.testing.assert_allclose(result.distances, [0.0, hop / 2, hop], rtol=1e-12)
    assert result.saddle.get_potential_energy() == -0.7
    result.plot(tmp_path / "profile.png")
    with Image.open(tmp_path / "profile.png") as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    with pytest.raises(TypeError, match="unknown NEB option"):
        next(neb_many(planner, paths, nudge=1))


# -- against a server ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server hosting Lennard-Jones argon (the pair family), as ``benchmarks/bench_pair.py`` installs it."""
    from mlipserve.models.backends.pair_format import parse_parameters

    folder = tmp_path_factory.mktemp("lj-models")
    parameters = {"potential": "lennard-jones", "epsilon": EPSILON, "sigma": SIGMA}
    (folder / f"{MODEL}.pair").write_text(yaml.safe_dump(parameters))
    cutoff = parse_parameters(parameters, ("Ar",)).cutoff
    write_card(folder, MODEL, folder / f"{MODEL}.pair", family="pair", elements="Ar", cutoff=cutoff)
    with ready_server(models=(MODEL,), model_dir=folder, device="cpu") as url:
        yield url


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_velocities_round_trip_in_ase_units(server_url: str, kind: str) -> None:
    """Zero steps: the final velocities are the ase.Atoms' own (Å/fs on the wire, ASE units at both ends)."""
    atoms = thermalised(argon(2))
    with connect(kind, server_url, model=MODEL, progress=False) as client:
        [result] = client.md([atoms], steps=0)
    np.testing.assert_allclose(result.atoms.get_velocities(), atoms.get_velocities(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(result.atoms.positions, atoms.positions, atol=1e-10)
    assert result.steps == 0 and result.stop_reason == "completed" and result.ok
    assert result.kinetic_energy == pytest.approx(atoms.get_kinetic_energy(), rel=1e-9)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_nve_trajectory_matches_ases_velocity_verlet(server_url: str, kind: str) -> None:
    atoms = thermalised(argon(2), temperature_K=80.0, seed=1)
    reference = atoms.copy()
    reference.calc = lj()
    expected: dict[int, tuple[np.ndarray, np.ndarray, float, float]] = {}

    def record() -> None:
        step = dyn.nsteps
        state = (reference.positions.copy(), reference.get_velocities(), reference.get_potential_energy())
        expected[step] = (*state, reference.get_kinetic_energy())

    dyn = VelocityVerlet(reference, timestep=4 * units.fs)
    dyn.attach(record, interval=5)
    dyn.run(20)
    with connect(kind, server_url, model=MODEL, progress=False) as client:
        result = client.md(atoms, timestep_fs=4.0, steps=20, trajectory_every=5)
    assert isinstance(result, MDResult) and result.steps == 20 and result.stop_reason == "completed"
    frames = {image.info["step"]: image for image in result.trajectory}
    assert {5, 10, 15, 20} <= set(frames)
    for step in (5, 10, 15, 20):
        positions, velocities, energy, kinetic = expected[step]
        np.testing.assert_allclose(frames[step].positions, positions, atol=1e-7)
        np.testing.assert_allclose(frames[step].get_velocities(), velocities, rtol=1e-6, atol=1e-9)
        assert frames[step].get_potential_energy() == pytest.approx(energy, abs=1e-8)
        assert frames[step].info["kinetic_energy"] == pytest.approx(kinetic, rel=1e-6)
        assert frames[step].info["time_fs"] == pytest.approx(4.0 * step)
    np.testing.assert_allclose(result.atoms.get_forces(), reference.get_forces(), atol=1e-7)
    assert result.energy == pytest.approx(reference.get_potential_energy(), abs=1e-8)
    steps = [image.info["step"] for image in result.trajectory]
    assert steps == sorted(set(steps)) and len(result.energies) == len(result.temperatures) == len(steps)


def test_seeds_follow_the_list_across_split_requests(server_url: str) -> None:
    """Langevin with seed 11: structure i gets seed 11 + i, whether the list goes as one request or as three."""
    structures = [argon(1, rattle=i) for i in range(3)]
    options = {"integrator": "langevin", "temperature_K": 50.0, "steps": 10, "seed": 11, "progress": False}
    with Client(server_url, model=MODEL, chunk_size=1) as split, Client(server_url, model=MODEL) as whole:
        apart, together = split.md(structures, **options), whole.md(structures, **options)
    assert [r.seed for r in apart] == [r.seed for r in together] == [11, 12, 13]
    for a, t in zip(apart, together, strict=True):
        np.testing.assert_allclose(a.atoms.positions, t.atoms.positions, atol=1e-12)
    assert not np.allclose(apart[0].velocities, apart[1].velocities)


def test_fixed_atoms_and_a_bad_structure_among_good_ones(server_url: str) -> None:
    held = thermalised(argon(1, rattle=2), temperature_K=200.0)
    held.set_constraint(FixAtoms(indices=[1, 3]))
    bad = argon(1)
    bad.positions[1] = bad.positions[0]
    with Client(server_url, model=MODEL, chunk_size=1, progress=False) as client:
        results = client.md([held, bad, argon(1)], steps=10, errors="return")
        with pytest.raises(StructureFailed) as raised:
            client.md([held, bad], steps=10)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.index == 1 and results[1].error.message.startswith("structure 1:")
    assert raised.value.index == 1
    np.testing.assert_allclose(results[0].atoms.positions[[1, 3]], held.positions[[1, 3]], atol=1e-12)
    assert np.abs(results[0].atoms.positions[0] - held.positions[0]).max() > 1e-4


def test_progress_bar_moves_by_steps_as_frames_arrive(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Client(server_url, model=MODEL, progress=True) as client:
        client.md([argon(1), argon(1, rattle=3)], steps=40, trajectory_every=10, temperature_K=30.0, seed=1)
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any("80/80" in line and "step" in line for line in lines)


def test_neb_vacancy_hop_energies_are_ases(server_url: str, tmp_path: Path) -> None:
    """The images' energies and the saddle's forces are ASE's LennardJones on the returned geometries; the profile
    plot is a PNG of them against the distance along the path."""
    from PIL import Image

    initial, final = vacancy_hop()
    with Client(server_url, model=MODEL, progress=False) as client:
        result = client.neb(initial, final, images=3, fmax=0.01, max_steps=300)
    assert isinstance(result, NEBResult) and len(result.images) == 5, result
    assert result.converged, (result.steps, result.fmax, result.stop_reason, result.image_fmax, result.energies)
    assert result.stop_reason == "converged" and 0 < result.steps < 300 and result.fmax < 0.01
    assert_ase_energies(result)
    saddle = result.saddle.copy()
    saddle.calc = lj()
    np.testing.assert_allclose(result.saddle.get_forces(), saddle.get_forces(), atol=1e-7)
    assert result.barrier == pytest.approx(result.energies.max() - result.energies[0], abs=1e-9)
    assert result.barrier > 0.01 and result.saddle_index not in (0, 4)
    reference = ase_neb(initial, final, images=3, fmax=0.01)
    np.testing.assert_allclose(result.energies, reference.energies, atol=1e-6)
    assert result.steps == reference.steps
    ax = result.plot(tmp_path / "profile.png")
    assert ax.get_lines()[0].get_xdata()[-1] == pytest.approx(result.distances[-1])
    with Image.open(tmp_path / "profile.png") as png:
        assert png.format == "PNG" and png.width > 300


def test_neb_many_keeps_path_order_async(server_url: str) -> None:
    """Two paths in two requests, one the other reversed: the second's images are the first's in reverse order."""
    initial, final = vacancy_hop()
    with connect("async", server_url, model=MODEL, chunk_size=1, progress=False) as client:
        forward, backward = client.neb_many([(initial, final), (final, initial)], images=3, max_steps=5)
    for result in (forward, backward):
        assert result.steps == 5 and result.stop_reason == "max_steps" and not result.converged
        assert_ase_energies(result)
    np.testing.assert_allclose(backward.energies, forward.energies[::-1], atol=1e-6)
    assert backward.barrier == pytest.approx(forward.barrier_backward, abs=1e-6)


def ase_neb(initial: Atoms, final: Atoms, images: int, fmax: float) -> Any:
    """ASE's climbing-image NEB (improved tangent, k = 0.1 eV/Å², IDPP) optimised by FIRE: energies and steps."""
    from types import SimpleNamespace

    from ase.mep import NEB
    from ase.optimize import FIRE

    band = [initial.copy()] + [initial.copy() for _ in range(images)] + [final.copy()]
    for image in band:
        image.calc = lj()
    neb = NEB(band, climb=True, method="improvedtangent", k=0.1)
    neb.interpolate("idpp")
    optimizer = FIRE(neb, logfile=None)
    optimizer.run(fmax=fmax, steps=300)
    return SimpleNamespace(energies=[image.get_potential_energy() for image in band], steps=optimizer.nsteps)


def assert_ase_energies(result: NEBResult) -> None:
    for image, energy in zip(result.images, result.energies, strict=True):
        image = image.copy()
        image.calc = lj()
        assert image.get_potential_energy() == pytest.approx(energy, abs=1e-8)


# -- the command line ----------------------------------------------------------------------------------------------


def mlipserve(*arguments: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mlipserve.server.cli", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_md_command_writes_trajectories_ase_reads(server_url: str, tmp_path: Path) -> None:
    source, out = tmp_path / "argon.extxyz", tmp_path / "md.extxyz"
    write(source, [argon(1, rattle=1), thermalised(argon(1, rattle=2))])
    options = ["--steps", 20, "--trajectory-every", 10, "--temperature-k", 40, "--seed", 3, "--timestep-fs", 2]
    run = mlipserve("md", source, "-o", out, "--url", server_url, "--model", MODEL, *options)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stderr and "2 completed" in run.stderr
    frames = read(out, index=":")
    finals = [atoms for atoms in frames if atoms.info.get("final")]
    assert [atoms.info["seed"] for atoms in finals] == [3, 4]
    assert [atoms.info["stop_reason"] for atoms in finals] == ["completed", "completed"]
    for index in (0, 1):
        steps = [a.info["step"] for a in frames if a.info["structure"] == index and not a.info.get("final")]
        assert {10, 20} <= set(steps)
    assert all(atoms.has("momenta") for atoms in frames)
    assert all(atoms.info["time_fs"] == pytest.approx(2.0 * atoms.info["step"]) for atoms in frames)
    assert finals[0].get_forces().shape == (4, 3)
    # the second structure started from its own velocities: the same as a run with them given in Å/fs
    with Client(server_url, model=MODEL, progress=False) as client:
        again = client.md(read(source, index=1), steps=20, timestep_fs=2.0, seed=4)
    np.testing.assert_allclose(finals[1].positions, again.atoms.positions, atol=1e-6)


def test_neb_command_prints_the_barrier_and_writes_path_and_plot(server_url: str, tmp_path: Path) -> None:
    initial, final = vacancy_hop()
    write(tmp_path / "initial.extxyz", initial)
    write(tmp_path / "final.extxyz", final)
    path, plot = tmp_path / "path.extxyz", tmp_path / "profile.png"
    run = mlipserve(
        "neb", tmp_path / "initial.extxyz", tmp_path / "final.extxyz", "--images", 3, "--max-steps", 5, "-o", path,
        "--plot", plot,
        "--server", server_url, "--model", MODEL,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    barrier = float(run.stdout.split()[1])
    images = read(path, index=":")
    assert len(images) == 5
    energies = [atoms.get_potential_energy() for atoms in images]
    assert barrier == pytest.approx(max(energies) - energies[0], abs=1e-4)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    two = mlipserve("neb", tmp_path / "path.extxyz", tmp_path / "final.extxyz", "--server", server_url)
    assert two.returncode == 1 and "5 structures; give one structure per end point" in two.stderr


def test_an_md_job_gives_md_results_with_trajectories(server_url: str) -> None:
    """``run_job(md=...)``: the job's lines decode as MDResults, equal to the direct requests' runs (no momenta:
    a job sends no velocities, so both draw them from the same seeds)."""
    structures = [argon(1, rattle=i) for i in range(3)]
    options = {"integrator": "langevin", "temperature_K": 50.0, "steps": 10, "seed": 5, "trajectory_every": 5}
    with Client(server_url, model=MODEL, progress=False) as client:
        jobbed = client.run_job(structures, md=options)
        direct = client.md(structures, progress=False, **options)
    assert all(isinstance(result, MDResult) for result in jobbed)
    for job_result, direct_result in zip(jobbed, direct, strict=True):
        assert job_result.steps == 10 and job_result.seed == direct_result.seed
        assert [image.info["step"] for image in job_result.trajectory] == [0, 5, 10]
        np.testing.assert_allclose(job_result.atoms.positions, direct_result.atoms.positions, atol=1e-12)
    with Client(server_url, model=MODEL) as client, pytest.raises(ValueError, match="not both"):
        client.submit_job(structures, relax={"fmax": 0.1}, md=options)


def test_relax_with_bfgs_through_the_server_is_ases(server_url: str) -> None:
    """``client.relax(optimizer="bfgs")`` (this module's server is at hand): ASE's BFGS(FrechetCellFilter)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = argon(1, rattle=3)
    reference = atoms.copy()
    reference.calc = lj()
    optimizer = BFGS(FrechetCellFilter(reference), logfile=None)
    optimizer.run(fmax=0.01, steps=100)
    with Client(server_url, model=MODEL, progress=False) as client:
        result = client.relax(atoms, optimizer="bfgs", fmax=0.01, max_steps=100)
    assert result.steps == optimizer.nsteps and result.converged
    np.testing.assert_allclose(result.atoms.cell.array, reference.cell.array, atol=1e-8)
