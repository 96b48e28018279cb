"""Minimum-energy paths on the server (``POST /v1/neb``): ``Client.neb``, ``Client.neb_many`` and :class:`NEBResult`.

Many paths are split into concurrent requests as relaxations are (:mod:`.relaxing`), so the server optimises them
in one batch; the progress bar counts paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..protocol import NEBOptions, NEBStopReason
from . import relaxing
from .effects import Call, Gather, Plan
from .encoding import Chunk, encode_structure
from .options import ErrorMode, StructureLike
from .progress import progress_bar
from .relaxing import FixedAtoms
from .results import Result, collect
from .retrying import request

if TYPE_CHECKING:
    from .planner import Planner

NR = TypeVar("NR", bound="NEBResult")
#: ``(initial, final)`` or ``(initial, final, intermediates)``: the end points and optionally the images between.
PathLike = tuple[StructureLike, StructureLike] | tuple[StructureLike, StructureLike, Sequence[StructureLike] | None]


@dataclass
class NEBResult(Result):
    """One path's nudged elastic band: every image (end points included) with its energy, and the barrier.

    ``energy`` and ``forces`` are the saddle image's (the highest). ``error`` is set (the rest None) when the server
    could not run it.
    """

    #: ase.Atoms, end points included, each with its energy on a SinglePointCalculator (the saddle: forces too).
    images: list[Any] = field(default_factory=list)
    #: eV, per image.
    energies: np.ndarray | None = None
    #: The largest NEB force on each image at the end, eV/Å.
    image_fmax: np.ndarray | None = None
    #: The highest energy above the initial image, and above the final one, eV.
    barrier: float | None = None
    barrier_backward: float | None = None
    saddle_index: int | None = None
    steps: int | None = None
    converged: bool | None = None
    stop_reason: NEBStopReason | None = None
    fmax: float | None = None

    @property
    def saddle(self) -> Any:
        """The highest image (the climbing image's saddle-point estimate)."""
        return None if self.saddle_index is None else self.images[self.saddle_index]

    @property
    def distances(self) -> np.ndarray:
        """Each image's distance along the path from the initial image, Å (minimum images across periodic cells)."""
        from ase.geometry import find_mic

        lengths = [0.0]
        for before, image in zip(self.images, self.images[1:], strict=False):
            step = image.positions - before.positions
            if image.pbc.any():
                step = find_mic(step, image.cell, image.pbc)[0]
            lengths.append(float(np.linalg.norm(step)))
        return np.cumsum(lengths)

    def write(self, path: str | Path) -> None:
        """Write the images as extended XYZ (info: ``image``, ``energy``; the saddle also ``saddle=True``)."""
        from ase.io import write

        write(path, self.images, format="extxyz")

    def plot(self, path: str | Path | None = None, ax: Any = None) -> Any:
        """The energy profile: each image's energy above the initial one against its distance along the path, with
        the forward barrier marked. Drawn on ``ax`` (a matplotlib Axes) or a new figure; saved to ``path`` if
        given. Returns the Axes."""
        try:
            from matplotlib.figure import Figure
        except ModuleNotFoundError as error:
            raise ImportError("NEBResult.plot needs matplotlib: pip install matplotlib") from error
        if self.energies is None or self.saddle_index is None:
            raise ValueError(f"no profile to plot: the path failed ({self.error})")
        if ax is None:
            if path is None:
                import matplotlib.pyplot as plt

                ax = plt.figure().add_subplot()
            else:  # no GUI backend needed to write a file
                ax = Figure().add_subplot()
        distances, relative = self.distances, self.energies - self.energies[0]
        ax.plot(distances, relative, "o-", color="C0")
        top = self.saddle_index
        ax.plot([distances[top]], [relative[top]], "o", color="C3", label="saddle")
        ax.annotate(
            "",
            xy=(distances[top], relative[top]),
            xytext=(distances[top], 0.0),
            arrowprops={"arrowstyle": "<->", "color": "C3"},
        )
        ax.axhline(0.0, color="0.6", linewidth=0.8, linestyle="--")
        ax.text(distances[top], relative[top] / 2, f"  {self.barrier:.3f} eV", color="C3", va="center")
        ax.set_xlabel("distance along the path (Å)")
        ax.set_ylabel("energy above the initial image (eV)")
        status = "converged" if self.converged else self.stop_reason
        ax.set_title(f"NEB: barrier {self.barrier:.3f} eV, backward {self.barrier_backward:.3f} eV ({status})")
        if path is not None:
            ax.figure.savefig(path, dpi=120, bbox_inches="tight")
        return ax

    @classmethod
    def from_entry(cls: type[NR], local_index: int, offset: int, entry: dict[str, Any], model: dict[str, Any]) -> NR:
        """Decode a ``/v1/neb`` result entry."""
        if "error" in entry:  # the server names a path as "path i:" or "structure i:"
            message = entry["error"]["message"].replace(f"path {local_index}:", f"path {offset + local_index}:", 1)
            entry = {"error": {**entry["error"], "message": message}}
        if "error" in entry:
            base = Result.from_entry(local_index, offset, entry, model)
            return cls(**{name: getattr(base, name) for name in Result.__dataclass_fields__})
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        forces = np.asarray(entry["forces"], dtype=np.float64)
        result = cls(energy=entry["energy"], energy_per_atom=entry["energy"] / len(forces), forces=forces, model=model)
        result.uncertainty = entry.get("uncertainty")
        result.energies = np.asarray(entry["energies"], dtype=np.float64)
        result.image_fmax = np.asarray(entry["image_fmax"], dtype=np.float64)
        result.saddle_index = int(entry["saddle_index"])
        for index, (structure, energy) in enumerate(zip(entry["images"], result.energies, strict=True)):
            image = Atoms(numbers=structure["numbers"], positions=structure["positions"], cell=structure["cell"])
            image.pbc = structure["pbc"]
            image.info["image"] = index
            properties: dict[str, Any] = {"energy": float(energy)}
            if index == result.saddle_index:
                image.info["saddle"] = True
                properties["forces"] = forces
            image.calc = SinglePointCalculator(image, **properties)
            result.images.append(image)
        result.barrier, result.barrier_backward = entry["barrier_forward"], entry["barrier_backward"]
        result.steps, result.converged = entry["steps"], entry["converged"]
        result.stop_reason, result.fmax = entry["stop_reason"], entry["fmax"]
        return result


def neb(
    planner: Planner,
    initial: StructureLike,
    final: StructureLike,
    *,
    images: int = NEBOptions.images,
    intermediates: Sequence[StructureLike] | None = None,
    fixed: Sequence[int] | None = None,
    model: str | None = None,
    errors: ErrorMode = "raise",
    progress: bool | None = None,
    **options: Any,
) -> Plan[NEBResult]:
    """The minimum-energy path from ``initial`` to ``final`` by a nudged elastic band on the server (ASE's NEB,
    climbing image, optimised by FIRE). ``images`` are placed between the end points (``interpolation`` idpp or
    linear) unless ``intermediates`` gives them. ``options`` are the other
    :class:`~mlipserve.protocol.NEBOptions` fields (``climb``, ``fmax``, ``max_steps``, ``spring_constant``...).
    ``fixed``: atom indices held in place, by default those of ``initial``'s FixAtoms constraints.
    """
    found = yield from neb_many(
        planner,
        [(initial, final, intermediates)],
        images=images,
        fixed=None if fixed is None else [fixed],
        model=model,
        errors=errors,
        progress=progress,
        **options,
    )
    return found[0]


def neb_many(
    planner: Planner,
    paths: Sequence[PathLike],
    *,
    fixed: FixedAtoms | None = None,
    model: str | None = None,
    errors: ErrorMode = "raise",
    progress: bool | None = None,
    **options: Any,
) -> Plan[list[NEBResult]]:
    """:meth:`neb` for many paths, each ``(initial, final)`` or ``(initial, final, intermediates)``, optimised
    together; :class:`NEBResult` objects in order. ``fixed`` gives each path's fixed atoms (or None)."""
    chosen = NEBOptions.of(options)
    initials = [path[0] for path in paths]
    relaxing.check_fixed(initials, fixed)
    fixed_atoms = relaxing.fixed_lists(initials, fixed)
    encoded = [path_body(path, held) for path, held in zip(paths, fixed_atoms, strict=True)]
    size = max(1, min(planner.settings.chunk_size, math.ceil(len(paths) / relaxing.RELAX_CONCURRENCY)))
    chunks: list[Chunk] = [(start, encoded[start : start + size]) for start in range(0, len(encoded), size)]
    with progress_bar(planner.settings, len(paths), progress) as bar:
        bar.unit = "path"

        def counted(chunk: Chunk) -> Plan[Any]:
            body: dict[str, Any] = {"paths": chunk[1], **chosen.request()}
            if chosen_model := planner._model(model):
                body["model"] = chosen_model
            payload = yield from request(planner.settings, Call("POST", "/v1/neb", None, json=body))
            bar.update(len(chunk[1]))
            return payload

        payloads = yield Gather([counted(chunk) for chunk in chunks], relaxing.RELAX_CONCURRENCY)
    return collect(chunks, payloads, errors, NEBResult)


def path_body(path: PathLike, fixed: list[int] | None) -> dict[str, Any]:
    """One entry of the request's ``paths``."""
    if len(path) not in (2, 3):
        raise ValueError(f"a path is (initial, final) or (initial, final, intermediates), got {len(path)} items")
    entry: dict[str, Any] = {"initial": encode_structure(path[0]), "final": encode_structure(path[1])}
    intermediates = path[2] if len(path) == 3 else None
    if intermediates is not None:
        entry["intermediates"] = [encode_structure(s) for s in intermediates]
    if fixed is not None:
        entry["fixed"] = fixed
    return entry
