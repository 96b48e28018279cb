"""Fit the small two-species GAP ``HfO2_2b_soap.xml`` (distance_2b + SOAP) with quippy's ``gap_fit``.

Usage (from the repository root, with quippy-ase==0.10.3 installed, as the ``dev`` extra does):
``python tests/data/gap/make_hfo2_gap.py``. Training data: the six smallest frames (12 and 60 atoms) of
``../shared/fixtures/datasets/SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz`` (energies and forces). The fit is a
test fixture for the multi-species SOAP path (``n_species=2``, ``species_Z``, one SOAP per centre element, ``Z``),
with inline sparse points; its quality does not matter.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import ase.io

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2].parent / "shared" / "fixtures" / "datasets" / "SevenNet_example_HfO2_VASP_OUTCARs.DERIVED.extxyz"
GAP = (
    "{distance_2b cutoff=4.0 cutoff_transition_width=1.0 covariance_type=ard_se delta=0.5 theta_uniform=1.0 "
    "n_sparse=12 sparse_method=uniform add_species=T : "
    "soap l_max=2 n_max=3 atom_sigma=0.5 cutoff=4.5 cutoff_transition_width=1.0 central_weight=0.5 delta=0.2 "
    "zeta=2 covariance_type=dot_product n_sparse=20 sparse_method=cur_points add_species=T}"
)


def main() -> None:
    frames = [atoms for atoms in ase.io.read(DATA, index=":", format="extxyz") if len(atoms) <= 60]
    with tempfile.TemporaryDirectory() as folder:
        train = Path(folder) / "train.xyz"
        for atoms in frames:
            atoms.info["dft_energy"] = atoms.get_potential_energy()
            atoms.arrays["dft_forces"] = atoms.get_forces()
            atoms.calc = None
        ase.io.write(train, frames, format="extxyz")
        command = [
            shutil.which("gap_fit") or str(Path(sys.executable).parent / "gap_fit"),
            f"at_file={train}",
            f"gap={GAP}",
            "default_sigma={0.005 0.1 0.05 0.0}",
            "e0_method=average",
            "energy_parameter_name=dft_energy",
            "force_parameter_name=dft_forces",
            "sparse_jitter=1e-8",
            "sparse_separate_file=F",
            "do_copy_at_file=F",
            "rnd_seed=7",
            f"gp_file={Path(folder) / 'HfO2_2b_soap.xml'}",
        ]
        subprocess.run(command, check=True, cwd=folder, stdout=subprocess.DEVNULL)
        shutil.copy(Path(folder) / "HfO2_2b_soap.xml", HERE / "HfO2_2b_soap.xml")


if __name__ == "__main__":
    main()
