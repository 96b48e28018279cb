"""matbench-discovery's own data files, read as its loaders read them (PyPI ``matbench-discovery==1.3.1``).

- WBM initial atoms, ``2024-08-04-wbm-initial-atoms.extxyz.zip``: one zip member ``<material_id>.extxyz`` per
  structure, ``material_id`` in the frame's info (``ase_atoms_to_zip``);
- WBM summary, ``2023-12-13-wbm-summary.csv.gz``: one row per material, ``material_id`` first; the truth columns
  are ``e_form_per_atom_mp2020_corrected``, ``e_above_hull_mp2020_corrected_ppd_mp`` and ``unique_prototype``;
- WBM computed structure entries, ``2022-10-19-wbm-computed-structure-entries.json.bz2``: a pandas ``to_json`` of
  the columns ``material_id``, ``formula_from_cse`` and ``computed_structure_entry`` (pymatgen dicts holding the
  DFT-relaxed structure and the uncorrected DFT energy);
- MP elemental references, ``2023-02-07-mp-elemental-reference-entries.json.gz``: ``{element: ComputedEntry dict}``.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ase import Atoms

from .errors import EvalError
from .metrics import E_FORM_DFT, E_HULL_DFT, MATERIAL_ID, UNIQUE_PROTOTYPE

#: How each file is found in a ``--matbench-data`` folder (or its ``wbm/`` and ``mp/`` subfolders, as in
#: matbench's cache): a glob of its name, newest (last in sorted order) first.
FILE_PATTERNS = {
    "wbm_atoms": "*wbm-initial-atoms*.extxyz.zip",
    "wbm_summary": "*wbm-summary*.csv.gz",
    "wbm_cses": "*wbm-computed-structure-entries*.json.bz2",
    "mp_refs": "*mp-elemental-reference-entries*.json.gz",
}
CSE_COLUMN = "computed_structure_entry"
SUBSETS = ("unique_prototypes", "full")


@dataclass(frozen=True)
class MatbenchPaths:
    """The four files of a matbench-format evaluation."""

    wbm_atoms: Path
    wbm_summary: Path
    wbm_cses: Path
    mp_refs: Path

    @classmethod
    def find(cls, folder: Path | None, **given: Path | None) -> MatbenchPaths:
        """The files named in ``given``, the others found in ``folder`` by :data:`FILE_PATTERNS`."""
        found: dict[str, Path] = {}
        for key, pattern in FILE_PATTERNS.items():
            path = given.get(key)
            if path is None and folder is not None:
                path = _find(folder, pattern)
            if path is None:
                option = "--" + key.replace("_", "-")
                raise EvalError(f"no {pattern} file: give {option} FILE, or --matbench-data DIR holding it")
            if not Path(path).is_file():
                raise EvalError(f"{path}: no such file")
            found[key] = Path(path)
        return cls(**found)


@dataclass
class MatbenchSet:
    """The selected WBM materials: initial atoms, summary rows, DFT entries, and MP's elemental reference energies."""

    atoms: dict[str, Atoms]
    summary: pd.DataFrame
    cses: dict[str, dict[str, Any]]
    elemental_refs: dict[str, float]
    description: str


def load_matbench(paths: MatbenchPaths, subset: str, sample: int | None, seed: int) -> MatbenchSet:
    """The ``subset`` of WBM (``unique_prototypes`` or ``full``), ``sample`` of it drawn with ``seed`` if given."""
    summary = read_summary(paths.wbm_summary)
    if subset not in SUBSETS:
        raise EvalError(f"unknown subset {subset!r}: choose one of {', '.join(SUBSETS)}")
    if subset == "unique_prototypes":
        if UNIQUE_PROTOTYPE not in summary:
            raise EvalError(f"{paths.wbm_summary}: no {UNIQUE_PROTOTYPE} column for --subset unique_prototypes")
        summary = summary[summary[UNIQUE_PROTOTYPE]]
    ids = sample_ids(list(summary.index), sample, seed)
    summary = summary.loc[ids]
    cses = read_cses(paths.wbm_cses, ids)
    atoms = read_initial_atoms(paths.wbm_atoms, ids)
    chosen = f"a sample of {len(ids)} (seed {seed})" if sample is not None else f"all {len(ids)}"
    description = f"WBM ({subset}): {chosen} from {paths.wbm_summary.name}"
    return MatbenchSet(atoms, summary, cses, read_elemental_refs(paths.mp_refs), description)


def sample_ids(ids: list[str], sample: int | None, seed: int) -> list[str]:
    """``sample`` of ``ids`` drawn with pandas' sampler and ``seed``, kept in input order; all if None."""
    if sample is None or sample >= len(ids):
        return ids
    if sample < 1:
        raise EvalError(f"--sample must be at least 1, got {sample}")
    chosen = set(pd.Series(ids).sample(n=sample, random_state=seed))
    return [i for i in ids if i in chosen]


def read_summary(path: Path) -> pd.DataFrame:
    """The WBM summary indexed by material_id, ``unique_prototype`` as booleans."""
    summary = pd.read_csv(path)
    if missing := [col for col in (MATERIAL_ID, E_FORM_DFT, E_HULL_DFT) if col not in summary]:
        raise EvalError(f"{path}: missing column(s) {', '.join(missing)}: not a WBM summary")
    summary = summary.set_index(MATERIAL_ID)
    if UNIQUE_PROTOTYPE in summary:
        summary[UNIQUE_PROTOTYPE] = summary[UNIQUE_PROTOTYPE].astype(str).str.lower().isin(["true", "1", "1.0"])
    return summary


def read_cses(path: Path, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ComputedStructureEntry dicts of ``ids``."""
    frame = pd.read_json(path)
    if MATERIAL_ID not in frame or CSE_COLUMN not in frame:
        raise EvalError(f"{path}: no {MATERIAL_ID} and {CSE_COLUMN} columns: not WBM computed structure entries")
    entries = dict(zip(frame[MATERIAL_ID], frame[CSE_COLUMN], strict=True))
    wanted = list(ids)
    if missing := [i for i in wanted if i not in entries]:
        raise EvalError(f"{path}: no entry for {len(missing)} material(s), e.g. {missing[0]}")
    return {i: entries[i] for i in wanted}


def read_initial_atoms(path: Path, ids: Iterable[str]) -> dict[str, Atoms]:
    """The initial structures of ``ids`` from the zip: member ``<id>.extxyz``, else any member whose frame says so."""
    ids_in_order = list(ids)
    wanted = set(ids_in_order)
    atoms: dict[str, Atoms] = {}
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        for material_id in sorted(wanted):
            if (name := f"{material_id}.extxyz") in names:
                atoms[material_id] = _read_member(archive, name)[0]
        if set(wanted) - set(atoms):  # another layout: look in every member
            for name in sorted(n for n in names if n.endswith(".extxyz")):
                for frame in _read_member(archive, name):
                    frame_id = str(frame.info.get(MATERIAL_ID))
                    if frame_id in wanted and frame_id not in atoms:
                        atoms[frame_id] = frame
    if absent := sorted(wanted - set(atoms)):
        raise EvalError(f"{path}: no initial structure for {len(absent)} material(s), e.g. {absent[0]}")
    return {i: atoms[i] for i in ids_in_order}


def read_elemental_refs(path: Path) -> dict[str, float]:
    """MP's elemental reference energies, eV/atom rounded to 4 decimals as ``matbench_discovery.energy`` does."""
    from pymatgen.entries.computed_entries import ComputedEntry

    entries = pd.read_json(path, typ="series")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns of noble gases' missing electronegativities
        return {str(el): round(ComputedEntry.from_dict(entry).energy_per_atom, 4) for el, entry in entries.items()}


def _read_member(archive: zipfile.ZipFile, name: str) -> list[Atoms]:
    from ase.io import read

    with archive.open(name) as member:
        frames = read(io.StringIO(io.TextIOWrapper(member, encoding="utf-8").read()), format="extxyz", index=":")
    return frames if isinstance(frames, list) else [frames]


def _find(folder: Path, pattern: str) -> Path | None:
    for where in (folder, folder / "wbm", folder / "mp"):
        matches = sorted(p for p in where.glob(pattern) if "+" not in p.name)  # not the "+init-structs" variant
        if matches:
            return matches[-1]
    return None
