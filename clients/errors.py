"""The errors the clients raise, with the server's error codes as :class:`~mlipserve.errors.ErrorCode` members."""

from __future__ import annotations

from mlipserve.errors import ErrorCode


def error_code(code: str) -> ErrorCode | str:
    """``code`` as an :class:`ErrorCode` when it is one, else the string itself (a newer server's code).

    ErrorCode is a str Enum, so ``error.code == "queue_full"`` holds either way.
    """
    try:
        return ErrorCode(code)
    except ValueError:
        return code


class MLIPServeError(Exception):
    """Base of the client's errors."""


class RequestFailed(MLIPServeError):
    """The server refused a request (4xx/5xx) or could not be reached after the retries."""

    def __init__(self, status: int | None, code: ErrorCode | str, message: str):
        self.status = status
        self.code = error_code(code)
        self.message = message
        super().__init__(f"{message} [{self.code}{f', HTTP {status}' if status else ''}]")


class StructureFailed(MLIPServeError):
    """The server could not evaluate one structure (bad input, or the model failed on it)."""

    def __init__(self, index: int, code: ErrorCode | str, message: str):
        self.index = index
        self.code = error_code(code)
        self.message = message
        super().__init__(f"{message} [{self.code}]")
