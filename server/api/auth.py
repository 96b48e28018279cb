"""Who is asking, and may they: API keys, their scopes and their request rate, checked before a body is parsed.

With a keys file (``--api-keys``) each route asks for a scope: ``predict``, ``relax``, ``jobs``, or ``admin``
(``/metrics``, ``/v1/status``); ``/v1/models`` needs any key; the probes, the docs and the status page's (static)
HTML stay open. The key goes in ``Authorization: Bearer <secret>``. Refusals: 401 ``unauthorized`` (no key, or an
unknown one), 403 ``forbidden`` (a key without the scope), 429 ``rate_limited`` with ``Retry-After``. Without a
keys file the API is open (and ``mlipserve serve`` then listens on loopback only, unless ``--insecure``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ...errors import ErrorCode
from ..keys import ApiKey, KeyRing, Scope
from ..quotas import Quotas
from .errors import RequestError

#: Reads ``Authorization: Bearer``; also puts the scheme in the OpenAPI document (the docs' Authorize button).
BEARER = HTTPBearer(auto_error=False, description="An API key of this server (mlipserve keys add NAME).")

NEEDS_KEY = (
    "this server needs an API key: send 'Authorization: Bearer <key>' "
    "(the Python client and the mlipserve commands send $MLIPSERVE_API_KEY)"
)

Check = Callable[..., Awaitable[None]]


class Authenticator:
    """Makes the FastAPI dependencies that admit a request to a route of some scope."""

    def __init__(self, keyring: KeyRing | None, quotas: Quotas):
        self.keyring = keyring
        self.quotas = quotas

    @property
    def enabled(self) -> bool:
        return self.keyring is not None

    def requires(self, scope: Scope | None) -> Check:
        """A dependency admitting a key with ``scope`` (None: any key) within its rate; it sets ``api_key``."""

        async def admit(
            request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
        ) -> None:
            request.state.api_key = await self.admit(credentials, scope)

        return admit

    async def admit(self, credentials: HTTPAuthorizationCredentials | None, scope: Scope | None) -> ApiKey | None:
        """The key of a request that may go on (None when the server has no keys), or a RequestError."""
        if self.keyring is None:
            return None
        if credentials is None:
            raise RequestError(401, ErrorCode.UNAUTHORIZED, NEEDS_KEY)
        key = self.keyring.identify(credentials.credentials)
        if key is None:
            raise RequestError(401, ErrorCode.UNAUTHORIZED, "the API key is not one this server accepts")
        if scope is not None and not key.allows(scope):
            scopes = ", ".join(sorted(s.value for s in key.scopes))
            message = f"the key {key.name!r} may not use this route: it needs scope {scope.value!r} (it has {scopes})"
            raise RequestError(403, ErrorCode.FORBIDDEN, message)
        if key.rate is not None and (wait := await self.quotas.take_request(key.name, key.rate)) is not None:
            message = f"the key {key.name!r} is over its rate of {key.rate:g} requests per second"
            raise RequestError(429, ErrorCode.RATE_LIMITED, message, retry_after=round(wait, 3))
        return key


def api_key(request: Request) -> ApiKey | None:
    """The key admitted for this request (a dependency of the routes that act on its behalf)."""
    return getattr(request.state, "api_key", None)


#: A route parameter: the key the request was admitted with (None on a server without keys).
RequestKey = Annotated[ApiKey | None, Depends(api_key)]
