"""Property tests of structure decoding: whatever a request's structure entry holds, it becomes a Task or a
StructureError with a named code, never another exception (which the server would answer with a 500).

The entries are drawn near the valid forms (arrays with wrong types, shapes, NaN, huge numbers; pymatgen dicts with
one field replaced; extxyz/CIF/POSCAR files with lines corrupted, truncated or replaced by random bytes) so that
the decoders get past their first checks. A few malformed bodies are also sent over HTTP, where the answer must
be a 4xx naming a code. Every property is derandomized and bounded: the module runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ase.build import bulk, molecule
from ase.data import chemical_symbols
from ase.io import write
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mlipserve.errors import ErrorCode
from mlipserve.models.registry import ModelRegistry
from mlipserve.server.api.errors import StructureError
from mlipserve.server.api.ingest import prepare_tasks
from mlipserve.server.app import create_app
from mlipserve.server.config import ServerSettings, StructureLimits
from mlipserve.server.dynamics.options import RelaxOptions
from mlipserve.server.engine.tasks import Task

#: 7net-0's card covers 89 elements, so most decoded structures go on to every validation check; only its card is
#: read, no model is loaded.
CARD = ModelRegistry().card("7net-0")
LIMITS = StructureLimits(max_atoms=64)
PROPERTIES = ("energy", "forces", "stress")
BOUNDED = settings(
    max_examples=300, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)

# -- JSON-like values -------------------------------------------------------------------------------------------

numbers_ = st.one_of(
    st.integers(-5, 130),
    st.integers(),  # beyond int64 too: JSON integers have no size limit
    st.just(10**400),  # beyond a float's range
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e-308, 5e-324]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers_, st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def triples(elements: st.SearchStrategy) -> st.SearchStrategy[list]:
    return st.lists(elements, min_size=3, max_size=3)


coordinates = st.floats(-12, 12) | st.floats(-12, 12) | numbers_  # mostly plausible
symbols = st.sampled_from([*chemical_symbols, "Xx", "", "si", "SI", " Si"])


def mostly(good: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` two times in three, else any JSON value."""
    return good | good | json_values


@st.composite
def arrays_structures(draw: st.DrawFn) -> dict[str, Any]:
    """Arrays of ``n`` atoms whose fields are each well formed two times in three (and then of any length)."""
    n = draw(st.integers(0, 4))
    sized = {"min_size": n, "max_size": n}
    if draw(st.booleans()):
        species = "numbers", mostly(st.lists(st.integers(-3, 130) | numbers_, **sized))
    else:
        species = "symbols", mostly(st.lists(symbols, **sized))
    entry = {species[0]: draw(species[1]), "positions": draw(mostly(st.lists(triples(coordinates), **sized)))}
    if draw(st.booleans()):
        entry["cell"] = draw(mostly(triples(coordinates) | triples(triples(coordinates))))
    if draw(st.booleans()):
        entry["pbc"] = draw(mostly(st.booleans() | triples(st.booleans())))
    if draw(st.integers(0, 9)) == 0:  # both species fields, or none
        entry.pop(species[0]) if draw(st.booleans()) else entry.setdefault("numbers", [14] * n)
    return entry


def _pymatgen_dicts() -> list[dict[str, Any]]:
    from pymatgen.core import Lattice, Molecule, Structure

    crystal = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    water = Molecule(["O", "H", "H"], [[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]])
    return [crystal.as_dict(), water.as_dict()]


PYMATGEN = _pymatgen_dicts()


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path (keys and indices) into a JSON value, its root included."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from paths(item, (*prefix, position))


def replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = replaced(value[head], rest, new)
    return copy


@st.composite
def pymatgen_structures(draw: st.DrawFn) -> Any:
    """A valid pymatgen as_dict() with one field (the root excluded) replaced by a random JSON value."""
    base = draw(st.sampled_from(PYMATGEN))
    path = draw(st.sampled_from(list(paths(base))[1:]))
    return replaced(base, path, draw(json_values))


# -- file text --------------------------------------------------------------------------------------------------


def _file_text(atoms: Any, format: str) -> str:
    out = io.BytesIO() if format == "cif" else io.StringIO()  # ase's CIF writer writes bytes, the others text
    write(out, atoms, format=format)
    text = out.getvalue()
    return text.decode() if isinstance(text, bytes) else text


TEXTS = {
    "extxyz": [_file_text(bulk("Si"), "extxyz"), _file_text(molecule("H2O"), "extxyz")],
    "cif": [_file_text(bulk("NaCl", "rocksalt", a=5.64), "cif")],
    "poscar": [_file_text(bulk("Cu", cubic=True), "vasp")],
}
line_noise = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.sampled_from(["Si", "O", "1", "-1", "0", "nan", "inf", "1e400", "T", "F", "_x", "'", '"']), max_size=8
    ).map(" ".join),
    st.binary(max_size=40).map(lambda raw: raw.decode("latin-1")),
    st.integers().map(str),
)


@st.composite
def file_structures(draw: st.DrawFn) -> dict[str, Any]:
    """A valid file's text, with lines replaced, inserted or deleted, then maybe truncated."""
    format = draw(st.sampled_from(sorted(TEXTS)))
    lines = draw(st.sampled_from(TEXTS[format])).splitlines()
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(lines)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        if action == "insert" or position == len(lines):
            lines.insert(position, draw(line_noise))
        elif action == "replace":
            lines[position] = draw(line_noise)
        else:
            del lines[position]
    text = "\n".join(lines)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    name = draw(st.sampled_from([format, format, "xyz", "vasp", "pdb", "", None]))
    return {"format": name, "text": text}


entries = st.one_of(
    arrays_structures(), pymatgen_structures(), file_structures(), json_values, st.dictionaries(st.text(), json_values)
)


def assert_decoded(prepared: list[Task | StructureError]) -> None:
    [item] = prepared
    event("outcome", "task" if isinstance(item, Task) else item.code.value)  # seen with --hypothesis-show-statistics
    if isinstance(item, StructureError):
        assert isinstance(item.code, ErrorCode), item.code
        assert item.message.startswith("structure 0: ")
    else:
        assert isinstance(item, Task)


# -- properties -------------------------------------------------------------------------------------------------


@BOUNDED
@given(entry=arrays_structures())
def test_arrays_decode_or_name_the_problem(entry: dict[str, Any]) -> None:
    assert_decoded(prepare_tasks([entry], CARD, PROPERTIES, LIMITS))


@BOUNDED
@given(entry=pymatgen_structures())
def test_pymatgen_dicts_decode_or_name_the_problem(entry: Any) -> None:
    assert_decoded(prepare_tasks([entry], CARD, PROPERTIES, LIMITS))


@settings(BOUNDED, max_examples=600)
@given(entry=file_structures())
def test_file_text_decodes_or_names_the_problem(entry: dict[str, Any]) -> None:
    assert_decoded(prepare_tasks([entry], CARD, PROPERTIES, LIMITS))


@BOUNDED
@given(
    entry=entries,
    fixed=st.none() | st.lists(st.integers() | st.just(10**30), max_size=4),
)
def test_relaxations_decode_or_name_the_problem(entry: Any, fixed: list[int] | None) -> None:
    # `fixed` comes through the request schema as lists of integers, of any size.
    assert_decoded(prepare_tasks([entry], CARD, PROPERTIES, LIMITS, relax=RelaxOptions(), fixed=[fixed]))


# -- over HTTP --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(model_dir: Path) -> Iterator[TestClient]:
    """The real app (hfo2-cp0 only) through Starlette's test client, which needs no network."""
    settings = ServerSettings(models=("hfo2-cp0",), model_dir=model_dir, device="cpu", torch_threads=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "hfo2-cp0 did not load"
            time.sleep(0.1)
        yield client


def assert_refused(response: Any, status: int = 422) -> str:
    """The response is a 4xx whose body names a code of ErrorCode; returns the code."""
    assert response.status_code == status, response.text
    code = response.json()["error"]["code"]
    assert code in {c.value for c in ErrorCode}, code
    return code


NESTED = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"structures": [', "application/json"),  # truncated
        (b"{'structures': []}", "application/json"),  # not JSON
        (b"\xff\xfe\x00garbage", "application/json"),  # not UTF-8
        (b"", "application/json"),  # empty
        (b"null", "application/json"),
        (b'"structures"', "application/json"),
        (b'{"structures": 5}', "application/json"),
        (NESTED.encode(), "application/json"),  # deeper than any JSON parser recurses
        (b'{"structures": ' + NESTED.encode() + b"}", "application/json"),
        (b'{"structures": [{"symbols": ["Si"], "positions": [[0, 0, 0]]}]}', "text/plain"),  # wrong content type
        (b"structures=1", "application/x-www-form-urlencoded"),
        (b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\n1\r\n--x--", "multipart/form-data; boundary=x"),
    ],
    ids=[
        "truncated",
        "single-quotes",
        "not-utf8",
        "empty",
        "null",
        "string",
        "number-structures",
        "nested-body",
        "nested-structures",
        "text-plain",
        "form",
        "multipart",
    ],
)
@pytest.mark.parametrize("route", ["/v1/predict", "/v1/relax", "/v1/jobs"])
def test_malformed_bodies_are_refused_with_a_code(http: TestClient, route: str, body: bytes, content_type: str) -> None:
    response = http.post(route, content=body, headers={"content-type": content_type})
    if route == "/v1/jobs" and content_type == "text/plain":
        # the job route reads any body but a form as JSON, so this valid one starts a job
        assert response.status_code == 202, response.text
        return
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert_refused(response, response.status_code)


def test_deeply_nested_structure_entry_is_an_error_entry(http: TestClient) -> None:
    deep: Any = [0.0, 0.0, 0.0]
    for _ in range(200):  # within the JSON parser's depth, beyond any array a structure holds
        deep = [deep]
    body = {"structures": [{"symbols": ["Hf"], "positions": deep}, {"symbols": ["Hf"], "positions": [[0, 0, 0]]}]}
    response = http.post("/v1/predict", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["error"]["code"] == ErrorCode.MALFORMED_STRUCTURE.value
    assert "energy" in second


@pytest.mark.parametrize(
    ("structure", "code"),
    [
        # SevenNet's neighbour list killed the server process (SIGFPE) on atoms 1e6 Å apart
        ({"symbols": ["Hf", "O"], "positions": [[0, 0, 0], [1e6, 0, 0]]}, "non_finite"),
        # an ordinary volume but planes 1e-9 Å apart: the overlap check visited ~1e9 images
        (
            {"symbols": ["Hf"], "positions": [[0, 0, 0]], "cell": [[1e3, 0, 0], [0, 1e3, 0], [1e3, 1e3, 1e-9]]},
            "singular_cell",
        ),
        # ase's extxyz reader skipped 1e11 lines one by one
        ({"format": "extxyz", "text": "100000000000\n\nHf 0 0 0\n"}, "unparsable_text"),
        ({"symbols": ["Hf"], "positions": [[10**400, 0, 0]]}, "malformed_structure"),  # OverflowError
        ({"format": ["extxyz"], "text": "1\n\nHf 0 0 0\n"}, "malformed_structure"),  # TypeError: unhashable
    ],
    ids=["far-apart", "flat-cell", "xyz-count", "huge-int", "format-list"],
)
def test_inputs_the_fuzzers_found_get_error_entries(http: TestClient, structure: dict[str, Any], code: str) -> None:
    body = {"structures": [structure, {"symbols": ["Hf"], "positions": [[0, 0, 0]]}]}
    response = http.post("/v1/predict", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["error"]["code"] == code, first
    assert "energy" in second  # the server lives on
