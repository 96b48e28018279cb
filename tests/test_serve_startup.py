"""What a user sees when a model card cannot be used: at start-up, in GET /v1/models, and in the 404."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlipserve.clients import Client, RequestFailed
from mlipserve.server.config import ServerSettings

from .conftest import FIXTURES, RunningServer, free_port, write_card

CHECKPOINT = FIXTURES / "sevennet" / "tests" / "cp_0.pth"


@pytest.fixture(scope="module")
def troubled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with one good card, one lacking a field, one pointing outside, one with a wrong hash."""
    folder = tmp_path_factory.mktemp("troubled")
    write_card(folder, "good", CHECKPOINT)
    (folder / "no-cutoff.yaml").write_text(
        (folder / "good.yaml").read_text().replace("name: good", "name: no-cutoff").replace("cutoff: 4.0\n", "")
    )
    write_card(folder, "outside", CHECKPOINT, checkpoint="../cp_0.pth")
    write_card(folder, "altered", CHECKPOINT, sha256="f" * 64)
    return folder


def serve(model_dir: Path, model: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mlipserve.server.cli", "serve", "--model-dir", str(model_dir), "--model", model]
    command += ["--port", str(free_port()), "--device", "cpu"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("no-cutoff", "lacks cutoff"),
        ("outside", "outside the model directory"),
        ("altered", "has sha256"),
    ],
)
def test_serve_refuses_to_start_on_a_card_it_cannot_use(troubled_dir: Path, model: str, reason: str) -> None:
    result = serve(troubled_dir, model)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("mlipserve serve:") and model in message and reason in message


@pytest.fixture(scope="module")
def server(troubled_dir: Path) -> Iterator[str]:
    settings = ServerSettings(port=free_port(), models=(), model_dir=troubled_dir, device="cpu")
    with RunningServer(settings) as running:
        yield running.url


def test_models_route_names_each_card_that_could_not_be_used(server: str) -> None:
    answer = httpx.get(f"{server}/v1/models").json()
    assert set(answer["card_errors"]) == {"no-cutoff", "outside"}
    assert "lacks cutoff" in answer["card_errors"]["no-cutoff"]
    assert {"good", "altered"} <= {model["name"] for model in answer["models"]}


def test_a_request_for_an_unusable_card_says_why(server: str) -> None:
    body = {"model": "no-cutoff", "structures": [{"symbols": ["Hf"], "positions": [[0, 0, 0]]}]}
    response = httpx.post(f"{server}/v1/predict", json=body)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_model"
    assert "'no-cutoff'" in error["message"] and "lacks cutoff" in error["message"]


def test_waiting_for_a_server_whose_model_failed_to_load_ends_at_once(troubled_dir: Path) -> None:
    """`mlipserve serve` refuses a bad checkpoint up front; a server built in code loads it and fails: the client
    says so at once instead of waiting out its timeout."""
    settings = ServerSettings(port=free_port(), models=("altered",), model_dir=troubled_dir, device="cpu")
    with RunningServer(settings) as running, Client(running.url, progress=False) as client:
        started = time.monotonic()
        with pytest.raises(RequestFailed) as raised:
            client.wait_until_ready(timeout=60)
    assert time.monotonic() - started < 20
    assert raised.value.code == "model_unavailable" and "'altered' failed to load" in raised.value.message
    assert "has sha256" in raised.value.message
