"""Throughput of the batched torch HDNNP (n2p2 format) against the same evaluator run one structure at a time.

There is no runnable reference to time against: n2p2 (``nnp-predict``, LAMMPS ``pair_style hdnnp``) and RuNNer
are C++/Fortran programs that are not pip-installable, and the fixtures' reference values were made once, elsewhere
(``../shared/fixtures/n2p2/PROVENANCE.md``). So the script (1) checks that the potential still reproduces n2p2's
saved energy for the fixture's own structure (1e-8 relative), then (2) times energy, forces and stress of the same
unseen structures through an ASE calculator loop over mlipserve's HDNNP, one structure per call (how n2p2 and
LAMMPS evaluate), and (3) through ``Potential.predict`` in batches of at most ``--batch-atoms`` atoms. Wall and process
CPU seconds are both reported (on a shared machine the wall time also counts other processes' turns).

    python benchmarks/bench_hdnnp.py                 # Cu2S (eV/Å), rattled antifluorite cells of 12-96 atoms
    python benchmarks/bench_hdnnp.py --model water   # H2O (Hartree/Bohr), boxes of 8-32 molecules
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers
from mlipserve.models.backends.hdnnp import load_potential
from mlipserve.models.backends.hdnnp_format import read_settings, read_structures
from mlipserve.models.cards import ModelCard, file_sha256
from mlipserve.models.potential import Potential
from mlipserve.models.system import AtomicSystem
from mlipserve.server.engine.tuning import tune_process

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "n2p2"
MODELS = {"cu2s": ("Cu2S_PBE", "Angstrom", "eV"), "water": ("H2O_RPBE-D3", "Bohr", "Hartree")}
ANGSTROM = {"Angstrom": 1.0, "Bohr": units.Bohr}
EV = {"eV": 1.0, "Hartree": units.Hartree}


def fixture_potential(folder: Path, length_unit: str, energy_unit: str, device: str) -> Potential:
    """The fixture's potential, read where it lies (hashes taken here)."""
    settings = read_settings(folder / "input.nn")
    weights = {e: f"weights.{atomic_numbers[e]:03d}.data" for e in settings.elements}
    card = ModelCard.from_dict(
        {"name": folder.name, "family": "hdnnp", "version": "bench", "checkpoint": "input.nn",
         "sha256": file_sha256(folder / "input.nn"), "license": "GPL-3.0-or-later",
         "elements": list(settings.elements), "cutoff": settings.cutoff * ANGSTROM[length_unit],
         "options": {"scaling": "scaling.data", "scaling_sha256": file_sha256(folder / "scaling.data"),
                     "weights": weights, "weights_sha256": {e: file_sha256(folder / f) for e, f in weights.items()},
                     "length_unit": length_unit, "energy_unit": energy_unit}},
        root=folder,
    )  # fmt: skip
    return load_potential(card, card.verified_checkpoint(), torch.device(device))


def check_reference(potential: Potential, folder: Path, length_unit: str, energy_unit: str) -> float:
    """Relative energy error against n2p2's saved nnp-predict output for the fixture's structure."""
    (frame,) = read_structures(folder / "input.data")
    scale = ANGSTROM[length_unit]
    numbers = [atomic_numbers[s] for s in frame["symbols"]]
    system = AtomicSystem.from_arrays(numbers, frame["positions"] * scale, frame["lattice"] * scale, True)
    (prediction,) = potential.predict([system], ["energy"])
    lines = (folder / "reference_nnp-predict_energy.out").read_text().splitlines()
    (expected,) = [float(line.split()[3]) for line in lines if line.strip() and not line.startswith("#")]
    return abs(prediction.energy / EV[energy_unit] - expected) / abs(expected)


def cu2s_structures(count: int, seed: int = 0) -> list[Atoms]:
    """Rattled, strained antifluorite Cu2S cells of 12 to 96 atoms."""
    rng = np.random.default_rng(seed)
    repeats = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)]
    structures = []
    for index in range(count):
        atoms = bulk("SCu2", "fluorite", a=5.6, cubic=True) * repeats[index % len(repeats)]
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.02, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.08, seed=int(rng.integers(1 << 31)))
        structures.append(atoms)
    return structures


def water_structures(count: int, seed: int = 0) -> list[Atoms]:
    """Boxes of 8, 16 or 32 randomly oriented water molecules at about liquid density, rattled."""
    rng = np.random.default_rng(seed)
    molecule = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    structures = []
    for index in range(count):
        grid = [(2, 2, 2), (4, 2, 2), (4, 4, 2)][index % 3]
        atoms = Atoms(cell=np.diag(np.array(grid) * 3.1), pbc=True)
        for corner in np.ndindex(*grid):
            rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
            atoms += Atoms("OH2", positions=molecule @ rotation.T + 3.1 * np.array(corner) + 0.8)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 31)))
        structures.append(atoms)
    return structures


class _Loop(Calculator):
    """An ASE calculator over the same potential: one structure per call, as n2p2 or LAMMPS evaluate."""

    implemented_properties = ("energy", "forces", "stress")

    def __init__(self, potential: Potential):
        super().__init__()
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        (prediction,) = self.potential.predict([AtomicSystem.from_ase(self.atoms)])
        self.results = {"energy": prediction.energy, "forces": prediction.forces, "stress": prediction.stress}


def time_loop(potential: Potential, structures: list[Atoms]) -> tuple[float, float]:
    """(wall, process CPU) seconds of the ASE calculator loop."""
    calculator = _Loop(potential)
    start, cpu = time.perf_counter(), time.process_time()
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    return time.perf_counter() - start, time.process_time() - cpu


def time_batches(potential: Potential, systems: list[AtomicSystem], max_atoms: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``Potential.predict`` in batches of at most ``max_atoms`` atoms."""
    start, cpu = time.perf_counter(), time.process_time()
    batch: list[AtomicSystem] = []
    for system in systems:
        if batch and sum(s.n_atoms for s in batch) + system.n_atoms > max_atoms:
            potential.predict(batch)
            batch = []
        batch.append(system)
    potential.predict(batch)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="cu2s")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--batch-atoms", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    tune_process(args.threads)
    name, length_unit, energy_unit = MODELS[args.model]
    folder = SHARED / name
    potential = fixture_potential(folder, length_unit, energy_unit, args.device)
    error = check_reference(potential, folder, length_unit, energy_unit)
    assert error < 1e-8, f"the potential no longer reproduces nnp-predict: relative energy error {error:.1e}"
    structures = (cu2s_structures if args.model == "cu2s" else water_structures)(args.count)
    n_atoms = sum(len(atoms) for atoms in structures)
    print(
        json.dumps(
            {"model": name, "nnp_predict_relative_error": error, "structures": len(structures), "atoms": n_atoms,
             "sizes": sorted({len(a) for a in structures}), "torch": torch.__version__,
             "threads": torch.get_num_threads(), "device": args.device, "machine": platform.machine(),
             "processor": platform.processor(), "python": platform.python_version()}
        )
    )  # fmt: skip
    systems = [AtomicSystem.from_ase(atoms) for atoms in structures]
    potential.predict(systems[:2])  # warm-up
    loop_seconds, loop_cpu = time_loop(potential, structures)
    rows = [("ASE calculator loop, one structure per call", loop_seconds, loop_cpu)]
    for max_atoms in args.batch_atoms:
        rows.append(
            (f"Potential.predict, batches of <= {max_atoms} atoms", *time_batches(potential, systems, max_atoms))
        )
    # CPU seconds too: on a shared machine the wall time also counts the other processes' turns
    print("| path | seconds | CPU seconds | atoms/s | atoms per CPU second | vs loop (CPU) |")
    print("|---|---|---|---|---|---|")
    for label, seconds, cpu in rows:
        print(
            f"| {label} | {seconds:.2f} | {cpu:.2f} | {n_atoms / seconds:.0f} | {n_atoms / cpu:.0f} "
            f"| {loop_cpu / cpu:.2f}× |"
        )


if __name__ == "__main__":
    main()
