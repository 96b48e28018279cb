"""Client methods made from plans: one declaration serves both clients, each running it on its own transport.

``predict = planned(Planner.predict)`` in a class both clients share gives ``Client.predict(...)`` returning the
plan's value and ``AsyncClient.predict(...)`` returning a coroutine of it, with the plan's arguments, types and
documentation (the overloads of ``__get__`` tell type checkers which is which).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from .effects import Plan, Stream
from .planner import Planner

if TYPE_CHECKING:
    from .client import AsyncClient, Client

P = ParamSpec("P")
T = TypeVar("T")


class _FromPlan:
    """What both kinds share: the plan's documentation, and calls on the class (``Client.predict(client, ...)``)."""

    def __init__(self, plan: Callable[..., Any]) -> None:
        self.plan = self.__wrapped__ = plan
        self.__doc__ = plan.__doc__
        parameters = list(inspect.signature(plan).parameters.values())[1:]  # less the planner
        self.signature = inspect.Signature(parameters)

    def __call__(self, client: Any, /, *args: Any, **kwargs: Any) -> Any:
        return self.__get__(client)(*args, **kwargs)

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        raise NotImplementedError

    def bound(self, function: Callable[..., Any], client: Any) -> Callable[..., Any]:
        """``function`` dressed as the client's method: the plan's name, documentation and signature."""
        functools.update_wrapper(function, self.plan)
        function.__qualname__ = f"{type(client).__qualname__}.{self.plan.__name__}"
        function.__signature__ = self.signature  # type: ignore[attr-defined]  # read by inspect, help()
        return function


class planned(_FromPlan, Generic[P, T]):
    """A client method running the plan ``plan`` makes: its value, or in an AsyncClient a coroutine of it."""

    def __init__(self, plan: Callable[Concatenate[Planner, P], Plan[T]]) -> None:
        super().__init__(plan)

    @overload
    def __get__(self, client: None, owner: type | None = None) -> planned[P, T]: ...
    @overload
    def __get__(self, client: Client, owner: type | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type | None = None) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self
        plan, planner, run = self.plan, client.planner, client.transport.run
        if inspect.iscoroutinefunction(run):

            async def awaited(*args: Any, **kwargs: Any) -> Any:
                return await run(plan(planner, *args, **kwargs))

            return self.bound(awaited, client)
        return self.bound(lambda *args, **kwargs: run(plan(planner, *args, **kwargs)), client)


class streamed(_FromPlan, Generic[P, T]):
    """A client method handing out what the stream ``plan`` makes emits: an iterator, or an async one."""

    def __init__(self, plan: Callable[Concatenate[Planner, P], Stream[T]]) -> None:
        super().__init__(plan)

    @overload
    def __get__(self, client: None, owner: type | None = None) -> streamed[P, T]: ...
    @overload
    def __get__(self, client: Client, owner: type | None = None) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type | None = None) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self
        plan, planner, iterate = self.plan, client.planner, client.transport.iterate
        return self.bound(lambda *args, **kwargs: iterate(plan(planner, *args, **kwargs)), client)
