"""Clients: :class:`Client`, :class:`AsyncClient` and the ASE :class:`RemoteCalculator`.

Layout: :mod:`.planner` makes every call a plan (chunks, bodies, retries, progress, decoding) without touching the
network; :mod:`.sync_transport` and :mod:`.async_transport` perform plans over httpx; :mod:`.client` joins them.
"""

from ..protocol import RelaxOptions
from .calculator import RemoteCalculator
from .client import AsyncClient, Client
from .errors import MLIPServeError, RequestFailed, StructureFailed
from .md import MDResult
from .neb import NEBResult
from .options import ClientSettings
from .results import RelaxResult, Result

__all__ = [
    "AsyncClient",
    "Client",
    "ClientSettings",
    "MDResult",
    "MLIPServeError",
    "NEBResult",
    "RelaxOptions",
    "RelaxResult",
    "RemoteCalculator",
    "RequestFailed",
    "Result",
    "StructureFailed",
]
