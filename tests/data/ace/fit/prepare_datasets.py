"""Turn the shared extended-XYZ datasets into the pandas pickles that `pacemaker` reads (run once, see README)."""

import sys
from pathlib import Path

import ase.io
import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[5] / "shared" / "fixtures"
SOURCES = {
    "Cu": SHARED / "datasets" / "mlearn_Cu_test_DFT.DERIVED.extxyz",
    "HfO": SHARED / "datasets" / "SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz",
    "TiAl": SHARED / "ace" / "acepotentials_jl" / "TiAl_tutorial_DB_tenth.xyz",
}


def frame_table(path: Path) -> pd.DataFrame:
    rows = []
    for atoms in ase.io.read(path, index=":", format="extxyz"):
        energy = atoms.info.get("energy", None)
        forces = atoms.arrays.get("forces", atoms.arrays.get("force"))
        if energy is None and atoms.calc is not None:
            energy = atoms.get_potential_energy()
        if forces is None and atoms.calc is not None:
            forces = atoms.get_forces()
        bare = atoms.copy()
        bare.calc = None
        rows.append({"ase_atoms": bare, "energy": float(energy), "forces": np.asarray(forces, dtype=float)})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, path in SOURCES.items():
        table = frame_table(path)
        table.to_pickle(out / f"{name}.pckl.gzip", compression="gzip", protocol=4)
        print(name, len(table), "structures")
