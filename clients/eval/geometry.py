"""Geometry of a relaxed structure against the reference-relaxed one: matbench's RMSD and symmetry agreement."""

from __future__ import annotations

import math
import warnings
from typing import Any

#: spglib's tolerance for the space groups compared (matbench reports 1e-2 and 1e-5; 1e-2 is the looser one).
SYMPREC = 1e-2


def rmsd(relaxed: Any, reference: Any) -> float:
    """pymatgen ``StructureMatcher(stol=1.0, scale=False).get_rms_dist``'s RMS distance (normalised by
    (V/N)^(1/3), as matbench reports it); NaN when the structures do not match."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    try:
        found = StructureMatcher(stol=1.0, scale=False).get_rms_dist(relaxed, reference)
    except Exception:  # pymatgen raises on some degenerate lattices
        return math.nan
    return math.nan if found is None else float(found[0])


def space_group(structure: Any, symprec: float = SYMPREC) -> int | None:
    """The international space group number spglib finds (through pymatgen's SpacegroupAnalyzer), None if none."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # spglib's, about its error handling
            return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:  # spglib fails on some structures
        return None


def compare(relaxed: Any, reference: Any) -> dict[str, Any]:
    """``rmsd``, ``spacegroup``, ``spacegroup_ref`` and ``symmetry_match`` of two pymatgen Structures."""
    ours, theirs = space_group(relaxed), space_group(reference)
    return {
        "rmsd": rmsd(relaxed, reference),
        "spacegroup": ours,
        "spacegroup_ref": theirs,
        "symmetry_match": None if ours is None or theirs is None else ours == theirs,
    }
