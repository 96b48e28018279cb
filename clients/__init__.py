"""Clients: :class:`Client`, :class:`AsyncClient` and the ASE :class:`RemoteCalculator`."""

from .calculator import RemoteCalculator
from .client import AsyncClient, Client
from .results import MLIPServeError, RequestFailed, Result, StructureFailed

__all__ = ["AsyncClient", "Client", "MLIPServeError", "RemoteCalculator", "RequestFailed", "Result", "StructureFailed"]
