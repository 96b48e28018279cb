"""The sync and async clients: chunking, order, error indices, retries on 503; and the `mlipserve serve` command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from ase.build import bulk, molecule
from mlipserve.clients import AsyncClient, Client, RequestFailed, StructureFailed
from mlipserve.server.config import ServerSettings

from .conftest import RunningServer, free_port

CLIENT_KINDS = ["sync", "async"]


class Awaiting:
    """An AsyncClient called as a Client (each call run to its end on the client's own event loop), so that one
    test body checks both transports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = AsyncClient(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))

    def __enter__(self) -> Awaiting:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def connect(kind: str, *args: Any, **kwargs: Any) -> Any:
    """A Client, or an AsyncClient behind :class:`Awaiting`."""
    return Client(*args, **kwargs) if kind == "sync" else Awaiting(*args, **kwargs)


def structures_with_a_bad_one() -> list:
    good = [bulk("Si"), bulk("Cu"), molecule("H2O"), bulk("Al"), bulk("C")]
    bad = bulk("Si")
    bad.positions[1] = bad.positions[0]
    return [*good[:3], bad, *good[3:]]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_chunked_requests_keep_order_and_global_error_indices(server_url: str, kind: str) -> None:
    structures = structures_with_a_bad_one()
    with connect(kind, server_url, model="7net-0", chunk_size=2, progress=False) as client:
        results = client.predict(structures, errors="return")
        reference = client.predict([s for i, s in enumerate(structures) if i != 3], errors="raise")
        with pytest.raises(StructureFailed, match="structure 3: atoms 0 and 1") as raised:
            client.predict(structures)
    assert raised.value.index == 3 and raised.value.code == "atoms_too_close"
    assert [r.ok for r in results] == [True, True, True, False, True, True]
    assert results[3].error.index == 3 and results[3].error.message.startswith("structure 3: ")
    good = [r for r in results if r.ok]
    assert [r.energy for r in good] == pytest.approx([r.energy for r in reference], abs=1e-6)


def test_async_client_matches_sync_client(server_url: str) -> None:
    structures = [bulk("Si"), molecule("CH4"), bulk("NaCl", "rocksalt", a=5.6)]

    async def run() -> list:
        async with AsyncClient(server_url, model="chgnet-0.3.0", chunk_size=1, progress=False) as client:
            return await client.predict(structures)

    asynchronous = asyncio.run(run())
    with Client(server_url, model="chgnet-0.3.0", progress=False) as client:
        synchronous = client.predict(structures)
    for a, s in zip(asynchronous, synchronous, strict=True):
        assert a.energy == pytest.approx(s.energy, abs=1e-5)
        np.testing.assert_allclose(a.forces, s.forces, atol=1e-5)


def test_pymatgen_structures_are_accepted(server_url: str) -> None:
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = bulk("GaAs", "zincblende", a=5.65)
    with Client(server_url, model="7net-0", progress=False) as client:
        from_ase = client.predict(atoms)
        from_pymatgen = client.predict(AseAtomsAdaptor.get_structure(atoms))
    assert from_pymatgen.energy == pytest.approx(from_ase.energy, abs=1e-6)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_client_raises_request_failed_for_4xx(server_url: str, kind: str) -> None:
    client = connect(kind, server_url, model="no-such-model", progress=False)
    with client, pytest.raises(RequestFailed) as raised:
        client.predict(bulk("Si"))
    assert raised.value.status == 404 and raised.value.code == "unknown_model"


def test_client_retries_while_the_model_loads(model_dir: Path) -> None:
    settings = ServerSettings(port=free_port(), models=("7net-0",), model_dir=model_dir, device="cpu")
    with RunningServer(settings) as running:
        first = httpx.post(
            f"{running.url}/v1/predict", json={"structures": [{"symbols": ["Si"], "positions": [[0, 0, 0]]}]}
        )
        assert first.status_code == 503 and first.json()["error"]["code"] == "model_loading"
        assert float(first.headers["Retry-After"]) > 0
        assert httpx.get(f"{running.url}/readyz").status_code == 503
        with Client(running.url, progress=False, backoff=0.2) as client:
            result = client.predict(bulk("Si"))
        assert result.energy < 0
        assert httpx.get(f"{running.url}/readyz").status_code == 200


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_unreachable_server_fails_after_retries(kind: str) -> None:
    client = connect(kind, f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01, progress=False)
    with client, pytest.raises(RequestFailed, match="unreachable"):
        client.predict(bulk("Si"))


def test_sync_and_async_clients_agree_on_relaxations_and_jobs(server_url: str) -> None:
    atoms = bulk("HfO2", "fluorite", a=5.1, cubic=True)  # the small `hfo2-cp0` model knows Hf and O
    atoms.rattle(0.1, seed=3)
    structures = [atoms, bulk("HfO2", "fluorite", a=5.0)]
    answers = []
    for kind in CLIENT_KINDS:
        with connect(kind, server_url, model="hfo2-cp0", progress=False) as client:
            relaxed = client.relax(structures, fmax=0.1, relax_cell=False, trajectory_every=5)
            from_job = client.run_job(structures, relax={"fmax": 0.1, "relax_cell": False}, poll=0.05)
            predicted = client.run_job(structures, ["energy"], poll=0.05)
            status = client.job(client.submit_job(structures))
            answers.append((relaxed, from_job, predicted, status))
    (relaxed, from_job, predicted, status), (relaxed_async, from_job_async, predicted_async, status_async) = answers
    for a, b in zip([*relaxed, *from_job], [*relaxed_async, *from_job_async], strict=True):
        assert (a.steps, a.converged, a.stop_reason) == (b.steps, b.converged, b.stop_reason)
        assert len(a.trajectory) == len(b.trajectory)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-6)
    assert [r.energy for r in predicted] == pytest.approx([r.energy for r in predicted_async], abs=1e-6)
    assert predicted[0].forces is None and predicted_async[0].forces is None
    assert status["model"] == status_async["model"] == "hfo2-cp0"


def test_serve_command_starts_a_working_server(model_dir: Path) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "mlipserve.server.cli", "serve", "--port", str(port),
        "--model", "hfo2-cp0", "--model-dir", str(model_dir), "--device", "cpu", "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        with Client(f"http://127.0.0.1:{port}", progress=False) as client:
            deadline = time.monotonic() + 120
            while not client.ready():
                assert process.poll() is None, "mlipserve serve exited"
                assert time.monotonic() < deadline, "mlipserve serve did not become ready"
                time.sleep(0.5)
            models = {m["name"]: m for m in client.models()}
            assert models["hfo2-cp0"]["served"] and models["hfo2-cp0"]["state"] == "ready"
            assert not models["7net-0"]["served"]
            assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200
            assert "/v1/predict" in httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
