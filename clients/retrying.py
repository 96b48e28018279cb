"""One request as a plan: retried with backoff while the server is busy or unreachable, then decoded or raised."""

from __future__ import annotations

import itertools
import random
from typing import Any

from mlipserve.errors import ErrorCode

from .effects import Call, Plan, Reply, Send, Sleep
from .errors import RequestFailed
from .options import ClientSettings

#: Answers worth asking again: the server (or a proxy before it) is busy, starting or restarting.
RETRY_STATUSES = frozenset({502, 503, 504})


def retry_delay(settings: ClientSettings, attempt: int, reply: Reply) -> float | None:
    """Seconds to wait before attempt ``attempt + 1`` (counting from 0), or None when ``reply`` is final.

    The server's Retry-After when it sends one; otherwise ``backoff`` doubling with each attempt, with jitter.
    """
    retryable = reply.status is None or reply.status in RETRY_STATUSES
    if not retryable or attempt >= settings.retries:
        return None
    retry_after = reply.header("Retry-After")
    if retry_after is not None:
        try:
            return float(retry_after)
        except ValueError:
            pass
    return settings.backoff * 2.0**attempt * (0.5 + random.random())


def failure(settings: ClientSettings, reply: Reply) -> RequestFailed:
    """The error a failed reply stands for: unreachable, or the server's ``{"error": {"code", "message"}}``."""
    if reply.status is None:
        return RequestFailed(None, ErrorCode.UNREACHABLE, f"{settings.url}: {reply.error}")
    try:
        error = reply.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = ErrorCode.HTTP_ERROR, reply.body.decode(errors="replace")[:500]
    return RequestFailed(reply.status, code, message)


def decoded(settings: ClientSettings, reply: Reply) -> Any:
    """The JSON body of a successful reply; raises :class:`RequestFailed` for any other."""
    if not reply.ok:
        raise failure(settings, reply) from reply.error
    return reply.json()


def request(settings: ClientSettings, call: Call) -> Plan[Any]:
    """Send ``call``, retrying as :func:`retry_delay` says; the answer's JSON."""
    for attempt in itertools.count():
        reply: Reply = yield Send(call)
        delay = retry_delay(settings, attempt, reply)
        if delay is None:
            return decoded(settings, reply)
        yield Sleep(delay)
    raise AssertionError("unreachable")
