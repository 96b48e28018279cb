"""The layers at run time: the HTTP front end in Redis mode loads neither torch nor a model backend.

`make lint` checks the import rules statically (import-linter); this checks what a real process loads, which also
catches imports that run through a package's ``__init__``.
"""

from __future__ import annotations

import subprocess
import sys

FRONT_END = """
import sys
from mlipserve.server.app import create_app
from mlipserve.server.config import ServerSettings
from mlipserve.server.cli import build_parser
settings = ServerSettings(redis_url="redis://127.0.0.1:1/0", models=("7net-0",))
app = create_app(settings)
state = app.state.mlipserve
summaries = [state.registry.summary(card) for card in state.registry.cards()]  # what GET /v1/models serves
assert any(summary["installed"] for summary in summaries)
loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith("mlipserve.models.backends"))
print(",".join(loaded))
"""


def test_redis_front_end_loads_no_torch() -> None:
    result = subprocess.run([sys.executable, "-c", FRONT_END], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the API process imported {result.stdout.strip()}"


def test_clients_load_no_server_and_no_torch() -> None:
    code = (
        "import sys, mlipserve.clients; "
        "print(','.join(n for n in sys.modules if n == 'torch' or n.startswith(('mlipserve.server', 'fastapi'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the clients imported {result.stdout.strip()}"
