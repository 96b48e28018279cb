"""What extrapolation grades cost: predictions (energy, forces, stress) with and without the active set.

MTP: the Cu MTPs of ../shared/fixtures (levels 06, 10 and 20), active set from the mlearn Cu frames, in each mode.
ACE: tests/data/ace/Cu_sbessel.yaml with an active set that python-ace builds from the same frames. Graded: the
31 mlearn Cu frames (20-108 atoms), rattled, in batches of at most ``--batch-atoms`` atoms.

    OMP_NUM_THREADS=1 python benchmarks/bench_grades.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from ase.io import read
from mlipserve.models.backends.ace import AcePotential
from mlipserve.models.backends.ace_format import read_potential
from mlipserve.models.backends.ace_gamma import AceGammaGrader
from mlipserve.models.backends.mtp import MTPPotential
from mlipserve.models.backends.mtp_format import read_mtp
from mlipserve.models.backends.mtp_grade import MTPGrader
from mlipserve.models.cards import ModelCard
from mlipserve.models.system import AtomicSystem
from timing import time_batched

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "fixtures"
FRAMES = SHARED / "datasets" / "mlearn_Cu_test_DFT.DERIVED.extxyz"
CARD = ModelCard(name="cu", family="mtp", version="bench", checkpoint="-", sha256="0" * 64, license="-",
                 elements=("Cu",), cutoff=5.0)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-atoms", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames = read(FRAMES, index=":")
    for index, atoms in enumerate(frames):
        atoms.rattle(0.01, seed=index)
    systems = [AtomicSystem.from_ase(atoms) for atoms in frames]
    rows = []
    for level in ("06", "10", "20"):
        potential = MTPPotential(
            CARD, read_mtp(SHARED / "mtp" / "motep" / "crystals_cubic_Cu_1species" / level / "pot.mtp")
        )
        plain = time_batched(potential, systems, args.batch_atoms)
        for mode in ("configuration", "neighborhood"):
            try:
                potential.grader = MTPGrader.from_training(potential, systems, mode)
            except ValueError as error:  # too few configurations for this level's parameters
                rows.append({"model": f"MTP Cu level {level}", "mode": mode, "skipped": str(error)})
                continue
            graded = time_batched(potential, systems, args.batch_atoms)
            potential.grader = None
            rows.append(_row(f"MTP Cu level {level}", mode, plain, graded, systems))
    rows.append(_ace(systems, frames, args.batch_atoms))
    for row in rows:
        print(json.dumps(row))


def _ace(systems, frames, batch_atoms: int) -> dict:
    import pyace
    from pyace.activelearning import (
        compute_A_active_inverse,
        compute_active_set,
        compute_B_projections,
        save_active_inverse_set,
    )

    yaml = ROOT / "tests" / "data" / "ace" / "Cu_sbessel.yaml"
    model = read_potential(yaml)
    card = dataclasses.replace(CARD, family="ace", cutoff=model.cutoff)
    potential = AcePotential(card, model)
    plain = time_batched(potential, systems, batch_atoms)
    bconf = pyace.BBasisConfiguration(str(yaml))
    inverse = compute_A_active_inverse(compute_active_set(compute_B_projections(bconf, frames), tol=1.01))
    with tempfile.TemporaryDirectory() as folder:
        asi = Path(folder) / "Cu.asi"
        save_active_inverse_set(str(asi), inverse, pyace.ACEBBasisSet(bconf).elements_name)
        potential.grader = AceGammaGrader.from_file(potential, asi)
    graded = time_batched(potential, systems, batch_atoms)
    return _row("ACE Cu_sbessel", "per atom", plain, graded, systems)


def _row(model: str, mode: str, plain: float, graded: float, systems) -> dict:
    atoms = sum(system.n_atoms for system in systems)
    return {
        "model": model,
        "mode": mode,
        "atoms": atoms,
        "us_per_atom_plain": round(1e6 * plain / atoms, 1),
        "us_per_atom_graded": round(1e6 * graded / atoms, 1),
        "overhead": f"{100 * (graded / plain - 1):.0f}%",
    }


if __name__ == "__main__":
    main()
