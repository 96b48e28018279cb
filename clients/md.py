"""Molecular dynamics on the server (``POST /v1/md?format=ndjson``): ``Client.md`` and the :class:`MDResult` it returns.

A list is split into concurrent requests as relaxations are (:mod:`.relaxing`); each request streams its frames as
the server records them, so the progress bar moves by MD steps. Velocities travel in Å/fs; ase.Atoms hold them in
ASE's units (Å per ``ase.units`` time), converted with ``ase.units.fs``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson

from ..errors import ErrorCode
from ..protocol import IntegratorName, MDOptions, MDStopReason
from . import relaxing
from .effects import Call, Gather, Open, Plan, ReadLine, Reply, Sleep
from .encoding import Chunk, as_list
from .errors import RequestFailed
from .options import ErrorMode, StructureLike
from .progress import progress_bar
from .relaxing import FixedAtoms
from .results import Result, collect
from .retrying import failure, retry_delay

if TYPE_CHECKING:
    from tqdm import tqdm

    from .planner import Planner

MR = TypeVar("MR", bound="MDResult")
#: Each structure's velocities, N×3 in Å/fs, or None (the server draws them at ``temperature_K``, or starts at rest).
Velocities = Sequence[Any | None]


@dataclass
class MDResult(Result):
    """One structure's MD run: the final state (``energy``, ``forces``, ``stress`` of its last step), the recorded
    frames and how it ended. ``error`` is set (and the rest None) when the server could not run it."""

    #: The final structure: velocities set (ASE units), energy/forces/stress on a SinglePointCalculator.
    atoms: Any = None
    #: Recorded frames (``trajectory_every``), by step: ase.Atoms with velocities, ``info`` step, time_fs,
    #: temperature and kinetic_energy, the potential energy (and stress) on a SinglePointCalculator.
    trajectory: list[Any] = field(default_factory=list)
    steps: int | None = None
    stop_reason: MDStopReason | None = None
    seed: int | None = None
    time_fs: float | None = None
    #: Of the final state: K and eV.
    temperature: float | None = None
    kinetic_energy: float | None = None
    #: The final velocities, Å/fs.
    velocities: np.ndarray | None = None

    @property
    def temperatures(self) -> np.ndarray:
        """K, per recorded frame."""
        return self._series("temperature")

    @property
    def energies(self) -> np.ndarray:
        """Potential energy, eV, per recorded frame."""
        return np.array([image.get_potential_energy() for image in self.trajectory], dtype=np.float64)

    @property
    def kinetic_energies(self) -> np.ndarray:
        """eV, per recorded frame."""
        return self._series("kinetic_energy")

    @property
    def times_fs(self) -> np.ndarray:
        """fs, per recorded frame."""
        return self._series("time_fs")

    def write(self, path: str | Path) -> None:
        """Write the recorded frames, then the final state (info ``stop_reason``, ``seed``), as extended XYZ."""
        from ase.io import write

        write(path, self.frames(), format="extxyz")

    def frames(self) -> list[Any]:
        """The recorded frames and the final state, as :meth:`write` writes them."""
        if self.atoms is None:
            return []
        final = self.atoms.copy()
        final.calc = self.atoms.calc
        final.info.update(
            step=self.steps,
            time_fs=self.time_fs,
            temperature=self.temperature,
            kinetic_energy=self.kinetic_energy,
            stop_reason=self.stop_reason,
            seed=self.seed,
            final=True,
        )
        return [*self.trajectory, final]

    def _series(self, key: str) -> np.ndarray:
        return np.array([image.info[key] for image in self.trajectory], dtype=np.float64)

    @classmethod
    def from_entry(cls: type[MR], local_index: int, offset: int, entry: dict[str, Any], model: dict[str, Any]) -> MR:
        """Decode a ``/v1/md`` result entry; its ``trajectory`` holds the frames (the ndjson ones gathered)."""
        base = Result.from_entry(local_index, offset, entry, model)
        result = cls(**{name: getattr(base, name) for name in Result.__dataclass_fields__})
        if base.error is not None:
            return result
        from ase.calculators.singlepoint import SinglePointCalculator

        structure = entry["structure"]
        velocities = np.asarray(entry["velocities"], dtype=np.float64)
        atoms = _atoms(structure["numbers"], structure["positions"], structure["cell"], structure["pbc"], velocities)
        properties = {"energy": base.energy, "forces": base.forces}
        if base.stress is not None:
            properties["stress"] = base.stress_voigt
        atoms.calc = SinglePointCalculator(atoms, **properties)
        result.atoms, result.velocities = atoms, velocities
        result.steps, result.stop_reason, result.seed = entry["steps"], entry["stop_reason"], entry["seed"]
        result.time_fs, result.temperature = entry["time_fs"], entry["temperature"]
        result.kinetic_energy = entry["kinetic_energy"]
        result.trajectory = [_frame_atoms(atoms, frame) for frame in unique_frames(entry.get("trajectory") or [])]
        return result


def md(
    planner: Planner,
    structures: StructureLike | Sequence[StructureLike],
    *,
    integrator: IntegratorName = MDOptions.integrator,
    timestep_fs: float = MDOptions.timestep_fs,
    steps: int = MDOptions.steps,
    temperature_K: float | None = MDOptions.temperature_K,
    velocities: Velocities | None = None,
    fixed: FixedAtoms | None = None,
    model: str | None = None,
    errors: ErrorMode = "raise",
    progress: bool | None = None,
    **options: Any,
) -> Plan[Any]:
    """Run molecular dynamics on one structure or a list, on the server; :class:`MDResult` objects in input order.

    ``options`` are the other :class:`~mlipserve.protocol.MDOptions` fields (``trajectory_every``, ``seed``,
    ``pressure``, ``friction_per_fs``, ``thermostat_time_fs``, ``max_grade``...). Structure ``i`` of the list runs
    with seed ``seed + i``. ``velocities`` gives each structure's starting velocities in Å/fs (or None); by default
    an ase.Atoms with nonzero momenta starts from its own velocities, the others from a Maxwell–Boltzmann
    distribution at ``temperature_K`` (at rest without one). ``fixed`` gives each structure's fixed atoms; by
    default those of its ase FixAtoms constraints. The progress bar counts MD steps as recorded frames arrive.
    """
    chosen = MDOptions.of(
        {"integrator": integrator, "timestep_fs": timestep_fs, "steps": steps, "temperature_K": temperature_K} | options
    )
    single, items = as_list(structures)
    if single and velocities is not None and np.ndim(np.asarray(velocities, dtype=object)) == 2:
        velocities = [velocities]
    relaxing.check_fixed(items, fixed)
    starts = velocity_lists(items, velocities)
    fixed_atoms = relaxing.fixed_lists(items, fixed)
    chunks = relaxing.relax_chunks(items, planner.settings.chunk_size, planner.settings.chunk_atoms)
    bar = progress_bar(planner.settings, chosen.steps * len(items), progress)
    bar.unit = "step"
    with bar:
        plans = [
            streamed_run(planner, chunk, md_body(chunk, chosen, starts, fixed_atoms, planner._model(model)), bar)
            for chunk in chunks
        ]
        payloads = yield Gather(plans, relaxing.RELAX_CONCURRENCY)
    results = collect(chunks, payloads, errors, MDResult)
    return results[0] if single else results


def velocity_lists(structures: Sequence[Any], velocities: Velocities | None) -> list[list[list[float]] | None]:
    """Each structure's starting velocities in Å/fs: from ``velocities`` when given, else an ase.Atoms' own."""
    if velocities is None:
        return [ase_velocities(s) for s in structures]
    if len(velocities) != len(structures):
        raise ValueError(f"velocities has {len(velocities)} entries for {len(structures)} structures")
    return [None if v is None else np.asarray(v, dtype=np.float64).tolist() for v in velocities]


def ase_velocities(structure: Any) -> list[list[float]] | None:
    """An ase.Atoms' velocities in Å/fs, or None when it has no momenta or they are all zero (then the server
    draws velocities at ``temperature_K``, or starts at rest without one, as for zero velocities)."""
    from ase import units

    if not (hasattr(structure, "has") and structure.has("momenta")):
        return None
    velocities = structure.get_velocities() * units.fs
    return velocities.tolist() if np.any(velocities) else None


def md_body(
    chunk: Chunk,
    options: MDOptions,
    velocities: list[list[list[float]] | None],
    fixed: list[list[int] | None],
    model: str | None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/md`` for one chunk; ``velocities`` and ``fixed`` hold every structure's. The
    seed is shifted by the chunk's start, so that structure ``i`` of the whole list runs with ``seed + i``."""
    start, structures = chunk
    body: dict[str, Any] = {"structures": structures, **options.request()}
    if options.seed is not None:
        body["seed"] = options.seed + start
    for name, values in (("velocities", velocities), ("fixed", fixed)):
        part = values[start : start + len(structures)]
        if any(value is not None for value in part):
            body[name] = part
    if model:
        body["model"] = model
    return body


def streamed_run(planner: Planner, chunk: Chunk, body: dict[str, Any], bar: tqdm) -> Plan[dict[str, Any]]:
    """One ``/v1/md`` request read as NDJSON: the bar moves by each structure's steps as its frames and result
    arrive. Its value is the answer as ``format=json`` gives it: ``{"model", "results"}`` with each result's
    ``trajectory``. Busy or unreachable servers are retried until the stream opens; a stream that breaks after
    that raises :class:`RequestFailed` (the runs would start again)."""
    call = Call("POST", "/v1/md", None, json=body, params={"format": "ndjson"})  # no timeout: MD takes long
    yield from _opened(planner, call)
    count, steps = len(chunk[1]), body["steps"]
    entries: list[dict[str, Any] | None] = [None] * count
    frames: list[list[dict[str, Any]]] = [[] for _ in range(count)]
    shown = [0] * count
    model: dict[str, Any] | None = None

    def advance(index: int, step: int) -> None:
        if (moved := min(step, steps) - shown[index]) > 0:
            bar.update(moved)
            shown[index] += moved

    while isinstance(line := (yield ReadLine()), str):
        if not line:
            continue
        message = orjson.loads(line)
        kind = message.get("type")
        if kind == "frame":
            frames[message["index"]].append(message["frame"])
            advance(message["index"], message["frame"]["step"])
        elif kind == "result":
            entries[message["index"]] = message["result"]
            advance(message["index"], steps)
        elif kind == "done":
            model = message.get("model") or {}
        elif "error" in message:  # the server gave up on the whole request mid-stream
            error = message["error"]
            raise RequestFailed(None, error.get("code", ErrorCode.HTTP_ERROR), error.get("message", str(error)))
    if isinstance(line, Reply):
        raise failure(planner.settings, line) from line.error
    results = [
        entry if entry is None or "error" in entry else entry | {"trajectory": frames[i]}
        for i, entry in enumerate(entries)
    ]
    missing = [chunk[0] + i for i, entry in enumerate(results) if entry is None]
    if model is None or missing:
        message = f"the MD stream of /v1/md ended early: no result for structures {missing}"
        raise RequestFailed(None, ErrorCode.HTTP_ERROR, message)
    return {"model": model, "results": results}


def unique_frames(frames: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One frame per step (a resumed run repeats some; the last one told wins), sorted by step."""
    return sorted({frame["step"]: frame for frame in frames}.values(), key=lambda frame: frame["step"])


def _opened(planner: Planner, call: Call) -> Plan[None]:
    """Open ``call`` as a stream, retrying as a request is retried."""
    for attempt in itertools.count():
        reply: Reply = yield Open(call)
        if reply.ok:
            return
        delay = retry_delay(planner.settings, attempt, reply)
        if delay is None:
            raise failure(planner.settings, reply) from reply.error
        yield Sleep(delay)


def _atoms(numbers: Any, positions: Any, cell: Any, pbc: Any, velocities: np.ndarray) -> Any:
    """An ase.Atoms with ``velocities`` (Å/fs) set in ASE's units."""
    from ase import Atoms, units

    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    atoms.set_velocities(velocities / units.fs)
    return atoms


def _frame_atoms(final: Any, frame: dict[str, Any]) -> Any:
    """One recorded frame as an ase.Atoms (the final structure's species and pbc)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    velocities = np.asarray(frame["velocities"], dtype=np.float64)
    atoms = _atoms(final.numbers, frame["positions"], frame["cell"], final.pbc, velocities)
    atoms.info.update(
        step=frame["step"],
        time_fs=frame["time_fs"],
        temperature=frame["temperature"],
        kinetic_energy=frame["kinetic_energy"],
    )
    properties: dict[str, Any] = {"energy": frame["energy"]}
    if frame.get("stress") is not None:
        s = np.asarray(frame["stress"], dtype=np.float64)
        properties["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    atoms.calc = SinglePointCalculator(atoms, **properties)
    return atoms
