"""Structures read from files for the command line, and results written back as extended XYZ.

Every frame keeps where it came from (file and index), so that results and errors can name it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import RelaxResult, Result

#: What the server puts before a structure's error message; the command line names file and frame instead.
_STRUCTURE_PREFIX = re.compile(r"^structure \d+:\s*")
#: What ase's CIF reader records about the input's symmetry and occupancies: not carried into results.
_READER_INFO = ("spacegroup", "unit_cell", "occupancy")
_READER_ARRAYS = ("spacegroup_kinds",)


@dataclass(frozen=True)
class Frame:
    """One structure read from ``source``, the ``index``-th frame of that file (from 0)."""

    atoms: Any
    source: str
    index: int


@dataclass(frozen=True)
class Problem:
    """Something that went wrong with one file (``index`` None) or one frame of it."""

    source: str
    index: int | None
    message: str

    def __str__(self) -> str:
        where = self.source if self.index is None else f"{self.source} frame {self.index}"
        return f"{where}: {self.message}"


def structure_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """The files to read: each path given, a folder as its files (recursively, sorted, hidden ones left out)."""
    files: list[Path] = []
    problems: list[Problem] = []
    for path in map(Path, paths):
        if path.is_dir():
            for member in sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path))):
                if _readable_type(member):
                    files.append(member)
                else:
                    problems.append(Problem(str(member), None, "skipped: not a structure file ase knows"))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), None, "no such file or folder"))
    return files, problems


def read_frames(path: Path, format: str | None = None) -> tuple[list[Frame], Problem | None]:
    """Every frame of one file ase reads (``format`` as ase names it, None: guessed); frames read before an
    unreadable one are kept, and the problem says where reading stopped."""
    from ase.io import iread

    frames: list[Frame] = []
    try:
        for atoms in iread(path, index=":", format=format):
            frames.append(Frame(atoms, str(path), len(frames)))
    except Exception as error:  # ase raises many kinds for a file it cannot parse
        where = f"frame {len(frames)} and after" if frames else "the file"
        return frames, Problem(str(path), None, f"could not read {where}: {type(error).__name__}: {error}")
    if not frames:
        return frames, Problem(str(path), None, "no structure in the file")
    return frames, None


def read_all(paths: Iterable[str | Path], format: str | None = None) -> tuple[list[Frame], list[Problem]]:
    """The frames of every file and folder given, in order, and the problems met reading them."""
    files, problems = structure_files(paths)
    frames: list[Frame] = []
    for path in files:
        read, problem = read_frames(path, format)
        frames += read
        problems += [problem] if problem else []
    return frames, problems


def result_atoms(frame: Frame, result: Result) -> Any:
    """The frame with the result attached: energy, forces and stress (a SinglePointCalculator), the final geometry
    of a relaxation, and in ``info`` the model, the source file and frame, and how a relaxation ended."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = _without_reader_notes(frame.atoms)
    if isinstance(result, RelaxResult):
        atoms.positions, atoms.cell = result.atoms.positions, result.atoms.cell
    atoms.info.update(result_info(frame, result))
    properties: dict[str, Any] = {"energy": result.energy, "forces": result.forces}
    if result.stress is not None:
        properties["stress"] = result.stress_voigt
    atoms.calc = SinglePointCalculator(atoms, **properties)
    return atoms


def result_info(frame: Frame, result: Result) -> dict[str, Any]:
    """The per-frame info written with a result: model, source file and frame; steps, converged, stop_reason and
    final fmax of a relaxation."""
    info: dict[str, Any] = {
        "model": result.model.get("name"),
        "model_version": result.model.get("version"),
        "source": frame.source,
        "frame": frame.index,
    }
    if isinstance(result, RelaxResult):
        info.update(steps=result.steps, converged=result.converged, stop_reason=result.stop_reason, fmax=result.fmax)
    if result.uncertainty is not None:  # e.g. uncertainty=1.7 uncertainty_kind=grade
        info.update(uncertainty=result.uncertainty["value"], uncertainty_kind=result.uncertainty["kind"])
        info["uncertainty_max"] = result.uncertainty.get("max_along_path")
    return {key: value for key, value in info.items() if value is not None}


def structure_error(frame: Frame, result: Result) -> Problem:
    """The server's error for one frame, naming its file and frame rather than its place in the request."""
    assert result.error is not None
    message = _STRUCTURE_PREFIX.sub("", result.error.message)
    return Problem(frame.source, frame.index, f"{message} [{result.error.code}]")


def write_extxyz(path: str | Path, frames: Sequence[Any]) -> None:
    """Write ``frames`` (ase.Atoms with results) to one extended XYZ file."""
    from ase.io import write

    write(path, list(frames), format="extxyz")


def _without_reader_notes(atoms: Any) -> Any:
    """A copy of ``atoms`` (info, per-atom arrays, constraints; no calculator) less what ase's readers note about
    the input file's symmetry."""
    atoms = atoms.copy()
    for key in _READER_INFO:
        atoms.info.pop(key, None)
    for name in _READER_ARRAYS:
        if name in atoms.arrays:
            del atoms.arrays[name]
    return atoms


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _readable_type(path: Path) -> bool:
    """Whether ase recognises the file's format (by name, extension or first bytes)."""
    from ase.io.formats import UnknownFileTypeError, filetype

    try:
        filetype(str(path), guess=False)
    except (UnknownFileTypeError, OSError):
        return False
    return True
