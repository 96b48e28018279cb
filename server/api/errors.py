"""Errors the front end answers with: each has a code from :class:`~mlipserve.errors.ErrorCode` and a message
naming the problem."""

from __future__ import annotations

from ...errors import ErrorCode
from ..transport.base import BrokerError, TimedOut


class StructureError(ValueError):
    """One structure of a request is unusable; the others go on. ``message`` names the structure's index."""

    def __init__(self, index: int, code: ErrorCode, problem: str):
        self.index = index
        self.code = code
        self.message = f"structure {index}: {problem}"
        super().__init__(self.message)

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


class RequestError(Exception):
    """The request as a whole is refused with an HTTP status (4xx, or 503 when the server cannot take it now)."""

    def __init__(self, status: int, code: ErrorCode, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @classmethod
    def from_broker(cls, error: BrokerError) -> RequestError:
        """The HTTP answer to a broker's refusal: 504 for a timeout, 503 (try again later) otherwise."""
        return cls(504 if isinstance(error, TimedOut) else 503, error.code, error.message, error.retry_after)
