"""Timing shared by the benchmarks: a Potential's predictions in batches as a worker forms them."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from mlipserve.models.system import AtomicSystem


def time_batched(potential, systems: Sequence[AtomicSystem], max_atoms: int) -> float:
    """Seconds to predict ``systems`` in order, in batches of at most ``max_atoms`` atoms (after a warm-up)."""
    return predict_batched(potential, systems, max_atoms)[0]


def predict_batched(potential, systems: Sequence[AtomicSystem], max_atoms: int) -> tuple[float, list[float]]:
    """Seconds to predict ``systems`` in batches of at most ``max_atoms`` atoms (after a warm-up), and the energies."""
    potential.predict(systems[:4])
    energies: list[float] = []
    start = time.perf_counter()
    batch: list[AtomicSystem] = []
    atoms_in_batch = 0
    for system in systems:
        if batch and atoms_in_batch + system.n_atoms > max_atoms:
            energies += [prediction.energy for prediction in potential.predict(batch)]
            batch, atoms_in_batch = [], 0
        batch.append(system)
        atoms_in_batch += system.n_atoms
    energies += [prediction.energy for prediction in potential.predict(batch)]
    if potential.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, energies


def time_served(url: str, model: str, structures: Sequence) -> float:
    """Seconds for the Python client to predict ``structures`` on the server at ``url`` (16 per request, 8 in
    flight), after waiting for it to be ready and a warm-up."""
    from mlipserve.clients import Client

    with Client(url, model=model, chunk_size=16, concurrency=8, progress=False) as client:
        client.wait_until_ready(300)
        client.predict(list(structures[:4]))
        start = time.perf_counter()
        client.predict(list(structures))
        return time.perf_counter() - start
