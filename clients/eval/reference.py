"""What a model is scored against: the truth table, the reference-relaxed structures, and how a model's energies
become formation energies, for matbench's WBM files or for a generic set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .generic_files import GenericSet
from .hull import model_formation_energies, reference_hull
from .matbench_files import MatbenchSet
from .metrics import E_FORM_DFT, E_HULL_DFT, UNIQUE_PROTOTYPE
from .mp2020 import mp2020_formation_energies
from .store import Record
from .structures import ok, record_atoms, to_pymatgen


@dataclass
class Reference:
    """``truth`` is indexed by material_id with matbench's column names (:data:`E_FORM_DFT`, :data:`E_HULL_DFT`,
    optionally :data:`UNIQUE_PROTOTYPE`), whatever the reference is; ``label`` says what it is."""

    truth: pd.DataFrame
    structures: dict[str, Any]
    formulas: dict[str, str]
    formation: Callable[[Mapping[str, Record]], pd.Series]
    label: str
    notes: list[str] = field(default_factory=list)


def matbench_reference(data: MatbenchSet) -> Reference:
    """WBM's DFT truth, the DFT-relaxed structures of its entries, and matbench's MP2020 energy path."""
    from pymatgen.core import Structure

    summary = data.summary
    columns = [E_FORM_DFT, E_HULL_DFT] + [UNIQUE_PROTOTYPE] * (UNIQUE_PROTOTYPE in summary)
    formulas = {i: str(summary.at[i, "formula"]) if "formula" in summary else "" for i in summary.index}
    formulas = {i: f or data.atoms[i].get_chemical_formula() for i, f in formulas.items()}
    structures = {i: Structure.from_dict(cse["structure"]) for i, cse in data.cses.items() if cse.get("structure")}

    def formation(records: Mapping[str, Record]) -> pd.Series:
        return mp2020_formation_energies(records, data.cses, formulas, data.elemental_refs)

    label = (
        "DFT (WBM): MP2020-corrected formation energies and distances to the MP hull "
        f"({E_FORM_DFT}, {E_HULL_DFT}); model energies through MaterialsProject2020Compatibility"
    )
    return Reference(summary[columns].copy(), structures, formulas, formation, label)


def generic_reference(data: GenericSet, reference_model: tuple[str, Mapping[str, Record]] | None = None) -> Reference:
    """The hull of the set's reference energies, or of a model's relaxed energies (``reference_model``: its name
    and records) where the set has no usable reference; formation energies against the same elemental frames."""
    formulas = {i: atoms.get_chemical_formula() for i, atoms in data.atoms.items()}
    if reference_model is None:
        energies = dict(data.energies)
        structures = {i: s for i, atoms in data.relaxed.items() if (s := to_pymatgen(atoms)) is not None}
        label = "the reference energies of the input frames" + (
            ", and the reference-relaxed structures given" if structures else ""
        )
    else:
        name, records = reference_model
        energies = {i: r["energy"] for i, r in records.items() if i in formulas and ok(r)}
        structures = {i: s for i, r in records.items() if (s := to_pymatgen(record_atoms(r))) is not None}
        label = f"model {name}'s relaxed energies and structures (a model as the reference, not DFT)"
    hull = reference_hull(formulas, energies)

    def formation(records: Mapping[str, Record]) -> pd.Series:
        return model_formation_energies(records, formulas, hull.elemental_frames)

    label += "; hull: pymatgen PhaseDiagram of those energies, elemental references the lowest pure-element frames"
    return Reference(hull.truth, structures, formulas, formation, label, hull.notes)
