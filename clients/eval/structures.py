"""Structures between the forms the evaluation meets: stored records, ase.Atoms and pymatgen objects."""

from __future__ import annotations

from typing import Any

from ase import Atoms

from .store import Record


def record_atoms(record: Record) -> Atoms | None:
    """The relaxed structure of a stored record, None for a failed one."""
    structure = record.get("structure")
    if not structure:
        return None
    return Atoms(
        numbers=structure["numbers"], positions=structure["positions"], cell=structure["cell"], pbc=structure["pbc"]
    )


def to_pymatgen(atoms: Atoms | None) -> Any:
    """A pymatgen Structure of a structure periodic in all three directions; None otherwise."""
    if atoms is None or not atoms.pbc.all():
        return None
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_structure(atoms)


def ok(record: Record | None) -> bool:
    """Whether a record holds a finite energy (the relaxation ran; it may not have converged)."""
    return record is not None and record.get("error") is None and record.get("energy") is not None
