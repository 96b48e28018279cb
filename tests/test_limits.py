"""Limits before parsing: body sizes refused while they stream in (413), stalled bodies (408), CORS off unless set."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from mlipserve.server.config import ServerSettings

from .conftest import RunningServer, free_port

JSON_LIMIT, UPLOAD_LIMIT = 4096, 16384


@pytest.fixture(scope="module")
def limited_url() -> Iterator[str]:
    """A server with small body limits and a short stall timeout; no model (no request here gets that far)."""
    settings = ServerSettings(
        port=free_port(),
        models=(),
        max_body_bytes=JSON_LIMIT,
        max_upload_bytes=UPLOAD_LIMIT,
        body_timeout=1.0,
        cors_origins=("https://lab.example.org",),
    )
    with RunningServer(settings) as running:
        yield running.url


def test_an_announced_body_over_the_limit_is_refused_before_it_is_read(limited_url: str) -> None:
    body = b'{"structures": [' + b" " * JSON_LIMIT + b"]}"
    refused = httpx.post(f"{limited_url}/v1/predict", content=body, headers={"content-type": "application/json"})
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert error["code"] == "body_too_large" and "--max-body-bytes" in error["message"]


def test_a_streamed_body_is_refused_at_the_first_byte_over_the_limit(limited_url: str) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer, counted as it arrives
        yield b'{"structures": ['
        for _ in range(1000):
            sent.append(1024)
            yield b" " * 1024
        yield b"]}"

    refused = httpx.post(f"{limited_url}/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "body_too_large"


def test_uploads_have_a_limit_of_their_own(limited_url: str) -> None:
    frames = "1\n\nSi 0 0 0\n" * 800  # ~8 KB: over the JSON limit, under the upload limit
    accepted = httpx.post(f"{limited_url}/v1/jobs", files={"file": ("a.extxyz", frames)}, data={"model": "none"})
    assert accepted.status_code != 413  # refused later, for the unknown model, not for its size
    too_big = httpx.post(f"{limited_url}/v1/jobs", files={"file": ("a.extxyz", frames * 3)})
    assert too_big.status_code == 413 and "--max-upload-bytes" in too_big.json()["error"]["message"]


def test_a_stalled_body_gets_408(limited_url: str) -> None:
    host, port = limited_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        head = "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        client.sendall(head.encode() + b'{"structures"')  # then nothing more
        started = time.monotonic()
        answer = b""
        while b"}}" not in answer and (chunk := client.recv(4096)):  # head and body may come in two packets
            answer += chunk
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer, answer
    assert 0.9 < waited < 10, waited


def test_cors_is_answered_for_the_configured_origin_only(limited_url: str) -> None:
    preflight = {"Origin": "https://lab.example.org", "Access-Control-Request-Method": "POST"}
    allowed = httpx.options(f"{limited_url}/v1/predict", headers=preflight)
    assert allowed.headers["access-control-allow-origin"] == "https://lab.example.org"
    other = httpx.options(f"{limited_url}/v1/predict", headers=preflight | {"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    with RunningServer(ServerSettings(port=free_port(), models=())) as default:  # off by default
        answer = httpx.options(f"{default.url}/v1/predict", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
