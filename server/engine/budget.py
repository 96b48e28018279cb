"""The batch budget of a worker: how many atoms (and edges) one batch may hold, measured on the model's device.

On a GPU the budget is measured at start-up, as vLLM sizes its KV cache: the model runs energies, forces and
stresses on a few probe batches of representative crystals, the peak memory each one takes above what the loaded
model holds is fitted as ``fixed + per_atom * atoms + per_edge * edges``, and the budget is the number of atoms whose
batch fits in ``fraction`` of the device's free memory at a dense crystal's edges per atom. After an out-of-memory
error the budget shrinks below the batch that failed (:meth:`BatchBudget.after_out_of_memory`).

On the CPU memory is rarely the limit, cache is: batches much larger than a few structures run slower per atom
(benchmarks/README.md), so the CPU keeps its measured constant (``DEFAULT_ATOM_BUDGET``). ``--batch-atoms``
overrides either. Every budget says where it came from, for ``/v1/models`` and the metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from ase.build import bulk
from ase.data import atomic_numbers, chemical_symbols

from ...models.graph import build_graph
from ...models.potential import Potential
from ...models.prediction import ALL_PROPERTIES
from ...models.system import AtomicSystem
from .batching import DEFAULT_ATOM_BUDGET, BatchPolicy

log = logging.getLogger(__name__)

#: Share of the free device memory a batch may take: the rest absorbs the allocator's fragmentation and batches
#: denser than the probes.
DEFAULT_FRACTION = 0.8
#: Atoms in the probe batches (copies of a 32-atom cell), and the lattice scales of the two densities probed.
PROBE_ATOMS = (1024, 4096)
PROBE_SCALES = (1.0, 0.9)
#: The largest budget set, whatever the memory: beyond it batches gain nothing and a failed one costs much.
MAX_ATOMS = 1 << 20
#: After an out-of-memory error, the budget becomes this share of the batch that failed.
OOM_SHRINK = 0.7

Source = Literal["measured", "default", "option", "shrunk"]


@dataclass(frozen=True)
class MemoryModel:
    """Peak device memory of one forward and backward pass, in bytes: ``fixed + per_atom * N + per_edge * E``."""

    fixed: float
    per_atom: float
    per_edge: float

    def bytes(self, atoms: float, edges: float) -> float:
        return self.fixed + self.per_atom * atoms + self.per_edge * edges


@dataclass(frozen=True)
class BatchBudget:
    """A worker's batch budget and how it was chosen."""

    max_atoms: int
    #: ``"measured"`` on a GPU, ``"default"`` (the device's constant), ``"option"`` (--batch-atoms), or
    #: ``"shrunk"`` after an out-of-memory error.
    source: Source
    device: str
    #: Edges the budget allows at ``edges_per_atom`` (measured budgets only).
    max_edges: int | None = None
    edges_per_atom: float | None = None
    memory: MemoryModel | None = None
    free_bytes: int | None = None
    fraction: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The budget as a JSON object (``/v1/models``' workers, heartbeats)."""
        out: dict[str, Any] = {"max_atoms": self.max_atoms, "source": self.source}
        if self.max_edges is not None:
            out["max_edges"] = self.max_edges
        if self.memory is not None:
            out["bytes_per_atom"] = round(self.memory.per_atom, 1)
            out["bytes_per_edge"] = round(self.memory.per_edge, 1)
        if self.free_bytes is not None:
            out["free_bytes"] = self.free_bytes
            out["fraction"] = self.fraction
        return out

    def after_out_of_memory(self, failed_atoms: int) -> BatchBudget:
        """The budget after a batch of ``failed_atoms`` atoms ran out of memory: below that batch, at least 1."""
        shrunk = max(1, min(self.max_atoms, int(failed_atoms * OOM_SHRINK)))
        if shrunk == self.max_atoms:
            return self
        log.warning(
            "a batch of %d atoms ran out of memory: batch budget %d -> %d", failed_atoms, self.max_atoms, shrunk
        )
        edges = None if self.edges_per_atom is None else int(shrunk * self.edges_per_atom)
        return dataclasses.replace(self, max_atoms=shrunk, source="shrunk", max_edges=edges)


def plan_budget(policy: BatchPolicy, potential: Potential, fraction: float = DEFAULT_FRACTION) -> BatchBudget:
    """The budget for ``potential``: ``policy.max_atoms`` if set, measured on a GPU, else the device's default."""
    device = potential.device
    if policy.max_atoms is not None:
        return BatchBudget(policy.max_atoms, "option", str(device))
    if device.type == "cuda":
        try:
            return measure_budget(potential, fraction)
        except Exception as error:  # a worker that cannot probe still serves, with the default budget
            torch.cuda.empty_cache()
            log.warning("could not measure the batch budget (%r); using the default", error)
    default = DEFAULT_ATOM_BUDGET.get(device.type, DEFAULT_ATOM_BUDGET["cpu"])
    return BatchBudget(default, "default", str(device))


def budgeted_policy(
    policy: BatchPolicy, potential: Potential, fraction: float = DEFAULT_FRACTION
) -> tuple[BatchPolicy, BatchBudget]:
    """``policy`` with its atom budget planned for ``potential``, and that budget.

    Models sharing a device should split ``fraction`` between them: each probe sees the memory free at its start.
    """
    budget = plan_budget(policy, potential, fraction)
    log.info("batch budget of %s on %s: %s", potential.card.name, potential.device, budget.as_dict())
    return dataclasses.replace(policy, max_atoms=budget.max_atoms), budget


def measure_budget(potential: Potential, fraction: float = DEFAULT_FRACTION) -> BatchBudget:
    """Probe ``potential``'s memory on its CUDA device and size the budget to ``fraction`` of the free memory."""
    device = potential.device
    probes = [(atoms, PROBE_SCALES[0]) for atoms in PROBE_ATOMS] + [(PROBE_ATOMS[-1], PROBE_SCALES[1])]
    samples = []
    for atoms, scale in probes:
        systems = probe_systems(potential, atoms, scale)
        edges = int(build_graph(systems, potential.cutoff).n_edges.sum())
        samples.append((sum(s.n_atoms for s in systems), edges, peak_bytes(potential, systems)))
    memory = fit_memory(samples)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    edges_per_atom = max(edges / atoms for atoms, edges, _ in samples)
    max_atoms = atoms_within(memory, fraction * free, edges_per_atom)
    return BatchBudget(
        max_atoms=max_atoms,
        source="measured",
        device=str(device),
        max_edges=int(max_atoms * edges_per_atom),
        edges_per_atom=edges_per_atom,
        memory=memory,
        free_bytes=int(free),
        fraction=fraction,
    )


def atoms_within(memory: MemoryModel, available: float, edges_per_atom: float) -> int:
    """The most atoms whose batch, at ``edges_per_atom``, ``memory`` says fits in ``available`` bytes."""
    per_atom = memory.per_atom + memory.per_edge * edges_per_atom
    if per_atom <= 0:
        return MAX_ATOMS
    return int(min(MAX_ATOMS, max(1.0, (available - memory.fixed) / per_atom)))


def fit_memory(samples: Sequence[tuple[int, int, int]]) -> MemoryModel:
    """Least-squares ``fixed + per_atom * atoms + per_edge * edges`` through ``(atoms, edges, bytes)`` samples.

    Coefficients come out non-negative: a negative one (noise, or edges proportional to atoms in every sample)
    is dropped and the rest refitted.
    """
    data = np.asarray(samples, dtype=float)
    columns = {"fixed": np.ones(len(data)), "per_atom": data[:, 0], "per_edge": data[:, 1]}
    kept = list(columns)
    while True:
        matrix = np.stack([columns[name] for name in kept], axis=1)
        solution, *_ = np.linalg.lstsq(matrix, data[:, 2], rcond=None)
        fitted = dict(zip(kept, solution.tolist(), strict=True))
        negative = [name for name in kept if fitted[name] < 0]
        if not negative:
            break
        kept.remove(min(negative, key=lambda name: fitted[name]))
        if not kept:
            fitted = {}
            break
    return MemoryModel(**{name: fitted.get(name, 0.0) for name in columns})


def peak_bytes(potential: Potential, systems: Sequence[AtomicSystem]) -> int:
    """Peak CUDA memory of one prediction of ``systems`` (energy, forces, stress) above what was held before it."""
    device = potential.device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    potential.predict(list(systems), ALL_PROPERTIES, checked=True)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def probe_systems(potential: Potential, atoms: int, scale: float = 1.0, cell_atoms: int = 32) -> list[AtomicSystem]:
    """``atoms // cell_atoms`` rattled fcc cells of ``cell_atoms`` atoms of the potential's elements.

    The nearest-neighbour distance is 2.55 Å (copper's) times ``scale``: a dense metal, so edges per atom are
    at the high end of what crystals bring.
    """
    elements = sorted(potential.elements)
    preferred = [z for z in elements if chemical_symbols[z] in ("Cu", "Ni", "Al", "Fe", "Si")]
    symbols = [chemical_symbols[z] for z in (preferred or elements)[:2]]
    rng = np.random.default_rng(0)
    cell = bulk("Cu", "fcc", a=2.55 * np.sqrt(2) * scale, cubic=True) * (2, 2, 2)
    systems = []
    for _ in range(max(1, atoms // cell_atoms)):
        copy = cell.copy()
        copy.numbers = [atomic_numbers[s] for s in rng.choice(symbols, len(copy))]
        copy.rattle(0.05, seed=int(rng.integers(1 << 30)))
        systems.append(AtomicSystem.from_ase(copy))
    return systems
