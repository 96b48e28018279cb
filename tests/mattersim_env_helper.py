"""Run inside the MatterSim environment (``.venv-mattersim``), never imported by the test process, which has no
mattersim.

``build OUT.pth`` saves a random ``M3Gnet`` (small hyper-parameters, mattersim's own initialisation) with
mattersim's ``Potential.save``, the format of the published ``mattersim-v1.0.0-*.pth`` files. Its per-element
energy scale and shift (``AtomScaling``, fitted to the training set in a real model, 1 and 0 in a fresh one) are
drawn at random, so that the energies, forces and stresses are large enough to compare.
``reference MODEL IN.extxyz OUT.npz`` evaluates each frame with mattersim's own ``MatterSimCalculator``, one
structure at a time (printing the loop's seconds), and saves energies, forces and stresses (3×3, ASE sign; NaN
for a non-periodic frame). ``build OUT.pth --reference IN.extxyz OUT.npz`` does both in one process (importing
mattersim takes seconds).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.io import read


def build(path: str, seed: int, cutoff: float, threebody_cutoff: float, units: int, blocks: int) -> None:
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
    from mattersim.forcefield.potential import Potential

    torch.manual_seed(seed)
    model = M3Gnet(
        num_blocks=blocks, units=units, max_l=3, max_n=3, cutoff=cutoff, threebody_cutoff=threebody_cutoff, device="cpu"
    )
    generator = torch.Generator().manual_seed(seed)
    scaling = model.normalizer
    scaling.scale.copy_(torch.empty(scaling.scale.shape).uniform_(20.0, 40.0, generator=generator))
    scaling.shift.copy_(torch.empty(scaling.shift.shape).uniform_(-5.0, -1.0, generator=generator))
    Potential(model, device="cpu").save(path)


def reference(model_path: str, frames_path: str, out_path: str) -> None:
    from mattersim.forcefield.potential import MatterSimCalculator

    calculator = MatterSimCalculator.from_checkpoint(model_path, device="cpu")
    energies, forces, stresses = [], [], []
    frames = read(frames_path, index=":", format="extxyz")
    start = time.perf_counter()
    for atoms in frames:
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        stresses.append(atoms.get_stress(voigt=False) if atoms.pbc.any() else np.full((3, 3), np.nan))
    print(f"seconds {time.perf_counter() - start:.3f}")
    np.savez(
        out_path,
        energy=np.array(energies, dtype=np.float64),
        forces=np.concatenate(forces).astype(np.float64),
        stress=np.array(stresses, dtype=np.float64),
        n_atoms=np.array([len(f) for f in forces]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("path")
    build_parser.add_argument("--seed", type=int, default=0)
    build_parser.add_argument("--cutoff", type=float, default=4.5)
    build_parser.add_argument("--threebody-cutoff", type=float, default=3.5)
    build_parser.add_argument("--units", type=int, default=16)
    build_parser.add_argument("--blocks", type=int, default=2)
    build_parser.add_argument("--reference", nargs=2, metavar=("FRAMES", "OUT"))
    reference_parser = commands.add_parser("reference")
    reference_parser.add_argument("model")
    reference_parser.add_argument("frames")
    reference_parser.add_argument("out")
    args = parser.parse_args()
    if args.command == "build":
        build(args.path, args.seed, args.cutoff, args.threebody_cutoff, args.units, args.blocks)
        if args.reference:
            reference(args.path, *args.reference)
    else:
        reference(args.model, args.frames, args.out)


if __name__ == "__main__":
    main()
