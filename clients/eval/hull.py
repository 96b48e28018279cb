"""Generic-mode thermodynamics: the reference hull (pymatgen's PhaseDiagram of the reference energies) and a model's
formation energies against its own energies of the same elemental frames.

The elemental references are, per element, the pure-element frame of lowest reference energy per atom, which is
also what PhaseDiagram takes as its terminal entries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from .metrics import E_FORM_DFT, E_HULL_DFT
from .store import Record
from .structures import ok


@dataclass
class Hull:
    """Reference formation energies and hull distances by id, the elemental frames, and what was left out, why."""

    truth: pd.DataFrame
    elemental_frames: dict[str, str]
    notes: list[str] = field(default_factory=list)


def reference_hull(formulas: Mapping[str, str], energies: Mapping[str, float]) -> Hull:
    """The hull of the frames with a reference energy (eV per structure) whose elements all have a pure frame."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    compositions = {i: Composition(formulas[i]) for i in formulas}
    frames = elemental_frames(compositions, energies)
    notes = []
    if no_energy := [i for i in formulas if i not in energies]:
        notes.append(f"{len(no_energy)} structure(s) without a reference energy, e.g. {no_energy[0]}: not scored")
    uncovered = [i for i in energies if any(str(el) not in frames for el in compositions[i])]
    if uncovered:
        elements = sorted({str(el) for i in uncovered for el in compositions[i] if str(el) not in frames})
        notes.append(
            f"{len(uncovered)} structure(s) contain elements without a pure-element frame ({', '.join(elements)}), "
            f"e.g. {uncovered[0]}: left out of the hull and not scored"
        )
    entries = {i: PDEntry(compositions[i], energies[i], name=i) for i in energies if i not in uncovered}
    if not entries:
        return Hull(pd.DataFrame(columns=[E_FORM_DFT, E_HULL_DFT], dtype=float), frames, notes)
    diagram = PhaseDiagram(list(entries.values()))
    truth = pd.DataFrame(
        {
            E_FORM_DFT: {i: diagram.get_form_energy_per_atom(e) for i, e in entries.items()},
            E_HULL_DFT: {i: diagram.get_e_above_hull(e, allow_negative=True) for i, e in entries.items()},
        },
        dtype=float,
    )
    truth.index.name = "material_id"
    return Hull(truth, frames, notes)


def elemental_frames(compositions: Mapping, energies: Mapping[str, float]) -> dict[str, str]:
    """Per element, the id of its pure-element frame of lowest energy per atom (among those with an energy)."""
    best: dict[str, tuple[float, str]] = {}
    for i, composition in compositions.items():
        if i in energies and composition.is_element:
            element, per_atom = str(composition.elements[0]), energies[i] / composition.num_atoms
            if element not in best or per_atom < best[element][0]:
                best[element] = (per_atom, i)
    return {element: i for element, (_, i) in best.items()}


def model_formation_energies(
    records: Mapping[str, Record], formulas: Mapping[str, str], frames: Mapping[str, str]
) -> pd.Series:
    """A model's formation energies (eV/atom) by id, against its own energies of the elemental ``frames``."""
    from pymatgen.core import Composition

    potentials = {
        element: records[i]["energy"] / records[i]["n_atoms"] for element, i in frames.items() if ok(records.get(i))
    }
    values = {}
    for i, record in records.items():
        composition = Composition(formulas[i])
        if not ok(record) or any(str(el) not in potentials for el in composition):
            values[i] = math.nan
            continue
        references = sum(amount * potentials[str(el)] for el, amount in composition.items())
        values[i] = (record["energy"] - references) / composition.num_atoms
    return pd.Series(values, dtype=float)
