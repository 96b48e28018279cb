"""Clients: :class:`Client`, :class:`AsyncClient` and the ASE :class:`RemoteCalculator`."""

from .calculator import RemoteCalculator
from .client import AsyncClient, Client
from .results import MLIPServeError, RelaxResult, RequestFailed, Result, StructureFailed

__all__ = [
    "AsyncClient",
    "Client",
    "MLIPServeError",
    "RelaxResult",
    "RemoteCalculator",
    "RequestFailed",
    "Result",
    "StructureFailed",
]
