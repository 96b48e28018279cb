"""API keys: scopes (401/403), rates and job slots (429) enforced across API replicas through Redis, jobs seen only
by their key, operators' routes behind `admin`, the keys file and its command, and the clients' keys."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from ase.build import bulk
from mlipserve.clients import Client, RequestFailed
from mlipserve.clients.encoding import encode_structure
from mlipserve.server.config import ServerSettings
from mlipserve.server.keys import ApiKey, KeyRing, Scope, hash_secret

from .conftest import RunningServer, free_port
from .redis_fixtures import RedisServer

SECRETS = {
    "screener": "mls_screener-secret-0001",
    "other": "mls_other-secret-0002",
    "relaxer": "mls_relaxer-secret-0003",
    "ops": "mls_ops-secret-0004",
    "slow": "mls_slow-secret-0005",
}
KEYS = [
    ApiKey("screener", hash_secret(SECRETS["screener"]), frozenset({Scope.PREDICT, Scope.JOBS}), max_jobs=1),
    ApiKey("other", hash_secret(SECRETS["other"]), frozenset({Scope.JOBS})),
    ApiKey("relaxer", hash_secret(SECRETS["relaxer"]), frozenset({Scope.RELAX})),
    ApiKey("ops", hash_secret(SECRETS["ops"]), frozenset({Scope.ADMIN})),
    ApiKey("slow", hash_secret(SECRETS["slow"]), frozenset({Scope.PREDICT}), rate=2),
]
SILICON = encode_structure(bulk("Si"))


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[name]}"}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys.yaml"
    KeyRing(KEYS).save(path)
    return path


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, keys_file: Path) -> Iterator[tuple[str, str]]:
    """Two API replicas on a Redis of their own, with the keys file, and no worker: their work waits in the queue
    (``scale_from_zero``), which is all these tests need."""
    own = RedisServer(tmp_path_factory.mktemp("redis-keys"))
    own.start()
    settings = {"models": ("7net-0",), "redis_url": own.url, "api_keys": keys_file, "scale_from_zero": True}
    servers = [RunningServer(ServerSettings(port=free_port(), **settings)) for _ in range(2)]
    try:
        with servers[0] as first, servers[1] as second:
            yield first.url, second.url
    finally:
        own.stop()


def test_the_keys_file_holds_hashes_only(keys_file: Path) -> None:
    text = keys_file.read_text()
    assert not any(secret in text for secret in SECRETS.values())
    entries = yaml.safe_load(text)["keys"]
    assert entries[0] == {"name": "screener", "sha256": KEYS[0].sha256, "scopes": ["jobs", "predict"], "max_jobs": 1}


def test_refusals_name_the_problem(replicas: tuple[str, str]) -> None:
    url, _ = replicas
    body = {"structures": [SILICON]}
    missing = httpx.post(f"{url}/v1/predict", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    unknown = httpx.post(f"{url}/v1/predict", json=body, headers={"Authorization": "Bearer mls_guess"})
    assert unknown.status_code == 401 and "not one this server accepts" in unknown.json()["error"]["message"]
    wrong_scope = httpx.post(f"{url}/v1/predict", json=body, headers=auth("relaxer"))
    assert wrong_scope.status_code == 403 and wrong_scope.json()["error"]["code"] == "forbidden"
    assert "needs scope 'predict'" in wrong_scope.json()["error"]["message"]
    for path in ("/metrics", "/v1/status"):  # operators' routes need admin
        assert httpx.get(f"{url}{path}").status_code == 401
        assert httpx.get(f"{url}{path}", headers=auth("screener")).status_code == 403
        assert httpx.get(f"{url}{path}", headers=auth("ops")).status_code == 200
    for path in ("/healthz", "/", "/openapi.json"):  # probes, the page's static HTML and the docs stay open
        assert httpx.get(f"{url}{path}").status_code == 200, path
    schemes = httpx.get(f"{url}/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    latest = httpx.get(f"{url}/v1/status", headers=auth("ops")).json()["recent_errors"][0]
    assert (latest["status"], latest["code"]) == (403, "forbidden")


def test_a_rate_holds_across_replicas(replicas: tuple[str, str]) -> None:
    """Key `slow` may make 2 requests a second in all, whichever replica answers them."""
    answers, started = [], time.time()
    for attempt in range(8):
        answers.append(httpx.get(f"{replicas[attempt % 2]}/v1/models", headers=auth("slow")))
    windows = int(time.time()) - int(started) + 1  # one-second windows the burst spanned
    allowed = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(allowed) <= 2 * windows and len(allowed) + len(refused) == 8
    assert refused[0].json()["error"]["code"] == "rate_limited"
    assert 0 < float(refused[0].headers["retry-after"]) <= 1
    time.sleep(float(refused[-1].headers["retry-after"]) + 0.25)  # the margin covers the replicas' clock reads
    assert httpx.get(f"{replicas[0]}/v1/models", headers=auth("slow")).status_code == 200


def test_job_slots_and_visibility_hold_across_replicas(replicas: tuple[str, str]) -> None:
    first, second = replicas
    body = {"structures": [SILICON] * 3}  # no worker: the job waits, holding its slot
    created = httpx.post(f"{first}/v1/jobs", json=body, headers=auth("screener"))
    assert created.status_code == 202
    job_id = created.json()["id"]
    refused = httpx.post(f"{second}/v1/jobs", json=body, headers=auth("screener"))  # its one slot is taken
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_jobs"
    assert "Retry-After" in refused.headers
    assert httpx.get(f"{first}/v1/jobs/{job_id}", headers=auth("screener")).status_code == 200
    hidden = httpx.get(f"{first}/v1/jobs/{job_id}", headers=auth("other"))
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "unknown_job"  # as if it did not exist
    assert httpx.get(f"{first}/v1/jobs/{job_id}", headers=auth("ops")).status_code == 200  # admin sees all
    assert httpx.delete(f"{first}/v1/jobs/{job_id}", headers=auth("other")).status_code == 404
    assert httpx.delete(f"{first}/v1/jobs/{job_id}", headers=auth("screener")).json()["state"] == "cancelled"
    deadline = time.monotonic() + 10
    while (again := httpx.post(f"{second}/v1/jobs", json=body, headers=auth("screener"))).status_code == 429:
        assert time.monotonic() < deadline, "the cancelled job's slot was not freed"
        time.sleep(0.1)
    assert again.status_code == 202
    httpx.delete(f"{second}/v1/jobs/{again.json()['id']}", headers=auth("screener"))


def test_clients_send_their_key(replicas: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = replicas
    with Client(url, api_key=SECRETS["other"], progress=False) as client:
        assert client.models()
        assert SECRETS["other"] not in repr(client.settings)  # never printed
    monkeypatch.setenv("MLIPSERVE_API_KEY", SECRETS["ops"])
    with Client(url, progress=False) as client:
        assert client.models()
    monkeypatch.delenv("MLIPSERVE_API_KEY")
    with Client(url, progress=False, retries=0) as client, pytest.raises(RequestFailed) as refused:
        client.models()
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")


def test_keys_command_makes_lists_and_removes_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    made = _cli("keys", "add", "alice", "--file", str(path), "--scopes", "predict,jobs", "--rate", "5")
    secret = made.stdout.strip()
    assert secret.startswith("mls_") and secret not in path.read_text()
    (key,) = KeyRing.load(path).keys
    assert (key.name, key.scopes, key.rate) == ("alice", {Scope.PREDICT, Scope.JOBS}, 5.0)
    assert KeyRing.load(path).identify(secret) == key
    assert "alice" in _cli("keys", "list", "--file", str(path)).stdout
    assert _cli("keys", "add", "alice", "--file", str(path), check=False).returncode == 1  # names are unique
    _cli("keys", "remove", "alice", "--file", str(path))
    assert KeyRing.load(path).keys == []


def test_serve_refuses_an_open_api_beyond_loopback_and_a_bad_keys_file(tmp_path: Path) -> None:
    open_api = _cli("serve", "--host", "0.0.0.0", "--redis", "redis://127.0.0.1:1/0", check=False)
    assert open_api.returncode != 0 and "--insecure" in open_api.stderr and "--api-keys" in open_api.stderr
    broken = tmp_path / "keys.yaml"
    broken.write_text("keys:\n  - name: x\n    sha256: not-a-hash\n    scopes: [predict]\n")
    bad = _cli("serve", "--api-keys", str(broken), "--redis", "redis://127.0.0.1:1/0", check=False)
    assert bad.returncode != 0 and "key 'x'" in bad.stderr and "64 hex digits" in bad.stderr


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "mlipserve.server.cli", *args], capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stderr
    return done
