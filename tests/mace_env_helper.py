"""Run inside the MACE environment (``.venv-mace``), never imported by the test process, which has no mace.

``build OUT.model --elements Si O ...`` saves a random ``ScaleShiftMACE`` (float64, as ``torch.save`` of the module,
the format of mace's ``.model`` files; small unless ``--hidden-irreps``/``--max-ell`` say otherwise).
``reference MODEL IN.extxyz OUT.npz --dtype float64`` evaluates each frame with mace's own ``MACECalculator``, one
structure at a time (printing the loop's seconds), and saves energies, forces and stresses (3×3, ASE sign; NaN for a
non-periodic frame) with the volume that each stress was divided by.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from ase.io import read


def build(path: str, elements: list[str], seed: int, cutoff: float, hidden_irreps: str, max_ell: int) -> None:
    from ase.data import atomic_numbers
    from mace import modules  # first: importing mace lets e3nn 0.4.4 load its constants under torch >= 2.6

    # isort: split
    from e3nn import o3

    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float64)
    numbers = sorted(atomic_numbers[symbol] for symbol in elements)
    rng = np.random.default_rng(seed)
    model = modules.ScaleShiftMACE(
        r_max=cutoff,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=max_ell,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2,
        num_elements=len(numbers),
        hidden_irreps=o3.Irreps(hidden_irreps),
        MLP_irreps=o3.Irreps("8x0e"),
        atomic_energies=rng.uniform(-5.0, -1.0, size=len(numbers)),
        avg_num_neighbors=8.0,
        atomic_numbers=numbers,
        correlation=3,
        gate=torch.nn.functional.silu,
        atomic_inter_scale=1.3,
        atomic_inter_shift=0.1,
    )
    torch.save(model, path)


def reference(model_path: str, frames_path: str, out_path: str, dtype: str) -> None:
    import time

    from mace.calculators import MACECalculator
    from mace.data.neighborhood import get_neighborhood

    calculator = MACECalculator(model_paths=model_path, device="cpu", default_dtype=dtype)
    energies, forces, stresses, volumes = [], [], [], []
    frames = read(frames_path, index=":", format="extxyz")
    warm = frames[0].copy()
    warm.calc = calculator
    warm.get_stress()  # the first call compiles e3nn's code; it is not timed
    start = time.perf_counter()
    for atoms in frames:
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        stresses.append(atoms.get_stress(voigt=False) if atoms.pbc.any() else np.full((3, 3), np.nan))
        # The volume MACECalculator divides the virial by: that of the cell its neighbour list extends.
        cell = get_neighborhood(atoms.positions, calculator.r_max, tuple(atoms.pbc), atoms.cell.array.copy())[3]
        volumes.append(abs(np.linalg.det(cell)))
    print(f"seconds {time.perf_counter() - start:.3f}")
    np.savez(
        out_path,
        energy=np.array(energies),
        forces=np.concatenate(forces),
        stress=np.array(stresses),
        stress_volume=np.array(volumes),
        n_atoms=np.array([len(f) for f in forces]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("path")
    build_parser.add_argument("--elements", nargs="+", required=True)
    build_parser.add_argument("--seed", type=int, default=0)
    build_parser.add_argument("--cutoff", type=float, default=4.5)
    build_parser.add_argument("--hidden-irreps", default="8x0e + 8x1o")
    build_parser.add_argument("--max-ell", type=int, default=2)
    reference_parser = commands.add_parser("reference")
    reference_parser.add_argument("model")
    reference_parser.add_argument("frames")
    reference_parser.add_argument("out")
    reference_parser.add_argument("--dtype", default="float64")
    args = parser.parse_args()
    if args.command == "build":
        build(args.path, args.elements, args.seed, args.cutoff, args.hidden_irreps, args.max_ell)
    else:
        reference(args.model, args.frames, args.out, args.dtype)


if __name__ == "__main__":
    main()
