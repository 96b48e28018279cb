"""Limits on a request body, enforced while it streams in, before anything reads it whole.

A body announced (``Content-Length``) or streamed beyond its limit is refused with 413 ``body_too_large`` at once;
a client that stalls mid-body longer than ``body_timeout`` gets 408 ``body_timeout``. JSON bodies and multipart
uploads (a job's extxyz file) have limits of their own. JSON nesting deeper than the parser's recursion limit is
refused with 400 ``invalid_request`` by the app's error handler.

Hand-written rather than FastAPI's ``max_body_size``: that one has one limit per route, where the job route takes
both JSON and multipart uploads with limits of their own, and it does not time a stalled body out.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...errors import ErrorCode
from ..config import ServerSettings


@dataclass(frozen=True)
class BodyLimits:
    json_bytes: int
    upload_bytes: int
    stall_seconds: float

    @classmethod
    def of(cls, settings: ServerSettings) -> BodyLimits:
        return cls(settings.max_body_bytes, settings.max_upload_bytes, settings.body_timeout)

    def for_content_type(self, content_type: str) -> tuple[int, str]:
        """The byte limit for a body of ``content_type``, and the option that sets it."""
        if content_type.startswith("multipart/"):
            return self.upload_bytes, "--max-upload-bytes"
        return self.json_bytes, "--max-body-bytes"


class _Refused(HTTPException):
    """Raised from ``receive``: an HTTPException, so that FastAPI passes it on to the app's handler untouched."""

    def __init__(self, status: int, code: ErrorCode, message: str):
        super().__init__(status, message)
        self.status, self.code, self.message = status, code, message


class BodyLimitMiddleware:
    """Count a request's body bytes as they arrive; refuse at the first byte over the limit or on a stall."""

    def __init__(self, app: ASGIApp, limits: BodyLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        limit, option = self.limits.for_content_type(headers.get(b"content-type", b"").decode("latin-1"))
        announced = headers.get(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            await _refuse(send, _too_large(int(announced), limit, option))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.limits.stall_seconds)
            except asyncio.TimeoutError:
                raise _Refused(
                    408,
                    ErrorCode.BODY_TIMEOUT,
                    f"the request body stalled for {self.limits.stall_seconds:g} s; send it without pausing",
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _Refused(413, ErrorCode.BODY_TOO_LARGE, _too_large(received, limit, option).message)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _Refused as refused:
            if started:  # the answer had begun (a streamed body read late): nothing more can be said
                raise
            await _refuse(send, refused)


def _too_large(size: int, limit: int, option: str) -> _Refused:
    message = (
        f"the request body has at least {size} bytes, over this server's limit of {limit} ({option}); "
        "split the structures into several requests or a job"
    )
    return _Refused(413, ErrorCode.BODY_TOO_LARGE, message)


async def _refuse(send: Send, refused: _Refused) -> None:
    body = json.dumps({"error": {"code": refused.code.value, "message": refused.message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
