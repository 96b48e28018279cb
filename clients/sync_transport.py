"""The blocking transport: runs plans over one ``httpx.Client``, their concurrent parts on a thread pool."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from .effects import Answer, Call, Done, Effect, Emit, Gather, Open, Plan, ReadLine, Reply, Send, Sleep, Stream
from .http_io import reply, request_arguments, unreachable
from .options import ClientSettings

T = TypeVar("T")


class SyncTransport:
    """Performs the effects of plans (see :mod:`.effects`) by blocking calls."""

    def __init__(self, settings: ClientSettings) -> None:
        self.http = httpx.Client(base_url=settings.url, timeout=settings.timeout, headers=settings.headers)

    def run(self, plan: Plan[T]) -> T:
        """The plan's value."""
        with contextlib.closing(self._drive(plan)) as steps:
            for step in steps:
                if isinstance(step, Done):
                    value: T = step.value  # the value of a Plan[T]
                    return value
                raise TypeError(f"a plan run for its value emitted {step.value!r}")
        raise AssertionError("a plan ended without a value")

    def iterate(self, stream: Stream[T]) -> Iterator[T]:
        """What the stream plan emits, as it comes."""
        with contextlib.closing(self._drive(stream)) as steps:
            for step in steps:
                if isinstance(step, Done):
                    return
                yield step.value

    def close(self) -> None:
        self.http.close()

    def _drive(self, plan: Plan[Any] | Stream[Any]) -> Generator[Emit[Any] | Done[Any], None, None]:
        with _Lines(self.http) as lines, contextlib.closing(plan):
            answer = Answer()
            while not isinstance(effect := answer.send_to(plan), Done):
                if isinstance(effect, Emit):
                    yield effect
                    answer = Answer()
                else:
                    answer = self._perform(effect, lines)
            yield effect

    def _perform(self, effect: Effect, lines: _Lines) -> Answer:
        try:
            match effect:
                case Send(call):
                    return Answer(self._send(call))
                case Sleep(seconds):
                    time.sleep(seconds)
                    return Answer()
                case Gather(plans, limit):
                    with ThreadPoolExecutor(max_workers=limit) as pool:
                        return Answer(list(pool.map(self.run, plans)))
                case Open(call):
                    return Answer(lines.open(call))
                case ReadLine():
                    return Answer(lines.next())
        except BaseException as error:  # the plan's to handle, at its yield
            return Answer(error=error)
        raise TypeError(f"not an effect: {effect!r}")

    def _send(self, call: Call) -> Reply:
        with contextlib.ExitStack() as files:
            content = None if call.upload is None else files.enter_context(call.upload.path.open("rb"))
            try:
                return reply(self.http.request(call.method, call.path, **request_arguments(call, content)))
            except httpx.TransportError as error:
                return unreachable(error)


class _Lines:
    """The one response a plan may be reading line by line (a results stream)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.response = contextlib.ExitStack()
        self.lines: Iterator[str] = iter(())

    def open(self, call: Call) -> Reply:
        self.close()
        try:
            response = self.response.enter_context(self.http.stream(call.method, call.path, **request_arguments(call)))
            if response.is_success:
                self.lines = response.iter_lines()
                return reply(response, read=False)
            response.read()
        except httpx.TransportError as error:
            self.close()
            return unreachable(error)
        self.close()
        return reply(response)

    def next(self) -> str | Reply | None:
        try:
            return next(self.lines, None)
        except httpx.TransportError as error:
            self.close()
            return unreachable(error)

    def close(self) -> None:
        self.response.close()
        self.lines = iter(())

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
