"""MD through the server (``POST /v1/md``, a job's ``md`` block) with the pair family's Lennard-Jones argon:
NVE against ASE's VelocityVerlet with the same potential, seeds, the three answer formats, and the refusals."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.io import read, write
from ase.md.verlet import VelocityVerlet
from mlipserve.server.config import StructureLimits

from .conftest import REPO, ready_server

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_pair import install

MODEL = "lj-argon"
#: The server's --max-atom-steps: well above what the other tests ask for (a few hundred atom-steps).
ATOM_STEPS = 4000
#: ASE's LennardJones with the card's parameters (cut-off 3σ, ASE's default, as the pair family's).
EPSILON, SIGMA = 0.0104, 3.40


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("models")
    install(folder, MODEL)
    limits = StructureLimits(max_atom_steps=ATOM_STEPS)
    with ready_server(models=(MODEL,), model_dir=folder, device="cpu", torch_threads=1, limits=limits) as running:
        yield running


def argon(repeat: tuple[int, int, int] = (1, 1, 1), seed: int = 0) -> Atoms:
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def as_dict(atoms: Atoms) -> dict:
    return {
        "numbers": atoms.numbers.tolist(),
        "positions": atoms.positions.tolist(),
        "cell": atoms.cell.array.tolist(),
        "pbc": atoms.pbc.tolist(),
    }


def post(url: str, body: dict, format: str = "json") -> httpx.Response:
    """POST /v1/md; the body as Python's json writes it (a NaN as the bare token NaN, which httpx refuses)."""
    content = json.dumps(body)
    headers = {"Content-Type": "application/json"}
    return httpx.post(f"{url}/v1/md", params={"format": format}, content=content, headers=headers, timeout=120)


def refusal(response: httpx.Response, status: int = 422) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def velocities(atoms: Atoms, seed: int) -> np.ndarray:
    """Random initial velocities, Å/fs (a few hundred K for argon)."""
    return np.random.default_rng(seed).normal(scale=0.003, size=(len(atoms), 3))


def ase_nve(atoms: Atoms, v_per_fs: np.ndarray, steps: int, dt: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positions and velocities (Å/fs) at every step of ASE's VelocityVerlet with ASE's LennardJones."""
    atoms = atoms.copy()
    atoms.calc = LennardJones(epsilon=EPSILON, sigma=SIGMA)
    atoms.set_velocities(v_per_fs / units.fs)
    dynamics = VelocityVerlet(atoms, timestep=dt * units.fs)
    states = [(atoms.positions.copy(), atoms.get_velocities() * units.fs)]
    for _ in range(steps):
        dynamics.run(1)
        states.append((atoms.positions.copy(), atoms.get_velocities() * units.fs))
    return states


# --- refusals: decided before anything runs --------------------------------------------------------------------


@pytest.mark.parametrize("integrator", ["langevin", "csvr", "npt_crescale"])
def test_thermostats_need_a_temperature(url: str, integrator: str) -> None:
    message = refusal(post(url, {"structures": [as_dict(argon())], "integrator": integrator, "steps": 2}))
    assert integrator in message and "temperature_K" in message


@pytest.mark.parametrize(
    ("velocities", "words"),
    [
        ([], ["'velocities' has 0 entries for 1 structures"]),
        ([[[0.0, 0.0]] * 4], ["velocities[0]", "[vx, vy, vz]"]),
        ([[[0.0, 0.0, 0.0]] * 3], ["velocities[0] has 3 rows", "4 atoms"]),
        ([[[0.0, 0.0, "fast"]] * 4], ["velocities[0]"]),
        ([[[0.0, 0.0, float("nan")]] * 4], ["velocities[0]", "atom 0", "NaN or infinite"]),
    ],
)
def test_velocities_are_checked(url: str, velocities: list, words: list[str]) -> None:
    body = {"structures": [as_dict(argon())], "velocities": velocities, "steps": 2}
    message = refusal(post(url, body))
    for word in words:
        assert word in message


def test_option_bounds_and_fixed_count(url: str) -> None:
    assert "timestep_fs" in refusal(post(url, {"structures": [as_dict(argon())], "timestep_fs": 50}))
    assert "integrator" in refusal(post(url, {"structures": [as_dict(argon())], "integrator": "verlet"}))
    message = refusal(post(url, {"structures": [as_dict(argon())], "fixed": [[0], [1]]}))
    assert "'fixed' has 2 entries for 1 structures" in message


def test_structure_errors_are_entries(url: str) -> None:
    """NPT needs a structure periodic in three directions; fixed atoms must exist: each an error of its own."""
    slab = argon()
    slab.pbc = [True, True, False]
    body = {
        "structures": [as_dict(slab), as_dict(argon())],
        "integrator": "npt_crescale",
        "temperature_K": 50,
        "fixed": [None, [7]],
        "steps": 2,
    }
    response = post(url, body)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["error"]["code"] == "invalid_request"
    assert "structure 0: npt_crescale needs a structure periodic in 3 directions" in first["error"]["message"]
    assert second["error"]["message"] == "structure 1: fixed atom index 7 is out of range for 4 atoms"


def test_jobs_refuse_what_md_refuses(url: str) -> None:
    body = {"structures": [as_dict(argon())], "md": {"integrator": "csvr", "steps": 2}}
    assert "temperature_K" in refusal(httpx.post(f"{url}/v1/jobs", json=body))
    body = {"structures": [as_dict(argon())], "md": {"steps": 2}, "relax": {}}
    assert "not both" in refusal(httpx.post(f"{url}/v1/jobs", json=body))


# --- runs ---------------------------------------------------------------------------------------------------------


def test_nve_equals_ase_velocity_verlet(url: str) -> None:
    small, large = argon(seed=1), argon((2, 1, 1), seed=2)
    given = [velocities(small, 3), velocities(large, 4)]
    steps, dt = 30, 2.0
    body = {
        "structures": [as_dict(small), as_dict(large)],
        "velocities": [v.tolist() for v in given],
        "steps": steps,
        "timestep_fs": dt,
        "trajectory_every": 10,
        "seed": 11,
    }
    response = post(url, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"]["name"] == MODEL
    for index, (atoms, v, entry) in enumerate(zip([small, large], given, answer["results"], strict=True)):
        reference = ase_nve(atoms, v, steps, dt)
        assert (entry["steps"], entry["stop_reason"], entry["seed"]) == (steps, "completed", 11 + index)
        assert entry["time_fs"] == pytest.approx(steps * dt)
        np.testing.assert_allclose(entry["structure"]["positions"], reference[-1][0], atol=1e-8)
        np.testing.assert_allclose(entry["velocities"], reference[-1][1], atol=1e-10)
        assert [frame["step"] for frame in entry["trajectory"]] == [0, 10, 20, 30]
        for frame in entry["trajectory"]:
            np.testing.assert_allclose(frame["positions"], reference[frame["step"]][0], atol=1e-8)
            np.testing.assert_allclose(frame["velocities"], reference[frame["step"]][1], atol=1e-10)
            assert frame["time_fs"] == pytest.approx(frame["step"] * dt)
            assert np.shape(frame["stress"]) == (3, 3)
        # the final geometry's own energy and forces, as ASE computes them there
        final = atoms.copy()
        final.positions = np.array(entry["structure"]["positions"])
        final.calc = LennardJones(epsilon=EPSILON, sigma=SIGMA)
        assert entry["energy"] == pytest.approx(final.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(entry["forces"], final.get_forces(), atol=1e-9)
        assert entry["energy_per_atom"] == pytest.approx(entry["energy"] / len(atoms))
        final.set_velocities(np.array(entry["velocities"]) / units.fs)
        assert entry["kinetic_energy"] == pytest.approx(final.get_kinetic_energy(), rel=1e-9)
        assert entry["temperature"] == pytest.approx(final.get_temperature(), rel=1e-9)


def test_seeds_make_runs_repeatable(url: str) -> None:
    """Structure i runs with seed + i; no seed: one drawn per request, reported per structure."""
    structures = [as_dict(argon(seed=5))] * 2
    body = {"structures": structures, "integrator": "csvr", "temperature_K": 60, "steps": 5, "seed": 40}
    first, second = post(url, body).json()["results"], post(url, body).json()["results"]
    assert [entry["seed"] for entry in first] == [40, 41]
    np.testing.assert_array_equal(first[0]["structure"]["positions"], second[0]["structure"]["positions"])
    # the same start with another seed (41 = 40 + 1) runs differently
    assert not np.allclose(first[0]["structure"]["positions"], first[1]["structure"]["positions"])
    drawn = post(url, {**body, "seed": None}).json()["results"]
    assert drawn[1]["seed"] == drawn[0]["seed"] + 1
    again = post(url, {**body, "seed": drawn[0]["seed"]}).json()["results"]
    np.testing.assert_array_equal(again[1]["structure"]["positions"], drawn[1]["structure"]["positions"])


def test_a_bad_structure_gets_its_own_entry(url: str) -> None:
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    body = {"structures": [as_dict(argon()), as_dict(copper), {"positions": "nowhere"}], "steps": 3}
    good, uncovered, malformed = post(url, body).json()["results"]
    assert good["stop_reason"] == "completed" and good["steps"] == 3
    assert uncovered["error"]["code"] == "element_not_covered"
    assert uncovered["error"]["message"].startswith("structure 1:")
    assert malformed["error"]["code"] == "malformed_structure"


def test_ndjson_streams_frames_then_results(url: str) -> None:
    structures = [as_dict(argon(seed=1)), {"symbols": ["Xx"], "positions": [[0, 0, 0]]}, as_dict(argon((2, 1, 1)))]
    body = {"structures": structures, "steps": 12, "trajectory_every": 4, "temperature_K": 40, "seed": 3}
    with httpx.stream("POST", f"{url}/v1/md", params={"format": "ndjson"}, json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["type"] == "done" and lines[-1]["model"]["name"] == MODEL
    results = {line["index"]: line["result"] for line in lines if line["type"] == "result"}
    assert sorted(results) == [0, 1, 2]
    assert results[1]["error"]["code"] == "unknown_element"
    for index in (0, 2):
        frames = [line["frame"] for line in lines if line["type"] == "frame" and line["index"] == index]
        assert [frame["step"] for frame in frames] == [0, 4, 8, 12]
        ended = next(i for i, line in enumerate(lines) if line["type"] == "result" and line["index"] == index)
        assert all(i < ended for i, line in enumerate(lines) if line["type"] == "frame" and line["index"] == index)
        result = results[index]
        assert "trajectory" not in result and result["seed"] == 3 + index and result["steps"] == 12
        np.testing.assert_allclose(frames[-1]["positions"], result["structure"]["positions"])
        np.testing.assert_allclose(frames[-1]["velocities"], result["velocities"])
        assert frames[-1]["temperature"] == pytest.approx(result["temperature"])


def test_extxyz_reads_back_with_ase(url: str) -> None:
    structures = [as_dict(argon(seed=1)), as_dict(argon((1, 2, 1), seed=2))]
    body = {"structures": structures, "steps": 6, "trajectory_every": 3, "temperature_K": 30, "seed": 9}
    response = post(url, body, format="extxyz")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("chemical/x-extxyz")
    frames = read(io.StringIO(response.text), index=":", format="extxyz")
    assert len(frames) == 2 * 3 + 2  # steps 0, 3, 6 of each run, then each final structure
    assert [(a.info["index"], a.info["step"]) for a in frames[:6]] == [(0, 0), (0, 3), (0, 6), (1, 0), (1, 3), (1, 6)]
    reference = post(url, body).json()["results"]
    # ASE writes per-atom columns with 8 decimals (%16.8f): positions in Å, velocities in Å/fs
    for final, entry in zip(frames[6:], reference, strict=True):
        assert final.info["stop_reason"] == "completed"
        np.testing.assert_allclose(final.positions, entry["structure"]["positions"], rtol=0, atol=1e-8)
        np.testing.assert_allclose(final.arrays["velocities"], entry["velocities"], rtol=0, atol=1e-8)
        assert final.get_potential_energy() == pytest.approx(entry["energy"], abs=1e-10)
        np.testing.assert_allclose(final.get_forces(), entry["forces"], rtol=0, atol=1e-8)
    for frame, json_frame in zip(frames[:3], reference[0]["trajectory"], strict=True):
        np.testing.assert_allclose(frame.arrays["velocities"], json_frame["velocities"], rtol=0, atol=1e-8)
        assert frame.info["time_fs"] == pytest.approx(json_frame["time_fs"])
        assert frame.info["temperature"] == pytest.approx(json_frame["temperature"])
        assert frame.get_potential_energy() == pytest.approx(json_frame["energy"], abs=1e-10)


def test_fixed_atoms_stay_put(url: str) -> None:
    atoms = argon(seed=6)
    body = {"structures": [as_dict(atoms)], "fixed": [[0, 2]], "steps": 10, "temperature_K": 80, "seed": 1}
    [entry] = post(url, body).json()["results"]
    positions = np.array(entry["structure"]["positions"])
    np.testing.assert_array_equal(positions[[0, 2]], atoms.positions[[0, 2]])
    assert np.abs(positions[[1, 3]] - atoms.positions[[1, 3]]).max() > 1e-4
    np.testing.assert_array_equal(np.array(entry["velocities"])[[0, 2]], 0.0)


def test_job_with_an_md_block_streams_its_results(url: str) -> None:
    structures = [as_dict(argon(seed=s)) for s in range(3)] + [{"symbols": ["Cu"], "positions": [[0, 0, 0]]}]
    body = {"structures": structures, "md": {"steps": 4, "trajectory_every": 2, "seed": 20, "temperature_K": 30}}
    created = httpx.post(f"{url}/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    job = created.json()["id"]
    with httpx.stream("GET", f"{url}/v1/jobs/{job}/results", timeout=120) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    for line in lines[:3]:
        assert line["steps"] == 4 and line["seed"] == 20 + line["index"]
        assert [frame["step"] for frame in line["trajectory"]] == [0, 2, 4]
    assert lines[3]["error"]["code"] == "element_not_covered"
    deadline = time.monotonic() + 30
    while (status := httpx.get(f"{url}/v1/jobs/{job}").json())["state"] != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (status["kind"], status["state"], status["done"], status["errors"]) == ("md", "done", 4, 1)
    # the same runs as /v1/md gives them
    direct = post(url, {"structures": structures[:1], **body["md"]}).json()["results"][0]
    np.testing.assert_array_equal(lines[0]["structure"]["positions"], direct["structure"]["positions"])


def test_openapi_documents_the_routes(url: str) -> None:
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/v1/md", "/v1/neb"} <= set(paths)
    names = {parameter["name"] for parameter in paths["/v1/md"]["post"]["parameters"]}
    assert names == {"format"}


def test_uploaded_frames_run_md(url: str) -> None:
    buffer = io.StringIO()
    write(buffer, [argon(seed=1), argon(seed=2)], format="extxyz")
    files = {"file": ("frames.extxyz", buffer.getvalue())}
    data = {"model": MODEL, "md": json.dumps({"steps": 3, "seed": 5, "temperature_K": 20, "trajectory_every": 3})}
    created = httpx.post(f"{url}/v1/jobs", files=files, data=data)
    assert created.status_code == 202, created.text
    with httpx.stream("GET", f"{url}/v1/jobs/{created.json()['id']}/results", timeout=120) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [(line["index"], line["seed"], line["steps"]) for line in lines] == [(0, 5, 3), (1, 6, 3)]
    assert [[frame["step"] for frame in line["trajectory"]] for line in lines] == [[0, 3], [0, 3]]
    refused = httpx.post(f"{url}/v1/jobs", files=files, data={"md": json.dumps({"integrator": "langevin"})})
    assert "temperature_K" in refusal(refused)


def test_runs_beyond_the_work_limit_get_their_own_error(url: str) -> None:
    """atoms × steps above the server's --max-atom-steps: that structure's entry says so; the others run."""
    small, big = argon(), argon((2, 2, 2))  # 4 and 32 atoms
    steps = ATOM_STEPS // 8  # 4 × steps fits, 32 × steps does not
    response = post(url, {"model": MODEL, "structures": [as_dict(small), as_dict(big)], "steps": steps})
    assert response.status_code == 200
    ok, refused = response.json()["results"]
    assert ok["steps"] == steps
    message = refused["error"]["message"]
    assert message.startswith("structure 1:") and f"{32 * steps:,} atom-steps" in message and "limit" in message
