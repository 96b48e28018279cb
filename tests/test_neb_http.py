"""Nudged elastic band through the server (``POST /v1/neb``) with the pair family's Lennard-Jones: a vacancy hop in
argon against ASE's NEB + FIRE with ASE's LennardJones, given images, fixed atoms, and the refusals."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.constraints import FixAtoms
from ase.mep import NEB
from ase.optimize import FIRE

from .conftest import REPO, ready_server, write_card

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_pair import install

ARGON, MIXED = "lj-argon", "lj-ar-kr"
EPSILON, SIGMA = 0.0104, 3.40
#: LJ argon's forces are small (ε/σ ≈ 3 meV/Å): a tight fmax makes the path move.
OPTIONS = {"images": 3, "interpolation": "linear", "fmax": 0.002, "max_steps": 60}


def install_mixed(folder: Path) -> None:
    """An Ar-Kr Lennard-Jones card: a model that covers two elements, to swap their order."""
    parameters = {
        "potential": "lennard-jones",
        "elements": {"Ar": {"epsilon": 0.0104, "sigma": 3.40}, "Kr": {"epsilon": 0.0140, "sigma": 3.65}},
    }
    path = folder / f"{MIXED}.pair"
    path.write_text(yaml.safe_dump(parameters))
    write_card(folder, MIXED, path, family="pair", elements="Ar Kr", cutoff=3 * 3.65, license="CC0-1.0")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("models")
    install(folder, ARGON)
    install_mixed(folder)
    with ready_server(models=(ARGON, MIXED), model_dir=folder, device="cpu", torch_threads=1) as running:
        yield running


def vacancy_hop(repeat: tuple[int, int, int] = (2, 2, 1)) -> tuple[Atoms, Atoms]:
    """fcc argon with atom 0 taken out, and the same with its neighbour at (a/2, a/2, 0) moved into the vacancy."""
    crystal = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(repeat)
    del crystal[0]
    initial = crystal.copy()
    final = crystal.copy()
    final.positions[2] = [0.0, 0.0, 0.0]  # was atom 3 at (a/2, a/2, 0)
    return initial, final


def as_dict(atoms: Atoms) -> dict:
    return {
        "numbers": atoms.numbers.tolist(),
        "positions": atoms.positions.tolist(),
        "cell": atoms.cell.array.tolist(),
        "pbc": atoms.pbc.tolist(),
    }


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/neb", json=body, timeout=120)


def refusal(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    return response.json()["error"]["message"]


def ase_neb(images: list[Atoms], fixed: list[int] | None = None, interpolate: bool = True) -> tuple[NEB, int, bool]:
    """ASE's NEB + FIRE with ASE's LennardJones on ``images`` (end points, or every image with ``interpolate``
    false), as OPTIONS and NEBOptions' defaults say."""
    images = [atoms.copy() for atoms in images]
    if interpolate:
        images = [images[0]] + [images[0].copy() for _ in range(OPTIONS["images"])] + [images[-1]]
    for atoms in images:
        atoms.calc = LennardJones(epsilon=EPSILON, sigma=SIGMA)
        if fixed:
            atoms.set_constraint(FixAtoms(indices=fixed))
    neb = NEB(images, k=0.1, climb=True, method="improvedtangent")
    if interpolate:
        neb.interpolate(method="linear", mic=True)
    optimizer = FIRE(neb, logfile=None)
    converged = optimizer.run(fmax=OPTIONS["fmax"], steps=OPTIONS["max_steps"])
    return neb, optimizer.nsteps, bool(converged)


def test_vacancy_hop_equals_ase_neb(url: str) -> None:
    initial, final = vacancy_hop()
    response = post(url, {"model": ARGON, "paths": [{"initial": as_dict(initial), "final": as_dict(final)}], **OPTIONS})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"]["name"] == ARGON
    [entry] = answer["results"]
    neb, steps, converged = ase_neb([initial, final])
    energies = [atoms.get_potential_energy() for atoms in neb.images]
    assert (entry["steps"], entry["converged"]) == (steps, converged)
    assert entry["stop_reason"] == ("converged" if converged else "max_steps")
    assert len(entry["images"]) == len(entry["energies"]) == len(entry["image_fmax"]) == OPTIONS["images"] + 2
    np.testing.assert_allclose(entry["energies"], energies, atol=1e-8)
    for image, atoms in zip(entry["images"], neb.images, strict=True):
        np.testing.assert_allclose(image["positions"], atoms.positions, atol=1e-7)
        assert image["numbers"] == atoms.numbers.tolist()
    saddle = int(np.argmax(energies))
    assert entry["saddle_index"] == saddle
    assert entry["barrier_forward"] == pytest.approx(max(energies) - energies[0], abs=1e-8)
    assert entry["barrier_backward"] == pytest.approx(max(energies) - energies[-1], abs=1e-8)
    assert entry["barrier_forward"] > 0.001  # a real barrier (eV), not a flat line
    assert entry["energy"] == pytest.approx(energies[saddle], abs=1e-8)
    np.testing.assert_allclose(entry["forces"], neb.images[saddle].get_forces(apply_constraint=False), atol=1e-8)
    assert entry["fmax"] == pytest.approx(max(entry["image_fmax"][1:-1]), rel=1e-9)


def test_given_intermediates_and_fixed_atoms(url: str) -> None:
    initial, final = vacancy_hop()
    middle = initial.copy()
    middle.positions[2] = (initial.positions[2] + final.positions[2]) / 2 + [0.0, 0.0, 0.3]
    path = {"initial": as_dict(initial), "final": as_dict(final), "intermediates": [as_dict(middle)], "fixed": [0, 5]}
    [entry] = post(url, {"model": ARGON, "paths": [path], **OPTIONS}).json()["results"]
    assert len(entry["images"]) == 3  # the one image given, not `images`
    neb, steps, _ = ase_neb([initial, middle, final], fixed=[0, 5], interpolate=False)
    assert entry["steps"] == steps
    np.testing.assert_allclose(entry["energies"], [atoms.get_potential_energy() for atoms in neb.images], atol=1e-8)
    moved = np.array(entry["images"][1]["positions"])
    np.testing.assert_array_equal(moved[[0, 5]], middle.positions[[0, 5]])
    assert np.abs(moved[2] - middle.positions[2]).max() > 1e-3


def test_a_bad_path_gets_its_own_entry(url: str) -> None:
    initial, final = vacancy_hop((1, 1, 1))
    krypton = final.copy()
    krypton.symbols[0] = "Kr"
    paths = [
        {"initial": as_dict(initial), "final": as_dict(final)},
        {"initial": as_dict(initial), "final": {"symbols": ["Ar"], "positions": "here"}},
        {"initial": as_dict(initial), "final": as_dict(final), "fixed": [3]},
        {"initial": as_dict(krypton), "final": as_dict(krypton)},
    ]
    good, malformed, fixed, uncovered = post(url, {"model": ARGON, "paths": paths, **OPTIONS}).json()["results"]
    assert good["stop_reason"] in ("converged", "max_steps") and len(good["images"]) == 5
    assert malformed["error"]["code"] == "malformed_structure"
    assert malformed["error"]["message"].startswith("path 1: final: ")
    assert fixed["error"]["message"] == "path 2: fixed atom index 3 is out of range for 3 atoms"
    assert uncovered["error"]["code"] == "element_not_covered"
    assert uncovered["error"]["message"].startswith("path 3: initial: ")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("fewer atoms", ["path 0: final has 14 atoms, the initial end point 15"]),
        ("species order", ["path 0: final has atomic number 18 at atom 0", "36", "same order"]),
        ("pbc", ["path 0: final has pbc [True, True, False]", "[True, True, True]"]),
        ("cell", ["path 0: final has a cell differing", "0.05 Å"]),
        ("intermediate", ["path 0: intermediate 1 has a cell differing", "0.2 Å"]),
    ],
)
def test_paths_whose_images_differ_are_refused(url: str, change: str, words: list[str]) -> None:
    initial, final = vacancy_hop()
    intermediates = []
    if change == "fewer atoms":
        del final[-1]
    elif change == "species order":
        initial.symbols[0], final.symbols[1] = "Kr", "Kr"
    elif change == "pbc":
        final.pbc = [True, True, False]
    elif change == "cell":
        final.cell[0, 0] += 0.05
    else:
        strained = initial.copy()
        strained.cell[2, 2] -= 0.2
        intermediates = [as_dict(initial), as_dict(strained)]
    path = {"initial": as_dict(initial), "final": as_dict(final), "intermediates": intermediates or None}
    message = refusal(post(url, {"model": MIXED, "paths": [path]}))
    for word in words:
        assert word in message


def test_option_bounds(url: str) -> None:
    initial, final = vacancy_hop((1, 1, 1))
    path = {"initial": as_dict(initial), "final": as_dict(final)}
    assert "images" in refusal(post(url, {"paths": [path], "images": 0}))
    assert "method" in refusal(post(url, {"paths": [path], "method": "string"}))
    assert "interpolation" in refusal(post(url, {"paths": [path], "interpolation": "spline"}))


def test_fixed_atoms_that_move_between_end_points_get_an_error_entry(url: str) -> None:
    """The hopping atom cannot be held fixed: the worker refuses that path (ASE's NEB could not interpolate it),
    the path beside it is answered, and the worker goes on serving."""
    initial, final = vacancy_hop((1, 1, 1))
    paths = [
        {"initial": as_dict(initial), "final": as_dict(final), "fixed": [2]},
        {"initial": as_dict(initial), "final": as_dict(final)},
    ]
    moved, good = post(url, {"model": ARGON, "paths": paths, **OPTIONS}).json()["results"]
    assert moved["error"]["code"] == "invalid_request"
    assert moved["error"]["message"] == (
        "path 0: fixed atoms must be where the initial end point has them; in the final end point they are not"
    )
    assert good["stop_reason"] in ("converged", "max_steps")
