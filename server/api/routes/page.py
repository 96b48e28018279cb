"""``GET /``: the status page, a static HTML file whose script polls ``GET /v1/status`` and re-renders itself.

The page holds no server data of its own, so it is read once, when the router is made, and served as is.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = files("mlipserve.server.api") / "static" / "status.html"


def _sha256_sources(html: str, tag: str) -> str:
    """CSP hash sources of every inline ``<tag>`` block: the browser runs those blocks and nothing else."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'" for block in blocks
    )


def content_security_policy(html: str) -> str:
    """A policy that lets the page run only its own inline script and style and talk only to this server.

    It keeps the page offline-safe (no external resource can load) and is a second guard, after the script's
    text-only rendering, against markup smuggled in through model names or error messages.
    """
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {_sha256_sources(html, 'script')}",
            f"style-src {_sha256_sources(html, 'style')}",
            "connect-src 'self'",
            "img-src data:",  # the empty inline favicon, which spares a request for /favicon.ico
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def create_router() -> APIRouter:
    """The page route (the page itself asks /v1/status for everything it shows)."""
    html = PAGE.read_text(encoding="utf-8")
    headers = {
        # revalidate at every load, so that the page of an upgraded server is picked up
        "cache-control": "no-cache",
        "content-security-policy": content_security_policy(html),
        "x-content-type-options": "nosniff",
    }
    router = APIRouter(tags=["status"])

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def status_page() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    return router
