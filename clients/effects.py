"""What the planner asks of a transport, and what it gets back: the only contact between the two.

A *plan* is a generator: it yields effects (send this request, sleep, run these plans concurrently, open a
stream, read its next line) and is sent each one's answer, until it returns its value. A transport performs the
effects (over httpx, sync or async) and knows nothing of chunks, retries or results; a plan never touches the
network, so it can be driven in a test by hand. An error while performing an effect is thrown into the plan at its
``yield``, as an ``await`` would raise it. A *stream* plan also yields :class:`Emit` values, which the transport
hands to its caller one by one.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Y = TypeVar("Y")


@dataclass(frozen=True)
class Upload:
    """A file sent as the multipart field ``file``, with form ``fields``."""

    path: Path
    fields: Mapping[str, str]
    content_type: str = "chemical/x-extxyz"


@dataclass(frozen=True)
class Call:
    """One HTTP request: a path on the server, a JSON body or an upload, query ``params``, a timeout (None: none)."""

    method: str
    path: str
    timeout: float | None
    json: Any = None
    params: Mapping[str, Any] | None = None
    upload: Upload | None = None


@dataclass(frozen=True)
class Reply:
    """The server's answer to a :class:`Call`; ``status`` None when it could not be reached (``error`` says why)."""

    status: int | None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers.items() if key.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Send:
    """Send ``call`` once; answered with its :class:`Reply` (a connection error is a Reply too, not raised)."""

    call: Call


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds``; answered with None."""

    seconds: float


@dataclass(frozen=True)
class Gather:
    """Run ``plans``, at most ``limit`` at once; answered with their values in order (the first error raises)."""

    plans: Sequence[Plan[Any]]
    limit: int


@dataclass(frozen=True)
class Open:
    """Open ``call`` as a stream, closing any stream opened before; answered with its :class:`Reply`, whose body is
    read only when it failed. A plan that opens streams must be driven as a stream plan."""

    call: Call


@dataclass(frozen=True)
class ReadLine:
    """Answered with the open stream's next line, None at its end, or a failed :class:`Reply` if the connection
    broke (the stream is then closed)."""


@dataclass(frozen=True)
class Emit(Generic[T]):
    """A value a stream plan hands to its caller."""

    value: T


Effect = Send | Sleep | Gather | Open | ReadLine
#: A plan whose value is a T.
Plan = Generator[Effect, Any, T]
#: A plan that hands out T values one at a time.
Stream = Generator[Effect | Emit[T], Any, None]


@dataclass(frozen=True)
class Done(Generic[T]):
    """A plan's value, once it has returned."""

    value: T


@dataclass(frozen=True)
class Answer:
    """What performing an effect gave: a value, or the error to throw into the plan."""

    value: Any = None
    error: BaseException | None = None

    def send_to(self, plan: Generator[Y, Any, T]) -> Y | Done[T]:
        """Resume ``plan`` with this answer; returns what it yields next, or :class:`Done` once it returns."""
        try:
            return plan.send(self.value) if self.error is None else plan.throw(self.error)
        except StopIteration as stop:
            return Done(stop.value)


def emitted(stream: Stream[T]) -> Plan[list[T]]:
    """A plan collecting everything ``stream`` emits (its other effects pass through to the transport)."""
    values: list[T] = []
    answer = Answer()
    while not isinstance(effect := answer.send_to(stream), Done):
        if isinstance(effect, Emit):
            values.append(effect.value)
            answer = Answer()
            continue
        try:
            answer = Answer((yield effect))
        except BaseException as error:  # thrown into this plan: the stream gets to handle it
            answer = Answer(error=error)
    return values
