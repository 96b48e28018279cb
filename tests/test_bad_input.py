"""Every kind of bad input gets a clear status and a message naming the structure and the problem."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from ase.build import bulk
from mlipserve.clients.encoding import encode_structure

from .conftest import LIMIT_ATOMS_PER_REQUEST, LIMIT_ATOMS_PER_STRUCTURE, LIMIT_STRUCTURES_PER_REQUEST

SILICON = encode_structure(bulk("Si"))


def post(url: str, body: dict | str, model: str | None = "7net-0") -> httpx.Response:
    if isinstance(body, dict) and model and "model" not in body:
        body = {"model": model, **body}
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{url}/v1/predict", content=content, headers={"content-type": "application/json"}, timeout=120)


def entry_error(url: str, bad: dict, model: str = "7net-0") -> dict:
    """Send a good structure, the bad one, and a good one; check the good ones pass, return the bad one's error."""
    response = post(url, {"model": model, "structures": [SILICON, bad, SILICON]})
    assert response.status_code == 200, response.text
    first, middle, last = response.json()["results"]
    assert "energy" in first and "energy" in last
    assert set(middle) == {"error"}
    assert middle["error"]["message"].startswith("structure 1: ")
    return middle["error"]


def test_unknown_element_symbol(server_url: str) -> None:
    error = entry_error(server_url, {"symbols": ["Si", "Qq"], "positions": [[0, 0, 0], [1.5, 1.5, 1.5]]})
    assert error["code"] == "unknown_element" and "Qq" in error["message"]


def test_unknown_atomic_number(server_url: str) -> None:
    error = entry_error(server_url, {"numbers": [14, 0], "positions": [[0, 0, 0], [1.5, 1.5, 1.5]]})
    assert error["code"] == "unknown_element" and "atomic number 0" in error["message"]


def test_element_not_covered_by_model(server_url: str) -> None:
    polonium = {"symbols": ["Po"], "positions": [[0, 0, 0]], "cell": [3.4, 3.4, 3.4], "pbc": True}
    error = entry_error(server_url, polonium)
    assert error["code"] == "element_not_covered"
    assert "Po" in error["message"] and "'7net-0'" in error["message"]


def test_element_not_covered_by_user_model(server_url: str) -> None:
    hafnia_model_on_silicon = post(server_url, {"model": "hfo2-cp0", "structures": [SILICON]}).json()
    error = hafnia_model_on_silicon["results"][0]["error"]
    assert error["code"] == "element_not_covered" and "Si" in error["message"] and "hfo2-cp0" in error["message"]


def test_nan_position(server_url: str) -> None:
    bad = {**SILICON, "positions": [[0, 0, 0], [math.nan, 1.0, 1.0]]}
    error = entry_error(server_url, bad)
    assert error["code"] == "non_finite" and "atom 1" in error["message"]


def test_infinite_cell(server_url: str) -> None:
    bad = {**SILICON, "cell": [[math.inf, 0, 0], [0, 5, 0], [0, 0, 5]]}
    assert entry_error(server_url, bad)["code"] == "non_finite"


def test_overlapping_atoms(server_url: str) -> None:
    bad = {**SILICON, "positions": [[0, 0, 0], [0.2, 0.0, 0.0]]}
    error = entry_error(server_url, bad)
    assert error["code"] == "atoms_too_close"
    assert "atoms 0 and 1 are 0.200 Å apart" in error["message"]


def test_atom_overlapping_its_periodic_image(server_url: str) -> None:
    tiny_cell = {"symbols": ["Si"], "positions": [[0, 0, 0]], "cell": [0.3, 5, 5], "pbc": True}
    error = entry_error(server_url, tiny_cell)
    assert error["code"] == "atoms_too_close" and "periodic image" in error["message"]


def test_no_atoms(server_url: str) -> None:
    error = entry_error(server_url, {"numbers": [], "positions": [], "cell": [5, 5, 5], "pbc": True})
    assert error["code"] == "no_atoms" and "no atoms" in error["message"]


def test_singular_cell_with_pbc(server_url: str) -> None:
    flat = {**SILICON, "cell": [[5, 0, 0], [0, 5, 0], [0, 0, 0]], "pbc": True}
    error = entry_error(server_url, flat)
    assert error["code"] == "singular_cell" and "singular" in error["message"]


def test_too_many_atoms_in_a_structure(server_url: str) -> None:
    big = bulk("Cu", cubic=True) * (7, 7, 6)  # 1176 atoms
    assert len(big) > LIMIT_ATOMS_PER_STRUCTURE
    error = entry_error(server_url, encode_structure(big))
    assert error["code"] == "too_many_atoms"
    assert f"{len(big)} atoms" in error["message"] and str(LIMIT_ATOMS_PER_STRUCTURE) in error["message"]


def test_too_many_atoms_in_a_request(server_url: str) -> None:
    block = encode_structure(bulk("Cu", cubic=True) * (6, 6, 6))  # 864 atoms
    count = LIMIT_ATOMS_PER_REQUEST // 864 + 1
    response = post(server_url, {"structures": [block] * count})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "too_many_atoms" and f"{864 * count} atoms" in error["message"]


def test_too_many_structures(server_url: str) -> None:
    response = post(server_url, {"structures": [SILICON] * (LIMIT_STRUCTURES_PER_REQUEST + 1)})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_structures"


def test_unparsable_text(server_url: str) -> None:
    error = entry_error(server_url, {"format": "poscar", "text": "not a POSCAR\n1.0\n"})
    assert error["code"] == "unparsable_text" and "poscar" in error["message"]


def test_unknown_text_format(server_url: str) -> None:
    error = entry_error(server_url, {"format": "pdbx", "text": "HETATM"})
    assert error["code"] == "malformed_structure" and "unknown format 'pdbx'" in error["message"]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"numbers": [14, 14]}, "expected 'numbers' or 'symbols' with 'positions'"),
        ({"numbers": [14, 14], "positions": [[0, 0, 0]]}, "'positions' has shape [1, 3], expected [2, 3]"),
        ({"numbers": [14], "symbols": ["Si"], "positions": [[0, 0, 0]]}, "exactly one of 'numbers' and 'symbols'"),
        ({"numbers": [14], "positions": [[0, 0, 0]], "cell": [[1, 2]]}, "'cell' must be a 3×3 matrix"),
        ({"numbers": [14], "positions": [[0, 0, 0]], "pbc": "yes"}, "'pbc' must be a boolean"),
    ],
)
def test_malformed_structure(server_url: str, bad: dict, words: str) -> None:
    error = entry_error(server_url, bad)
    assert error["code"] == "malformed_structure" and words in error["message"]


def test_unknown_model(server_url: str) -> None:
    response = post(server_url, {"model": "7net-O", "structures": [SILICON]})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_model" and "did you mean '7net-0'" in error["message"]


def test_malformed_json_and_schema(server_url: str) -> None:
    assert post(server_url, "{not json").status_code == 422
    response = post(server_url, {"structures": [SILICON], "properties": ["energy", "magmoms"]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "properties" in error["message"]


def test_empty_request(server_url: str) -> None:
    response = post(server_url, {"structures": []})
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_structures"
