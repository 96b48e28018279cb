"""Python clients for the mlipserve HTTP API: :class:`Client` (sync) and :class:`AsyncClient`.

Both take lists of ase.Atoms or pymatgen structures, split them into requests the server accepts, send several
requests at once so the server can batch them, retry on 502/503/504 and connection errors with backoff, and show a
progress bar. Each method is the :class:`~.planner.Planner`'s plan of the same name (its arguments and
documentation too), run over a blocking or an asyncio transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import ALL_PROPERTIES
from .async_transport import AsyncTransport
from .md import md
from .methods import planned, streamed
from .neb import neb, neb_many
from .options import DEFAULT_URL, ClientSettings
from .planner import Planner
from .selecting import select
from .sync_transport import SyncTransport

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import ClientOptions

__all__ = ["ALL_PROPERTIES", "DEFAULT_URL", "AsyncClient", "Client"]


class _Methods:
    """The methods of both clients (see :mod:`.methods`), documented in :class:`~.planner.Planner`."""

    predict = planned(Planner.predict)
    relax = planned(Planner.relax)
    md = planned(md)
    neb = planned(neb)
    neb_many = planned(neb_many)
    submit_job = planned(Planner.submit_job)
    submit_job_file = planned(Planner.submit_job_file)
    job = planned(Planner.job)
    cancel_job = planned(Planner.cancel_job)
    job_results = streamed(Planner.job_results)
    run_job = planned(Planner.run_job)
    models = planned(Planner.models)
    select = planned(select)
    ready = planned(Planner.ready)
    wait_until_ready = planned(Planner.wait_until_ready)


class Client(_Methods):
    """Synchronous client; ``options`` as :class:`~.options.ClientSettings` lists them.

    ``.settings`` holds the options, ``.planner`` plans each call and ``.transport`` sends its requests.

    >>> from ase.build import bulk
    >>> with Client("http://127.0.0.1:8000", model="7net-0") as client:  # doctest: +SKIP
    ...     result = client.predict(bulk("Si"))
    ...     result.energy, result.forces.shape, result.stress.shape
    """

    def __init__(self, url: str = DEFAULT_URL, model: str | None = None, **options: Unpack[ClientOptions]) -> None:
        self.settings = ClientSettings(url, model, **options)
        self.planner = Planner(self.settings)
        self.transport = SyncTransport(self.settings)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_Methods):
    """Asynchronous client with the same options, methods and results as :class:`Client`, to be awaited."""

    def __init__(self, url: str = DEFAULT_URL, model: str | None = None, **options: Unpack[ClientOptions]) -> None:
        self.settings = ClientSettings(url, model, **options)
        self.planner = Planner(self.settings)
        self.transport = AsyncTransport(self.settings)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
