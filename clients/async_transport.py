"""The asyncio transport: runs plans over one ``httpx.AsyncClient``, their concurrent parts as gathered tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import httpx

from .effects import Answer, Call, Done, Effect, Emit, Gather, Open, Plan, ReadLine, Reply, Send, Sleep, Stream
from .http_io import reply, request_arguments, unreachable
from .options import ClientSettings

T = TypeVar("T")


class AsyncTransport:
    """Performs the effects of plans (see :mod:`.effects`) by awaiting them.

    Once the awaiting task is cancelled, the effects the plan still asks for (e.g. cancelling its job on the
    server) are shielded from a second cancellation's interruption.
    """

    def __init__(self, settings: ClientSettings) -> None:
        self.http = httpx.AsyncClient(base_url=settings.url, timeout=settings.timeout, headers=settings.headers)

    async def run(self, plan: Plan[T]) -> T:
        """The plan's value."""
        async with contextlib.aclosing(self._drive(plan)) as steps:
            async for step in steps:
                if isinstance(step, Done):
                    value: T = step.value  # the value of a Plan[T]
                    return value
                raise TypeError(f"a plan run for its value emitted {step.value!r}")
        raise AssertionError("a plan ended without a value")

    async def iterate(self, stream: Stream[T]) -> AsyncIterator[T]:
        """What the stream plan emits, as it comes."""
        async with contextlib.aclosing(self._drive(stream)) as steps:
            async for step in steps:
                if isinstance(step, Done):
                    return
                yield step.value

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _drive(self, plan: Plan[Any] | Stream[Any]) -> AsyncGenerator[Emit[Any] | Done[Any], None]:
        async with _Lines(self.http) as lines:
            with contextlib.closing(plan):
                answer, cancelled = Answer(), False
                while not isinstance(effect := answer.send_to(plan), Done):
                    if isinstance(effect, Emit):
                        yield effect
                        answer = Answer()
                        continue
                    performing = self._perform(effect, lines)
                    answer = await (asyncio.shield(performing) if cancelled else performing)
                    cancelled = cancelled or isinstance(answer.error, asyncio.CancelledError)
                yield effect

    async def _perform(self, effect: Effect, lines: _Lines) -> Answer:
        try:
            match effect:
                case Send(call):
                    return Answer(await self._send(call))
                case Sleep(seconds):
                    await asyncio.sleep(seconds)
                    return Answer()
                case Gather(plans, limit):
                    gate = asyncio.Semaphore(limit)

                    async def gated(plan: Plan[Any]) -> Any:
                        async with gate:
                            return await self.run(plan)

                    return Answer(list(await asyncio.gather(*map(gated, plans))))
                case Open(call):
                    return Answer(await lines.open(call))
                case ReadLine():
                    return Answer(await lines.next())
        except BaseException as error:  # the plan's to handle, at its yield
            return Answer(error=error)
        raise TypeError(f"not an effect: {effect!r}")

    async def _send(self, call: Call) -> Reply:
        content = None if call.upload is None else call.upload.path.read_bytes()
        try:
            return reply(await self.http.request(call.method, call.path, **request_arguments(call, content)))
        except httpx.TransportError as error:
            return unreachable(error)


class _Lines:
    """The one response a plan may be reading line by line (a results stream)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.response = contextlib.AsyncExitStack()
        self.lines: AsyncIterator[str] = _nothing()

    async def open(self, call: Call) -> Reply:
        await self.close()
        try:
            stream = self.http.stream(call.method, call.path, **request_arguments(call))
            response = await self.response.enter_async_context(stream)
            if response.is_success:
                self.lines = response.aiter_lines()
                return reply(response, read=False)
            await response.aread()
        except httpx.TransportError as error:
            await self.close()
            return unreachable(error)
        await self.close()
        return reply(response)

    async def next(self) -> str | Reply | None:
        try:
            return await anext(self.lines, None)
        except httpx.TransportError as error:
            await self.close()
            return unreachable(error)

    async def close(self) -> None:
        await self.response.aclose()
        self.lines = _nothing()

    async def __aenter__(self) -> _Lines:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _nothing() -> AsyncIterator[str]:
    return
    yield
