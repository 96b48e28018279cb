"""Fuzz every route of the live OpenAPI document with schemathesis: no 5xx, and every answer as documented.

One embedded server hosts the small ``hfo2-cp0`` model only, with small limits, so that a generated structure that
happens to be valid costs little model time. Each operation gets the schema's own examples, then random valid
inputs, then random invalid ones (which must be refused with a documented 4xx), each from a fixed seed
(``derandomize``) with a bounded number of cases: the run is the same every time and stays well under two minutes
on two busy cores.

The cases are drawn from schemathesis' Hypothesis strategies inside one test rather than through its pytest
plugin, whose ``from_fixture`` does not run under pytest 9.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from mlipserve.server.config import StructureLimits
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import ready_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

#: Cases drawn per operation: its examples, then random valid inputs, then random invalid ones.
EXAMPLES, VALID, INVALID = 5, 100, 100


@pytest.fixture(scope="module")
def fuzz_server(model_dir: Path) -> Iterator[str]:
    """A server of its own (the session server hosts big models): hfo2-cp0 only, one torch thread, small limits."""
    with ready_server(
        models=("hfo2-cp0",),
        model_dir=model_dir,
        device="cpu",
        torch_threads=1,
        # MD runs and NEB paths of at most 2000 atom-steps: a random valid one costs seconds, not hours
        limits=StructureLimits(max_atoms=32, max_atom_steps=2000),
        max_atoms_per_request=128,
        max_structures_per_request=16,
        max_structures_per_job=16,
    ) as url:
        yield url


def takes_input(operation: schemathesis.APIOperation) -> bool:
    parts = (operation.path_parameters, operation.query, operation.headers, operation.cookies, operation.body)
    return any(len(part) for part in parts)


def case_sources(operation: schemathesis.APIOperation) -> list[tuple[str, st.SearchStrategy, int]]:
    """(name, strategy of cases, how many to draw) for each kind of input the operation is fuzzed with."""
    sources = []
    examples = operation.get_strategies_from_examples()
    if examples:
        sources.append(("examples", st.one_of(examples), EXAMPLES))
    sources.append(("valid", operation.as_strategy(generation_mode=GenerationMode.POSITIVE), VALID))
    if takes_input(operation):
        sources.append(("invalid", operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), INVALID))
    return sources


def test_every_route_answers_as_documented(fuzz_server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # every documented route (/metrics and the status page are left out of the document on purpose)
    assert {"POST /v1/predict", "POST /v1/relax", "POST /v1/jobs", "GET /v1/jobs/{job_id}/results"} <= {
        operation.label for operation in operations
    }
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    no_invalid_input = []
    with requests.Session() as session:
        for operation in operations:
            for kind, cases, count in case_sources(operation):

                @given(case=cases)
                @settings(
                    max_examples=count,
                    derandomize=True,
                    deadline=None,
                    database=None,
                    # a failure is reported as found: shrinking against a live server could take minutes
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                def fuzz(case: schemathesis.Case) -> None:
                    response = case.call(base_url=fuzz_server, session=session, timeout=60)
                    sent[case.operation.label] += 1
                    statuses[response.status_code] += 1
                    case.validate_response(response, checks=CHECKS)

                try:
                    fuzz()
                except Unsatisfiable:
                    # Only invalid inputs can be impossible to build: a string path parameter takes any value.
                    assert kind == "invalid", operation.label
                    no_invalid_input.append(operation.label)
    answered = dict(sorted(statuses.items()))
    print(f"\nschemathesis: {sum(sent.values())} cases over {len(sent)} operations; statuses {answered}")
    for label, count in sorted(sent.items()):
        print(f"  {count:4d}  {label}")
    print(f"  no invalid input can be built for: {', '.join(no_invalid_input) or 'none'}")
    assert set(sent) == {operation.label for operation in operations}
