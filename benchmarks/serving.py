"""Processes a benchmark starts: `mlipserve serve` and a private redis-server, on free ports, stopped at the end."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of the benchmark's own, without persistence; yields its URL."""
    port = free_port()
    command = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen([*command, "--dir", folder], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(10)


@contextmanager
def served(model: str, *options: str) -> Iterator[str]:
    """Start a CPU server hosting ``model`` (extra ``serve`` options as given); yield its URL."""
    port = free_port()
    command = [sys.executable, "-m", "mlipserve.server.cli", "serve", "--port", str(port), "--model", model]
    server = subprocess.Popen([*command, "--device", "cpu", "--log-level", "warning", *options])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)
