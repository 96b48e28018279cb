"""Logging for both processes: text for people, or one JSON object per line for log collectors.

A JSON line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, the ids of the request and job
being handled when there are (set by the front end in :data:`REQUEST_ID` and :data:`JOB_ID`), the worker's id in a
worker process, any ``extra={...}`` fields of the call, and ``exception`` with the traceback.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import datetime, timezone

#: The id of the HTTP request being handled (``X-Request-ID``).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlipserve_request_id", default=None)
#: The id of the job whose runner is working.
JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlipserve_job_id", default=None)

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, static: dict[str, str] | None = None):
        super().__init__()
        #: Fields every line carries (a worker's id).
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for name, var in (("request_id", REQUEST_ID), ("job_id", JOB_ID)):
            if (value := var.get()) is not None:
                line[name] = value
        line |= {key: value for key, value in vars(record).items() if key not in _STANDARD}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str = "info", log_format: str = "text", **static: str) -> None:
    """Log at ``level`` to stderr as ``text`` or ``json`` (``static``: fields of every JSON line)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(static) if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # through the root handler, in the same format
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
