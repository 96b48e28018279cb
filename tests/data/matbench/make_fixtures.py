"""Write the DERIVED matbench-format fixtures of this folder from real DFT frames of ../shared/fixtures/datasets.

Run from the repository root: ``.venv/bin/python tests/data/matbench/make_fixtures.py``. See PROVENANCE.md.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import ase.io
import pandas as pd
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.analysis.prototypes import get_protostructure_label_from_spglib
from pymatgen.core import Structure
from pymatgen.entries.compatibility import MaterialsProject2020Compatibility, MaterialsProjectCompatibility
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from pymatgen.io.ase import AseAtomsAdaptor

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2].parent / "shared" / "fixtures"
DATASETS = SHARED / "datasets"
MP_REFS = SHARED / "matbench" / "2023-02-07-mp-elemental-reference-entries.json.gz"
#: (material_id, dataset file, frame index): HfO2 strain series (VASP), Li cells and a slab, a Ni slab (mlearn).
FRAMES = (
    ("wbm-1-1", "SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz", 4),
    ("wbm-1-2", "SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz", 7),
    ("wbm-1-3", "SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz", 9),
    ("wbm-2-1", "mlearn_Li_test_DFT.DERIVED.extxyz", 26),
    ("wbm-2-2", "mlearn_Li_test_DFT.DERIVED.extxyz", 27),
    ("wbm-2-3", "mlearn_Li_test_DFT.DERIVED.extxyz", 28),
    ("wbm-3-1", "mlearn_Li_test_DFT.DERIVED.extxyz", 25),
    ("wbm-4-1", "mlearn_Ni_test_DFT.DERIVED.extxyz", 4),
)
#: MP's POTCAR choices (MPRelaxSet) for the elements here, as pymatgen's entries record them.
POTCARS = {
    "Hf": "PAW_PBE Hf_pv 06Sep2000",
    "O": "PAW_PBE O 08Apr2002",
    "Li": "PAW_PBE Li_sv 10Sep2004",
    "Ni": "PAW_PBE Ni_pv 06Sep2000",
}
SUMMARY_COLUMNS = (
    *("formula", "n_sites", "volume", "uncorrected_energy", "e_form_per_atom_wbm", "e_above_hull_wbm"),
    *("bandgap_pbe", "wyckoff_spglib_initial_structure", "uncorrected_energy_from_cse"),
    *("e_correction_per_atom_mp2020", "e_correction_per_atom_mp_legacy", "e_form_per_atom_uncorrected"),
    *("e_form_per_atom_mp2020_corrected", "e_above_hull_mp2020_corrected_ppd_mp"),
    *("site_stats_fingerprint_init_final_norm_diff", "wyckoff_spglib", "unique_prototype"),
)


def main() -> None:
    refs = {el: ComputedEntry.from_dict(d) for el, d in pd.read_json(MP_REFS, typ="series").items()}
    ref_energies = {el: round(entry.energy_per_atom, 4) for el, entry in refs.items()}
    structures, cses = {}, {}
    for material_id, name, index in FRAMES:
        atoms = ase.io.read(DATASETS / name, index=index, format="extxyz")
        structure = AseAtomsAdaptor.get_structure(atoms)
        symbols = sorted({str(el) for el in structure.composition}, key=str)
        parameters = {
            "run_type": "GGA",
            "is_hubbard": False,
            "hubbards": {},
            "potcar_symbols": [POTCARS[s] for s in symbols],
            "potcar_spec": [{"titel": POTCARS[s], "hash": None} for s in symbols],
        }
        entry = ComputedStructureEntry(
            structure,
            atoms.get_potential_energy(),
            parameters=parameters,
            data={"source": f"{name}#{index}"},
            entry_id=material_id,
        )
        structures[material_id], cses[material_id] = structure, entry
    rows = {i: _summary_row(structures[i], cses[i], ref_energies) for i in cses}
    corrected = {i: _corrected(cses[i], MaterialsProject2020Compatibility()) for i in cses}
    # the hull: these entries, with MP's elemental references for elements that have no pure entry here
    own = {str(e.composition.elements[0]) for e in corrected.values() if e.composition.is_element}
    diagram = PhaseDiagram([*(e for el, e in refs.items() if el not in own), *corrected.values()])
    for i, row in rows.items():
        row["e_above_hull_mp2020_corrected_ppd_mp"] = diagram.get_e_above_hull(corrected[i], allow_negative=True)
        row["e_above_hull_wbm"] = row["e_above_hull_mp2020_corrected_ppd_mp"]
    summary = pd.DataFrame.from_dict(rows, orient="index")
    # matbench's rule within this set: of the materials sharing a prototype, only the lowest in energy is unique
    duplicate = summary.sort_values(["wyckoff_spglib", "e_above_hull_wbm"]).duplicated("wyckoff_spglib")
    summary["unique_prototype"] = ~duplicate.reindex(summary.index)
    summary.index.name = "material_id"
    summary[list(SUMMARY_COLUMNS)].round(6).to_csv(HERE / "2023-12-13-wbm-summary.DERIVED.csv.gz")
    pd.DataFrame(
        {
            "material_id": list(cses),
            "formula_from_cse": [e.composition.alphabetical_formula for e in cses.values()],
            "computed_structure_entry": [e.as_dict() for e in cses.values()],
        }
    ).to_json(HERE / "2022-10-19-wbm-computed-structure-entries.DERIVED.json.bz2")
    _write_atoms_zip(structures, HERE / "2024-08-04-wbm-initial-atoms.DERIVED.extxyz.zip")


def _summary_row(structure: Structure, entry: ComputedStructureEntry, refs: dict[str, float]) -> dict:
    formula = entry.composition.alphabetical_formula
    energy = entry.uncorrected_energy
    e_form = (energy - sum(n * refs[str(el)] for el, n in entry.composition.items())) / entry.composition.num_atoms
    mp2020 = _corrected(entry, MaterialsProject2020Compatibility()).correction_per_atom
    legacy = _corrected(entry, MaterialsProjectCompatibility()).correction_per_atom
    label = get_protostructure_label_from_spglib(structure)
    return {
        "formula": formula,
        "n_sites": len(structure),
        "volume": structure.volume,
        "uncorrected_energy": energy,
        "e_form_per_atom_wbm": e_form,
        "bandgap_pbe": float("nan"),
        "wyckoff_spglib_initial_structure": label,
        "uncorrected_energy_from_cse": energy,
        "e_correction_per_atom_mp2020": mp2020,
        "e_correction_per_atom_mp_legacy": legacy,
        "e_form_per_atom_uncorrected": e_form,
        "e_form_per_atom_mp2020_corrected": e_form + mp2020,
        "site_stats_fingerprint_init_final_norm_diff": 0.0,
        "wyckoff_spglib": label,
    }


def _corrected(entry: ComputedStructureEntry, scheme: object) -> ComputedStructureEntry:
    copy = entry.copy()
    [processed] = scheme.process_entries([copy], clean=True)  # type: ignore[attr-defined]
    return processed


def _write_atoms_zip(structures: dict[str, Structure], path: Path) -> None:
    """matbench's ``ase_atoms_to_zip`` layout: member ``<material_id>.extxyz``, the id in the frame's info."""
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        for material_id, structure in structures.items():
            atoms = AseAtomsAdaptor.get_atoms(structure)
            atoms.info["material_id"] = material_id
            buffer = io.StringIO()
            ase.io.write(buffer, atoms, format="extxyz", append=True, write_info=True)
            archive.writestr(f"{material_id}.extxyz", buffer.getvalue())


if __name__ == "__main__":
    main()
