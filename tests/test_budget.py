"""The measured batch budget (server/engine/budget.py) and the GPU options (server/engine/device_options.py).

On the CPU: the memory model's fit, the sizing arithmetic, the CPU default and --batch-atoms, the shrink after an
out-of-memory error, the budget in /v1/models and /metrics, and every refusal of a GPU option. On a CUDA machine
also the probe itself: the fitted memory model predicts the peak of a batch it was not fitted on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
import torch
from mlipserve.models.cards import ModelCard
from mlipserve.models.graph import build_graph
from mlipserve.models.registry import ModelRegistry
from mlipserve.server.config import DeviceOptions, ServerSettings
from mlipserve.server.engine.batching import DEFAULT_ATOM_BUDGET, BatchPolicy
from mlipserve.server.engine.budget import (
    MAX_ATOMS,
    OOM_SHRINK,
    BatchBudget,
    MemoryModel,
    atoms_within,
    fit_memory,
    measure_budget,
    peak_bytes,
    plan_budget,
    probe_systems,
)
from mlipserve.server.engine.device_options import DeviceOptionError, check_options, load_with_options
from mlipserve.server.engine.loop import Worker
from mlipserve.server.transport.redis.fleet import read_workers

from .conftest import RunningServer, free_port, ready_server, torch_threads, write_card
from .redis_fixtures import RedisServer, WorkerProcess
from .test_graph_and_worker import ListSource, argon_crystal
from .test_graph_and_worker import task as graph_task
from .test_mtp import HEA, HEA_ELEMENTS, potential
from .toy_potential import LennardJonesPotential

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def mtp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_card(folder, "hea-mtp", HEA / "pot.mtp", family="mtp", elements=" ".join(HEA_ELEMENTS), cutoff=5.0)
    return folder


def test_fit_recovers_a_linear_memory_law() -> None:
    rng = np.random.default_rng(0)
    law = MemoryModel(fixed=3e6, per_atom=2.5e3, per_edge=700.0)
    samples = []
    for atoms in rng.integers(100, 5000, size=6):
        edges = int(atoms * rng.uniform(20, 60))
        samples.append((int(atoms), edges, int(law.bytes(atoms, edges) * (1 + 1e-4 * rng.standard_normal()))))
    fitted = fit_memory(samples)
    for name in ("per_atom", "per_edge"):
        assert getattr(fitted, name) == pytest.approx(getattr(law, name), rel=0.02), name
    assert fitted.fixed == pytest.approx(law.fixed, rel=0.1)


def test_fit_drops_negative_coefficients() -> None:
    """Edges proportional to atoms cannot be told apart: no coefficient comes out negative, the sums still fit."""
    samples = [(atoms, 40 * atoms, 1000 * atoms + 30 * 40 * atoms) for atoms in (100, 200, 400)]
    fitted = fit_memory(samples)
    assert min(fitted.fixed, fitted.per_atom, fitted.per_edge) >= 0
    for atoms, edges, measured in samples:
        assert fitted.bytes(atoms, edges) == pytest.approx(measured, rel=1e-6)


def test_atoms_within_fills_the_memory_and_no_more() -> None:
    memory = MemoryModel(fixed=1e8, per_atom=4e3, per_edge=500.0)
    available, edges_per_atom = 4e9, 45.0
    atoms = atoms_within(memory, available, edges_per_atom)
    assert memory.bytes(atoms, atoms * edges_per_atom) <= available
    assert memory.bytes(atoms + 1, (atoms + 1) * edges_per_atom) > available
    assert atoms_within(memory, 1e7, edges_per_atom) == 1  # never below one atom
    assert atoms_within(memory, 1e15, edges_per_atom) == MAX_ATOMS  # nor above the cap


def test_cpu_keeps_its_default_and_the_option_overrides() -> None:
    mtp = potential(HEA / "pot.mtp", HEA_ELEMENTS)
    budget = plan_budget(BatchPolicy(), mtp)
    assert (budget.max_atoms, budget.source) == (DEFAULT_ATOM_BUDGET["cpu"], "default")
    assert plan_budget(BatchPolicy(max_atoms=300), mtp).as_dict() == {"max_atoms": 300, "source": "option"}


def test_out_of_memory_shrinks_below_the_failed_batch() -> None:
    budget = BatchBudget(max_atoms=10_000, source="measured", device="cuda:0", max_edges=400_000, edges_per_atom=40.0)
    shrunk = budget.after_out_of_memory(8000)
    assert shrunk.max_atoms == int(8000 * OOM_SHRINK) < 8000
    assert (shrunk.source, shrunk.max_edges) == ("shrunk", int(8000 * OOM_SHRINK) * 40)
    assert shrunk.after_out_of_memory(20_000) is shrunk  # a failure above the budget changes nothing
    assert budget.after_out_of_memory(1).max_atoms == 1


def test_probe_crystals_use_the_models_elements_and_the_dense_one_has_more_edges() -> None:
    mtp = potential(HEA / "pot.mtp", HEA_ELEMENTS)
    per_atom = []
    for scale in (1.0, 0.9):
        systems = probe_systems(mtp, 256, scale)
        assert sum(s.n_atoms for s in systems) == 256
        assert set(np.concatenate([s.numbers for s in systems])) <= mtp.elements
        per_atom.append(build_graph(systems, mtp.cutoff).n_edges.sum() / 256)
    assert per_atom[1] > 1.2 * per_atom[0]


def test_budget_is_reported_in_models_and_metrics(mtp_dir: Path) -> None:
    for policy, expected in ((BatchPolicy(), {"max_atoms": 128, "source": "default"}),
                             (BatchPolicy(max_atoms=77), {"max_atoms": 77, "source": "option"})):  # fmt: skip
        with ready_server(models=("hea-mtp",), model_dir=mtp_dir, device="cpu", batch=policy) as url:
            models = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
            assert models["hea-mtp"]["workers"][0]["batch_budget"] == expected
            metrics = httpx.get(f"{url}/metrics").text
            assert (
                f'mlipserve_batch_atoms_budget{{model="hea-mtp",worker="embedded-hea-mtp"}} {expected["max_atoms"]}.0'
                in (metrics)
            )


def test_redis_worker_reports_its_budget(mtp_dir: Path, tmp_path: Path) -> None:
    """A standalone worker puts its budget in its heartbeat (so /v1/models in Redis mode) and on its /metrics."""
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    port = free_port()
    worker = WorkerProcess("hea-mtp", redis_server.url, mtp_dir, "--batch-atoms", "96", "--metrics-port", str(port))
    try:
        deadline = time.monotonic() + 60
        while not (workers := asyncio.run(_workers(redis_server.url)).get("hea-mtp")):
            assert time.monotonic() < deadline and worker.process.poll() is None
            time.sleep(0.2)
        assert workers[0]["batch_budget"] == {"max_atoms": 96, "source": "option"}
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'mlipserve_worker_batch_atoms_budget{source="option"} 96.0' in metrics
    finally:
        worker.stop()
        redis_server.stop()


async def _workers(url: str) -> dict:
    client = aioredis.Redis.from_url(url)
    try:
        return await read_workers(client)
    finally:
        await client.aclose()


def card(family: str) -> ModelCard:
    return ModelCard.from_dict(
        {"name": f"a-{family}", "family": family, "version": "1", "checkpoint": "x", "sha256": "0" * 64,
         "license": "MIT", "elements": "Cu", "cutoff": 5.0}, root=Path("."),
    )  # fmt: skip


def test_gpu_options_are_refused_where_they_cannot_apply(mtp_dir: Path) -> None:
    cpu = torch.device("cpu")
    with pytest.raises(DeviceOptionError, match="CUDA devices only"):
        check_options(card("sevennet"), cpu, DeviceOptions(tf32=True))
    with pytest.raises(DeviceOptionError, match="mace and sevennet families, not for a-mtp"):
        check_options(card("mtp"), torch.device("cuda"), DeviceOptions(cueq=True))
    with pytest.raises(DeviceOptionError, match="cuequivariance_torch package, which is not installed"):
        check_options(card("sevennet"), torch.device("cuda"), DeviceOptions(cueq=True))
    check_options(card("mtp"), cpu, DeviceOptions())  # nothing asked, nothing refused
    with pytest.raises(DeviceOptionError, match="no torch module to compile"):
        load_with_options(ModelRegistry(mtp_dir), "hea-mtp", "cpu", DeviceOptions(compile=True))


def test_gpu_options_are_off_by_default_and_set_by_flags() -> None:
    from mlipserve.server.cli import build_parser, device_options

    parser = build_parser()
    assert device_options(parser.parse_args(["worker", "--model", "7net-0"])) == DeviceOptions()
    flags = parser.parse_args(["serve", "--tf32", "--cueq", "--compile"])
    assert device_options(flags) == DeviceOptions(tf32=True, compile=True, cueq=True)


def test_a_refused_option_fails_the_model_with_its_reason(mtp_dir: Path) -> None:
    settings = ServerSettings(
        port=free_port(), models=("hea-mtp",), model_dir=mtp_dir, device="cpu", device_options=DeviceOptions(tf32=True)
    )
    with RunningServer(settings) as running:
        deadline = time.monotonic() + 30
        while True:
            model = next(m for m in httpx.get(f"{running.url}/v1/models").json()["models"] if m["name"] == "hea-mtp")
            if model["state"] != "loading":
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert model["state"] == "failed" and "--tf32 applies to CUDA devices only" in model["error"]


@CUDA
def test_probe_predicts_the_peak_of_an_unseen_batch() -> None:
    mtp = potential(HEA / "pot.mtp", HEA_ELEMENTS, device="cuda")
    budget = measure_budget(mtp)
    assert budget.source == "measured" and budget.memory is not None
    assert budget.memory.per_atom + budget.memory.per_edge * budget.edges_per_atom > 0
    assert budget.max_atoms >= 1 and budget.free_bytes > 0
    systems = probe_systems(mtp, 2048, 0.95)
    edges = int(build_graph(systems, mtp.cutoff).n_edges.sum())
    measured = peak_bytes(mtp, systems)
    assert budget.memory.bytes(2048, edges) == pytest.approx(measured, rel=0.25)
    # a batch of the budget's size (capped to keep the test short) runs
    count = min(budget.max_atoms, 32768)
    mtp.predict(probe_systems(mtp, count, 0.9), checked=True)
    assert dataclasses.asdict(budget.after_out_of_memory(count))["max_atoms"] < count


class OutOfMemoryAbove(LennardJonesPotential):
    """Runs out of device memory, as a GPU would, on any batch of more than ``limit`` atoms."""

    def __init__(self, limit: int) -> None:
        super().__init__(sigma=0.5, epsilon=1.0, rc=1.5)
        self.limit = limit

    def predict_batch(self, systems, properties=()):
        if sum(system.n_atoms for system in systems) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")
        return super().predict_batch(systems, properties)


def test_a_worker_shrinks_its_budget_after_running_out_of_memory() -> None:
    """The failed batch is split and every structure still answered; later batches stay below the failed one."""
    tasks = [graph_task(argon_crystal(seed)) for seed in range(6)]  # 32 atoms each
    source = ListSource(tasks)
    budget = BatchBudget(max_atoms=192, source="measured", device="cuda:0")
    worker = Worker(OutOfMemoryAbove(limit=100), source, BatchPolicy(max_atoms=192, max_wait=0.0), budget=budget)
    while len(source.delivered) < len(tasks):
        worker.step()
    assert all(result.ok for result in source.delivered)
    assert worker.budget is not None and worker.budget.source == "shrunk"
    assert worker.budget.max_atoms == int(192 * OOM_SHRINK) < 192
    assert worker.scheduler.batcher.max_atoms == worker.budget.max_atoms
