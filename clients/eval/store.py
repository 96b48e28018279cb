"""The results of a run, one NDJSON file per model in ``OUT/results/``: a line per structure, appended as it arrives.

Each line is written whole and flushed, so an interrupted run leaves complete lines (a torn last line, from a crash
mid-write, is cut off before the next append); a rerun skips the ids already there. A record holds ``id``,
``model``, ``energy`` (eV), ``n_atoms``, ``steps``, ``converged``, ``stop_reason``, ``fmax``, ``seconds``,
``structure`` (the relaxed ``numbers``, ``positions``, ``cell``, ``pbc``) and ``error`` (``{code, message}`` or null).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

Record = dict[str, Any]


def results_path(out: Path, model: str) -> Path:
    return out / "results" / f"{re.sub(r'[^A-Za-z0-9._+-]', '_', model)}.ndjson"


def read_results(out: Path, model: str) -> dict[str, Record]:
    """The model's records by id (a later line for the same id wins); a torn last line is ignored."""
    path = results_path(out, model)
    if not path.exists():
        return {}
    records: dict[str, Record] = {}
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            records[record["id"]] = record
    return records


@contextlib.contextmanager
def appender(out: Path, model: str) -> Iterator[TextIO]:
    """The model's results file opened for appending, a torn last line cut off first."""
    path = results_path(out, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    _cut_torn_line(path)
    with path.open("a", encoding="utf-8") as file:
        yield file


def append(file: TextIO, record: Record) -> None:
    """Write one record as one line and flush it."""
    file.write(json.dumps(_finite(record), allow_nan=False) + "\n")
    file.flush()


def json_text(value: Any) -> str:
    """``value`` as indented JSON, NaN and infinities as null."""
    return json.dumps(_finite(value), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file and a rename, so that it is never seen half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _cut_torn_line(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
