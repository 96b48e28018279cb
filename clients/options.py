"""What a caller chooses: the client's settings and the strings the methods accept.

The words of the contract the clients share with the server (properties, relaxation options, job states) are
in :mod:`mlipserve.protocol`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, get_args

DEFAULT_URL = "http://127.0.0.1:8000"
#: Where the clients find the API key of a server that needs one, when none is given.
API_KEY_ENV = "MLIPSERVE_API_KEY"

#: ``"raise"``: a structure the server could not evaluate raises its StructureFailed; ``"return"``: it comes back
#: as a Result whose ``error`` is set.
ErrorMode = Literal["raise", "return"]
#: What relax() returns per structure: RelaxResult, ase.Atoms, or a pymatgen Structure/Molecule.
Output = Literal["result", "ase", "pymatgen"]
OUTPUTS: tuple[Output, ...] = get_args(Output)
#: ase.Atoms, a pymatgen Structure or Molecule, or a structure as the request JSON takes it (a dict).
StructureLike = Any


@dataclass(frozen=True)
class ClientSettings:
    """Options of :class:`~.client.Client` and :class:`~.client.AsyncClient`, with their defaults.

    ``model``: default model of requests (None: the server's); ``timeout``: seconds per request;
    ``chunk_size``/``chunk_atoms``: most structures/atoms per request; ``concurrency``: requests in flight;
    ``retries``/``backoff``: on 502/503/504 and connection errors, waits doubling from ``backoff`` seconds (with
    jitter) or the server's Retry-After, at most ``retries`` times; ``progress``: tqdm bar (None: on a terminal);
    ``api_key``: sent as ``Authorization: Bearer`` to a server that needs one (None: ``$MLIPSERVE_API_KEY``).
    """

    url: str = DEFAULT_URL
    model: str | None = None
    timeout: float = 600.0
    chunk_size: int = 64
    chunk_atoms: int = 20_000
    concurrency: int = 4
    retries: int = 8
    backoff: float = 0.5
    progress: bool | None = None
    api_key: str | None = field(default=None, repr=False)  # never printed

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))
        if self.api_key is None:
            object.__setattr__(self, "api_key", os.environ.get(API_KEY_ENV) or None)

    @property
    def headers(self) -> dict[str, str]:
        """The headers of every request."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class ClientOptions(TypedDict, total=False):
    """The keyword options both clients take: :class:`ClientSettings` less ``url`` and ``model``."""

    timeout: float
    chunk_size: int
    chunk_atoms: int
    concurrency: int
    retries: int
    backoff: float
    progress: bool | None
    api_key: str | None
