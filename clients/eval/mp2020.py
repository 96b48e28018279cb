"""matbench's energy path for WBM: a model's energy in the material's ComputedStructureEntry, MP2020 corrections,
formation energy against MP's elemental references (``models/*/join_*_preds.py`` of matbench-discovery).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import pandas as pd

from .store import Record
from .structures import ok, record_atoms, to_pymatgen


def mp2020_formation_energies(
    records: Mapping[str, Record],
    cses: Mapping[str, Mapping[str, Any]],
    formulas: Mapping[str, str],
    elemental_refs: Mapping[str, float],
) -> pd.Series:
    """Formation energies (eV/atom) by material_id of the records' relaxed energies and structures.

    As matbench does it: the WBM entry takes the model's energy and relaxed structure (MP2020 corrections depend on
    the structure for oxides and sulfides), MaterialsProject2020Compatibility corrects it, and the formation energy
    is that corrected energy less the elemental references, per atom of the summary's ``formula``. A failed
    relaxation, or an entry the compatibility scheme refuses, gives NaN.
    """
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    entries = {}
    for material_id, record in records.items():
        structure = to_pymatgen(record_atoms(record))
        if material_id not in cses or not ok(record) or structure is None:
            continue
        cse = cses[material_id]
        entries[material_id] = ComputedStructureEntry(
            structure=structure,
            energy=record["energy"],
            parameters=dict(cse.get("parameters") or {}),
            data=dict(cse.get("data") or {}),
            entry_id=material_id,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns per entry it cannot correct; those become NaN
        processed = MaterialsProject2020Compatibility().process_entries(list(entries.values()), clean=True)
    corrected = {entry.entry_id: entry for entry in processed}
    values = {}
    for material_id in records:
        entry = corrected.get(material_id)
        formula = formulas.get(material_id) or (entry.composition.formula if entry is not None else "")
        values[material_id] = math.nan if entry is None else formation_energy(entry.energy, formula, elemental_refs)
    return pd.Series(values, dtype=float)


def formation_energy(energy: float, formula: str, elemental_refs: Mapping[str, float]) -> float:
    """(energy − Σ n_el · ref_el) / N for the composition ``formula`` (``matbench_discovery.energy``); NaN when an
    element has no reference."""
    from pymatgen.core import Composition

    composition = Composition(formula)
    try:
        references = sum(amount * elemental_refs[str(el)] for el, amount in composition.items())
    except KeyError:
        return math.nan
    return (energy - references) / composition.num_atoms
