"""A generic evaluation set: structures with ids and reference total energies, and optional reference-relaxed ones.

``--structures`` is a file ase reads (extxyz: every frame) or a folder of CIF/POSCAR files (one structure each). A
frame's id is its info ``id`` (or ``material_id``), else ``<file stem>-<index>`` (a folder's files: the file name
less its suffix); its reference energy is the frame's total energy (extxyz ``energy``), or the ``energy`` column of
``--energies`` (a CSV with ``id`` and ``energy``, eV per structure) which takes precedence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from ase import Atoms

from ..files import read_frames
from .errors import EvalError
from .matbench_files import sample_ids

#: Files of a folder read as structures.
FOLDER_PATTERNS = ("*.cif", "*.vasp", "POSCAR*", "CONTCAR*", "*.poscar", "*.extxyz", "*.xyz")


@dataclass
class GenericSet:
    """Structures by id (input order), their reference total energies (eV) where known, reference-relaxed ones."""

    atoms: dict[str, Atoms]
    energies: dict[str, float]
    relaxed: dict[str, Atoms] = field(default_factory=dict)
    description: str = ""


def load_generic(
    structures: Path,
    relaxed: Path | None = None,
    energies: Path | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> GenericSet:
    """The set of ``structures`` (``sample`` of them with ``seed``), with energies and reference-relaxed frames."""
    frames = read_structures(structures)
    ids = sample_ids(list(frames), sample, seed)
    atoms = {i: frames[i] for i in ids}
    reference = {i: e for i in ids if (e := frame_energy(atoms[i])) is not None}
    if energies is not None:
        reference |= {i: e for i, e in read_energies(energies).items() if i in atoms}
    relaxed_frames: dict[str, Atoms] = {}
    if relaxed is not None:
        relaxed_frames = {i: a for i, a in read_structures(relaxed).items() if i in atoms}
        for i in ids:  # a relaxed frame's energy serves where the input frame has none
            if i not in reference and i in relaxed_frames and (e := frame_energy(relaxed_frames[i])) is not None:
                reference[i] = e
    chosen = f"a sample of {len(ids)} (seed {seed})" if sample is not None else f"{len(ids)} structures"
    return GenericSet(atoms, reference, relaxed_frames, f"{chosen} from {structures}")


def read_structures(path: Path) -> dict[str, Atoms]:
    """The frames of ``path`` (a file, or a folder of structure files) by id, in order."""
    if path.is_dir():
        files = sorted({f for pattern in FOLDER_PATTERNS for f in path.glob(pattern) if f.is_file()})
        if not files:
            raise EvalError(f"{path}: no structure files ({', '.join(FOLDER_PATTERNS)})")
        frames = {f: _read(f) for f in files}
        named = [(_folder_id(f, i, len(fs)), a) for f, fs in frames.items() for i, a in enumerate(fs)]
    elif path.is_file():
        named = [(_frame_id(a, path, i), a) for i, a in enumerate(_read(path))]
    else:
        raise EvalError(f"{path}: no such file or folder")
    found: dict[str, Atoms] = {}
    for frame_id, atoms in named:
        if frame_id in found:
            raise EvalError(f"{path}: the id {frame_id!r} names two structures")
        found[frame_id] = atoms
    return found


def read_energies(path: Path) -> dict[str, float]:
    """``id`` → ``energy`` (eV per structure) from a CSV."""
    table = pd.read_csv(path, dtype={"id": str})
    if "id" not in table or "energy" not in table:
        raise EvalError(f"{path}: expected columns id and energy")
    return {str(i): float(e) for i, e in zip(table["id"], table["energy"], strict=True) if not pd.isna(e)}


def frame_energy(atoms: Atoms) -> float | None:
    """A frame's total energy from its calculator (extxyz ``energy``) or its info, if it has one."""
    energy = None
    if atoms.calc is not None:
        energy = atoms.calc.results.get("energy")
    if energy is None:
        energy = atoms.info.get("energy")
    return None if energy is None or not math.isfinite(float(energy)) else float(energy)


def _read(path: Path) -> list[Atoms]:
    frames, problem = read_frames(path)
    if problem is not None:
        raise EvalError(str(problem))
    return [frame.atoms for frame in frames]


def _frame_id(atoms: Atoms, path: Path, index: int) -> str:
    for key in ("id", "material_id"):
        if key in atoms.info:
            return str(atoms.info[key])
    return f"{path.name.split('.')[0]}-{index}"


def _folder_id(path: Path, index: int, count: int) -> str:
    stem = path.name.split(".")[0] if path.suffix else path.name
    return stem if count == 1 else f"{stem}-{index}"
