"""Errors the server reports: each has a short machine-readable code and a message naming the problem."""

from __future__ import annotations


class StructureError(ValueError):
    """One structure of a request is unusable; the others go on. ``message`` names the structure's index."""

    def __init__(self, index: int, code: str, problem: str):
        self.index = index
        self.code = code
        self.message = f"structure {index}: {problem}"
        super().__init__(self.message)

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class RequestError(Exception):
    """The request as a whole is refused with an HTTP status (4xx, or 503 when the server cannot take it now)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
