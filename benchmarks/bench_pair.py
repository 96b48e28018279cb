"""Throughput of the `pair` family (batched torch) against ASE's LennardJones and MorsePotential on the same structures.

Both compute energy, forces and stress of every structure; the script first checks that they agree (1e-10
eV/atom) and then times (a) a loop over ASE's calculator, one structure at a time, and (b) mlipserve's
PairPotential in batches of at most ``--batch-atoms`` atoms (neighbour lists included). Structures: rattled,
strained fcc argon (Lennard-Jones, rc = 3 σ as ASE's default) and copper (Morse) cells of 2-64 atoms.

The pair family is also the model with (nearly) no cost of its own, for measuring the server's overhead:
:func:`install_lj_argon` writes its card and parameter file into a model directory (``benchmarks/bench_latency.py``).

    python benchmarks/bench_pair.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator
from ase.calculators.lj import LennardJones
from ase.calculators.morse import MorsePotential
from mlipserve.models.cards import file_sha256
from mlipserve.models.loading import load_model
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.server.engine.tuning import tune_process
from timing import predict_batched

REPEATS = [(i, j, k) for i in range(1, 5) for j in range(1, 5) for k in range(1, 5) if i >= j >= k]
#: name -> (parameter file, element, fcc lattice constant Å, ASE's calculator with the same parameters)
MODELS: dict[str, tuple[dict, str, float, Callable[[], Calculator]]] = {
    "lj-argon": (
        {"potential": "lennard-jones", "epsilon": 0.0104, "sigma": 3.40},
        "Ar",
        5.26,
        lambda: LennardJones(epsilon=0.0104, sigma=3.40),
    ),
    "morse-copper": (
        {"potential": "morse", "epsilon": 0.3429, "r0": 2.866, "rho0": 3.79},
        "Cu",
        3.61,
        lambda: MorsePotential(epsilon=0.3429, r0=2.866, rho0=3.79),
    ),
}


def install(model_dir: Path, name: str) -> str:
    """Write the card of ``name`` (a key of :data:`MODELS`) and its parameter file into ``model_dir``."""
    from mlipserve.models.backends.pair_format import parse_parameters

    parameters, element, _, _ = MODELS[name]
    path = Path(model_dir) / f"{name}.pair"
    path.write_text(yaml.safe_dump(parameters))
    card = {
        "name": name,
        "family": "pair",
        "version": "bench",
        "checkpoint": path.name,
        "sha256": file_sha256(path),
        "license": "CC0-1.0",
        "elements": [element],
        "cutoff": parse_parameters(parameters, (element,)).cutoff,
    }
    (Path(model_dir) / f"{name}.yaml").write_text(yaml.safe_dump(card))
    return name


def install_lj_argon(model_dir: Path) -> str:
    """The zero-cost model for overhead measurements: Lennard-Jones argon; returns its name."""
    return install(model_dir, "lj-argon")


def crystals(element: str, a: float, count: int, max_atoms: int = 64, seed: int = 0) -> list[Atoms]:
    """``count`` rattled, strained fcc cells of ``element`` with 4 to ``max_atoms`` atoms, from ``seed``."""
    rng = np.random.default_rng(seed)
    unit = bulk(element, "fcc", a=a, cubic=True)
    structures = []
    while len(structures) < count:
        target = rng.integers(4, max_atoms + 1)
        atoms = unit * max([r for r in REPEATS if len(unit) * np.prod(r) <= target], key=np.prod)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 31)))
        structures.append(atoms)
    return structures


def run_ase(calculator: Callable[[], Calculator], structures: list[Atoms]) -> tuple[float, list[float]]:
    energies = []
    start = time.perf_counter()
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator()
        energies.append(atoms.get_potential_energy())
        atoms.get_forces(), atoms.get_stress()
    return time.perf_counter() - start, energies


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--batch-atoms", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (ASE's calculators use one)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    tune_process(args.threads)
    print(
        json.dumps(
            {"structures": args.count, "torch": torch.__version__, "threads": torch.get_num_threads(),
             "device": args.device, "machine": platform.machine(), "python": platform.python_version()}
        )
    )  # fmt: skip
    print("| model | path | seconds | atoms/s | vs ASE |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, (_, element, a, calculator) in MODELS.items():
            install(Path(folder), name)
            potential = load_model(ModelRegistry(folder), name, args.device)
            structures = crystals(element, a, args.count)
            n_atoms = sum(len(atoms) for atoms in structures)
            ase_seconds, ase_energies = run_ase(calculator, structures)
            rows = [(f"ASE {type(calculator()).__name__}, one structure at a time", ase_seconds)]
            for max_atoms in args.batch_atoms:
                seconds, energies = predict_batched(
                    potential, [AtomicSystem.from_ase(a) for a in structures], max_atoms
                )
                per_atom = np.abs(np.subtract(energies, ase_energies)) / [len(atoms) for atoms in structures]
                assert per_atom.max() < 1e-10, f"{name}: pair family and ASE disagree by {per_atom.max():.2e} eV/atom"
                rows.append((f"mlipserve PairPotential, batches of <= {max_atoms} atoms", seconds))
            for label, seconds in rows:
                print(f"| {name} | {label} | {seconds:.2f} | {n_atoms / seconds:.0f} | {ase_seconds / seconds:.2f}× |")


if __name__ == "__main__":
    main()
