"""The model families' own worker environments (``.venv-FAMILY``, made by ``make env-FAMILY``), as tests use them.

A test module of such a family calls :func:`require_environment` at import: without the environment it is skipped
with the command that makes it, except under CI, where a missing environment is an error (CI builds them all).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from .conftest import REPO


def env_python(family: str) -> Path:
    return REPO / f".venv-{family}" / "bin" / "python"


def require_environment(family: str) -> Path:
    """The environment's Python; skip the calling test module (fail under CI) when the environment is missing."""
    python = env_python(family)
    if not python.exists():
        message = f"the {family} environment .venv-{family} is missing: create it with `make env-{family}`"
        if os.environ.get("CI"):
            raise RuntimeError(message)
        pytest.skip(message, allow_module_level=True)
    return python


def run_in_environment(
    family: str, *args: str, timeout: float = 600, environment: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the family environment's Python with ``args`` (one torch thread unless ``environment`` says otherwise),
    failing with the end of its stderr."""
    variables = environment if environment is not None else os.environ | {"OMP_NUM_THREADS": "1"}
    command = [str(env_python(family)), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=dict(variables))
    assert result.returncode == 0, result.stderr[-3000:]
    return result
