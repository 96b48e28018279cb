"""The status page at ``GET /`` in a real headless browser: models, workers, a job's progress bar, recent errors.

Chromium is the system's (Debian package ``chromium``), driven by Playwright without any browser download; the
test is skipped where either is missing.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from ase.build import bulk
from mlipserve.clients.encoding import encode_structure
from mlipserve.server.config import ServerSettings
from mlipserve.server.keys import ApiKey, KeyRing, Scope, hash_secret

from .conftest import SERVED_MODELS, RunningServer, free_port

CHROMIUM = Path(os.environ.get("MLIPSERVE_CHROMIUM", "/usr/bin/chromium"))
#: Where the last test saves a screenshot of the page, for a person to look at (unset: not saved).
SCREENSHOT = os.environ.get("MLIPSERVE_STATUS_PAGE_SCREENSHOT")
#: Structures of the job whose progress bar is watched: 5 chunks of the job runner (64 structures each), about ten
#: seconds of 7net-0 on two CPU cores, so that the page, polling every REFRESH_S, sees the bar at several values.
JOB_STRUCTURES = 320
REFRESH_S = 0.2
TIMEOUT_S = 30.0
#: The job takes about ten seconds alone, several times that on a machine busy with other work.
JOB_TIMEOUT_S = 120.0

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

T = TypeVar("T")


def poll(read: Callable[[], T], accept: Callable[[T], bool], what: str, timeout: float = TIMEOUT_S) -> T:
    """Read until ``accept`` holds; fail with the last value read after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value!r} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def page_url(server: RunningServer) -> str:
    """The page's URL on the session server, refreshing fast enough to see a job's progress."""
    return f"{server.url}/?refresh={REFRESH_S}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, one for the module (Playwright's sync API allows one instance at a time)."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser_page(browser: Any, server: RunningServer) -> Iterator[Any]:
    """A page of its own; after the tests, checks that it loaded nothing but from the server, cleanly."""
    foreign: list[str] = []
    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda request: None if request.url.startswith(server.url) else foreign.append(request.url))
    # a blocked resource, a policy violation or a script error shows up as a console error or a page error
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    page.close()
    assert not foreign, f"the page loaded resources from elsewhere: {foreign}"
    assert not problems, f"the page reported errors: {problems}"


def test_page_is_served_as_html_with_a_strict_policy(page_url: str) -> None:
    response = httpx.get(page_url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "/" not in httpx.get(page_url.split("?")[0] + "openapi.json").json()["paths"]


def test_page_shows_the_models_and_their_workers(browser_page: Any, page_url: str) -> None:
    expect = sync_api.expect
    browser_page.goto(page_url)
    for name in SERVED_MODELS:
        row = browser_page.locator(f'[data-testid="model-row"][data-model="{name}"]')
        expect(row).to_have_attribute("data-state", "ready", timeout=TIMEOUT_S * 1000)
        expect(row.locator('[data-col="workers"]')).to_have_text("1")
    worker = browser_page.locator('[data-testid="worker-row"][data-model="7net-0"]')
    expect(worker).to_have_count(1)
    expect(worker.locator('[data-col="device"]')).to_have_text("cpu")
    expect(browser_page.locator('[data-testid="server-info"]')).to_contain_text("embedded mode")
    expect(browser_page.locator('[data-testid="connection"]')).to_be_empty()


def test_progress_bar_follows_a_job_to_its_end(browser_page: Any, page_url: str, server: RunningServer) -> None:
    browser_page.goto(page_url)
    structures = []
    for i in range(JOB_STRUCTURES):
        atoms = bulk(("Si", "Cu", "Al", "C")[i % 4])
        atoms.rattle(0.03, seed=i)
        structures.append(encode_structure(atoms))
    created = httpx.post(f"{server.url}/v1/jobs", json={"model": "7net-0", "structures": structures}, timeout=60)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    progress = browser_page.locator(f'progress[data-job-id="{job_id}"]')
    row = browser_page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')

    def read() -> tuple[float, float, str]:
        """The bar's value and maximum and the row's state, read at once so that they come from one rendering."""
        if row.count() == 0:  # the page has not fetched since the job was created
            return (-1.0, 0.0, "absent")
        value, maximum, state = row.evaluate(
            "r => [r.querySelector('progress').value, r.querySelector('progress').max, r.dataset.state]"
        )
        return (value, maximum, state)

    first = poll(read, lambda seen: 0 < seen[0] < JOB_STRUCTURES, "progress of a running job", JOB_TIMEOUT_S)
    assert first[1] == JOB_STRUCTURES
    poll(read, lambda seen: seen[0] > first[0], "progress after its first value", JOB_TIMEOUT_S)
    value, maximum, _ = poll(read, lambda seen: seen[2] == "done", "state of the job", JOB_TIMEOUT_S)
    assert value == maximum == JOB_STRUCTURES
    assert row.locator('[data-col="count"]').inner_text() == f"{JOB_STRUCTURES} / {JOB_STRUCTURES}"
    assert row.locator('[data-col="errors"]').inner_text() == "0"
    assert progress.get_attribute("aria-label") == f"job {job_id}: {JOB_STRUCTURES} of {JOB_STRUCTURES} structures done"


def test_recent_errors_list_a_refused_request(browser_page: Any, page_url: str, server: RunningServer) -> None:
    expect = sync_api.expect
    browser_page.goto(page_url)
    # a model name no other test uses, so that the row found is this request's; the markup in it must show as text
    missing = f"<b>no-such-model-{uuid.uuid4().hex[:8]}</b>"
    body = {"model": missing, "structures": [encode_structure(bulk("Si"))]}
    refused = httpx.post(f"{server.url}/v1/predict", json=body)
    assert refused.status_code == 404, refused.text
    row = browser_page.locator('[data-testid="error-row"]').filter(has_text=missing)
    expect(row).to_have_count(1, timeout=TIMEOUT_S * 1000)
    expect(row).to_have_attribute("data-status", "404")
    expect(row).to_have_attribute("data-path", "/v1/predict")
    expect(row.locator('[data-col="code"]')).to_have_text(refused.json()["error"]["code"])
    expect(browser_page.locator('[data-testid="error-row"] b')).to_have_count(0)  # no markup was injected
    if SCREENSHOT:
        browser_page.screenshot(path=SCREENSHOT, full_page=True)


def test_page_asks_for_an_admin_key_where_the_server_has_keys(browser: Any, tmp_path: Path) -> None:
    """/v1/status needs scope admin there: the page shows a key field, and renders once given the key."""
    secret = "mls_status-page-admin"
    keys = tmp_path / "api-keys.yaml"
    KeyRing([ApiKey("ops", hash_secret(secret), frozenset({Scope.ADMIN}))]).save(keys)
    expect = sync_api.expect
    with RunningServer(ServerSettings(port=free_port(), models=(), api_keys=keys)) as keyed:
        page = browser.new_page()  # its 401s are expected: not the checked page of the other tests
        try:
            page.goto(f"{keyed.url}/?refresh={REFRESH_S}")
            expect(page.locator('[data-testid="key-form"]')).to_be_visible(timeout=TIMEOUT_S * 1000)
            expect(page.locator('[data-testid="connection"]')).to_contain_text("401")
            page.locator('[data-testid="key-input"]').fill(secret)
            page.locator('[data-testid="key-form"] button').click()
            expect(page.locator('[data-testid="server-info"]')).to_contain_text("embedded mode")
            expect(page.locator('[data-testid="key-form"]')).to_be_hidden()
            expect(page.locator('[data-testid="connection"]')).to_be_empty()
        finally:
            page.close()
