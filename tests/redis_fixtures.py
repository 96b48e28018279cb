"""Real Redis for the tests: redis-server processes of their own, on free ports of 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .conftest import free_port


class RedisServer:
    """A redis-server process of our own on a free port, which a test may stop and start again."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("the tests start their own Redis, but redis-server is not installed")
        self.binary, self.folder = binary, folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, cwd=self.folder, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of the session's own (redis-server on a free port), empty at the start.

    The tests never use a Redis they did not start: a user's Redis on 6379 and its data are left alone.
    """
    own = RedisServer(tmp_path_factory.mktemp("redis"))
    own.start()
    yield own.url
    own.stop()


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that the test may stop and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class WorkerProcess:
    """`mlipserve worker` in a subprocess."""

    def __init__(self, model: str, redis_url: str, model_dir: Path, *extra: str):
        command = [sys.executable, "-m", "mlipserve.server.cli", "worker", "--model", model, "--redis", redis_url]
        command += ["--model-dir", str(model_dir), "--device", "cpu", "--threads", "1", "--log-level", "warning"]
        self.process = subprocess.Popen([*command, *extra], env=os.environ | {"PYTHONUNBUFFERED": "1"})

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for_workers(url: str, model: str, count: int, timeout: float = 120.0) -> None:
    """Block until the server at ``url`` sees ``count`` live workers for ``model``."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
        if len(models[model].get("workers") or []) >= count:
            return
        time.sleep(0.3)
    raise TimeoutError(f"{count} worker(s) for {model} did not show up within {timeout} s")
