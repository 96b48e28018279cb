"""What both transports share: a :class:`~.effects.Call` as httpx's request arguments, a response as a Reply."""

from __future__ import annotations

from typing import IO, Any

import httpx

from .effects import Call, Reply


def request_arguments(call: Call, content: IO[bytes] | bytes | None = None) -> dict[str, Any]:
    """Keyword arguments of ``httpx.Client.request`` for ``call``; ``content`` is the uploaded file's, if any."""
    arguments: dict[str, Any] = {"json": call.json, "params": call.params, "timeout": call.timeout}
    if call.upload is not None:
        arguments["files"] = {"file": (call.upload.path.name, content, call.upload.content_type)}
        arguments["data"] = dict(call.upload.fields)
    return arguments


def reply(response: httpx.Response, read: bool = True) -> Reply:
    """The Reply of a response; its body only if ``read`` (a stream being read line by line has none yet)."""
    return Reply(response.status_code, response.headers, response.content if read else b"")


def unreachable(error: httpx.TransportError) -> Reply:
    return Reply(None, error=error)
