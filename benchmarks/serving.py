"""`mlipserve serve` in a subprocess for a benchmark: on a free port, stopped when the benchmark is done."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def served(model: str, *options: str) -> Iterator[str]:
    """Start a CPU server hosting ``model`` (extra ``serve`` options as given); yield its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "mlipserve.server.cli", "serve", "--port", str(port), "--model", model]
    server = subprocess.Popen([*command, "--device", "cpu", "--log-level", "warning", *options])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)
