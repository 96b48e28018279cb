"""Shared fixtures: paths to ../shared/fixtures, a model directory with a user card, and a live server."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from ase.io import read
from mlipserve.clients import Client
from mlipserve.models.cards import file_sha256
from mlipserve.server.app import create_app
from mlipserve.server.config import ServerSettings, StructureLimits

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
DATASETS = FIXTURES / "datasets"
SERVED_MODELS = ("7net-0", "chgnet-0.3.0", "hfo2-cp0")
LIMIT_ATOMS_PER_STRUCTURE = 1000
LIMIT_ATOMS_PER_REQUEST = 3000
LIMIT_STRUCTURES_PER_REQUEST = 300


def pytest_configure(config: pytest.Config) -> None:
    if not FIXTURES.is_dir():
        raise pytest.UsageError(f"test fixtures not found at {FIXTURES}: the tests need ../shared beside the repo")


def dataset_sample(per_file: int = 2, max_atoms: int = 64) -> list:
    """The smallest ``per_file`` frames of the HfO2 file and of every mlearn test split, as ase.Atoms."""
    sample = []
    for path in sorted(DATASETS.glob("*.extxyz")):
        frames = [atoms for atoms in read(path, index=":", format="extxyz") if len(atoms) <= max_atoms]
        frames.sort(key=len)
        for atoms in frames[:per_file]:
            atoms.info["source"] = path.name
            sample.append(atoms)
    return sample


def write_card(model_dir: Path, name: str, source: Path, **fields: object) -> Path:
    """Copy checkpoint ``source`` into ``model_dir`` and write a card for it; ``fields`` override the defaults."""
    target = model_dir / source.name
    if not target.exists():
        shutil.copy(source, target)
    card = {
        "name": name,
        "family": "sevennet",
        "version": "test",
        "checkpoint": source.name,
        "sha256": file_sha256(target),
        "license": "MIT",
        "elements": "Hf O",
        "cutoff": 4.0,
    } | fields
    path = model_dir / f"{name}.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in card.items()))
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding SevenNet's small HfO2 test checkpoint and its card (``hfo2-cp0``)."""
    folder = tmp_path_factory.mktemp("models")
    write_card(folder, "hfo2-cp0", FIXTURES / "sevennet" / "tests" / "cp_0.pth")
    return folder


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads (the numbers do not depend on it; the speed does)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """A uvicorn server in a background thread of the test process."""

    def __init__(self, settings: ServerSettings):
        self.app = create_app(settings)
        self.url = f"http://{settings.host}:{settings.port}"
        config = uvicorn.Config(self.app, host=settings.host, port=settings.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def ready_server(timeout: float = 300, **settings: Any) -> Iterator[str]:
    """A server in this process on a free port with ``settings``, its models loaded; yields its URL."""
    with RunningServer(ServerSettings(port=free_port(), **settings)) as running:
        Client(running.url).wait_until_ready(timeout=timeout)
        yield running.url


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[RunningServer]:
    """One server for the session, hosting SevenNet-0, CHGNet 0.3.0 and the user-registered ``hfo2-cp0``."""
    settings = ServerSettings(
        port=free_port(),
        models=SERVED_MODELS,
        model_dir=model_dir,
        device="cpu",
        limits=StructureLimits(max_atoms=LIMIT_ATOMS_PER_STRUCTURE),
        max_atoms_per_request=LIMIT_ATOMS_PER_REQUEST,
        max_structures_per_request=LIMIT_STRUCTURES_PER_REQUEST,
    )
    with RunningServer(settings) as running:
        Client(running.url).wait_until_ready(timeout=300)
        yield running


@pytest.fixture(scope="session")
def server_url(server: RunningServer) -> str:
    return server.url


@pytest.fixture()
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url, progress=False) as c:
        yield c


pytest_plugins = ["tests.redis_fixtures"]
