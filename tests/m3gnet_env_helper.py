"""Run inside the M3GNet environment (``.venv-m3gnet``), never imported by the test process, which has no matgl.

``build FOLDER --elements Si O ...`` saves a random matgl ``Potential`` over a small ``M3GNet`` (the architecture of
matgl's universal potentials: extensive, smooth spherical Bessel basis, three-body interactions, per-element
reference energies) with ``Potential.save`` (``model.pt``, ``state.pt``, ``model.json``: the files users download)
into ``FOLDER/float64``, and the same weights rounded to float32 into ``FOLDER/float32``. With ``--reference
IN.extxyz OUT.npz`` it then computes the reference numbers of both, as ``reference`` does (in one process:
importing matgl takes seconds).

``reference IN.extxyz OUT.npz DTYPE=FOLDER ...`` loads each model with ``matgl.load_model`` under matgl's default
dtype DTYPE and evaluates each frame with matgl's own ``PESCalculator`` (stress in eV/Å³), one structure at a time
(printing the loop's seconds), and saves energies, forces and stresses (3×3, ASE sign; NaN for a non-periodic frame)
under ``DTYPE/energy``, ``DTYPE/forces``, ... ``PESCalculator`` treats a frame that is periodic in only some
directions as a molecule: such a frame is evaluated with ``pbc=True`` instead (its vacuum must exceed the cutoff),
which is what mlipserve computes for it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase.io import read


def _set_dtype(dtype: str) -> None:
    import matgl

    matgl.set_default_dtype("float", 64 if dtype == "float64" else 32)


def build(
    folder: str, elements: list[str], seed: int, cutoff: float, threebody_cutoff: float, scale: float = 40.0
) -> None:
    import torch
    from ase.data import atomic_numbers

    element_types = tuple(sorted(elements, key=lambda symbol: atomic_numbers[symbol]))
    element_refs = np.random.default_rng(seed).uniform(-5.0, -1.0, size=len(element_types))

    def make_potential(dtype: str):
        _set_dtype(dtype)  # matgl builds its layers and constants in its default dtype
        from matgl.apps.pes import Potential
        from matgl.models import M3GNet

        model = M3GNet(
            element_types=element_types,
            is_intensive=False,
            readout_type="weighted_atom",
            use_smooth=True,
            cutoff=cutoff,
            threebody_cutoff=threebody_cutoff,
            dim_node_embedding=16,
            dim_edge_embedding=16,
            units=16,
            nblocks=2,
        )
        # A large scale (data_std): the random network's forces are then well above rounding.
        return Potential(
            model=model,
            data_mean=torch.tensor(0.05),
            data_std=torch.tensor(scale),
            element_refs=element_refs,
            calc_stresses=True,
        )

    torch.manual_seed(seed)
    double = make_potential("float64")
    double.save(Path(folder) / "float64", metadata={"note": "random weights, for mlipserve's tests"})
    single = make_potential("float32")
    single.load_state_dict(double.state_dict())  # the same weights, rounded to float32
    single.save(Path(folder) / "float32", metadata={"note": "random weights, for mlipserve's tests"})


def reference(frames_path: str, out_path: str, models: list[str]) -> None:
    import matgl
    from matgl.ext.ase import PESCalculator

    results = {}
    for entry in models:
        dtype, folder = entry.split("=", 1)
        _set_dtype(dtype)
        calculator = PESCalculator(matgl.load_model(folder), stress_unit="eV/A3")
        energies, forces, stresses = [], [], []
        frames = read(frames_path, index=":", format="extxyz")
        start = time.perf_counter()
        for atoms in frames:
            periodic = bool(atoms.pbc.any())
            if periodic:
                atoms.pbc = True  # see the module docstring: a slab with its vacuum, as mlipserve evaluates it
            atoms.calc = calculator
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
            stresses.append(atoms.get_stress(voigt=False) if periodic else np.full((3, 3), np.nan))
        print(f"{dtype} seconds {time.perf_counter() - start:.3f}")
        results |= {
            f"{dtype}/energy": np.array(energies),
            f"{dtype}/forces": np.concatenate(forces),
            f"{dtype}/stress": np.array(stresses),
            "n_atoms": np.array([len(f) for f in forces]),
        }
    np.savez(out_path, **results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("folder")
    build_parser.add_argument("--elements", nargs="+", required=True)
    build_parser.add_argument("--seed", type=int, default=0)
    build_parser.add_argument("--cutoff", type=float, default=4.0)
    build_parser.add_argument("--threebody-cutoff", type=float, default=3.5)
    build_parser.add_argument("--scale", type=float, default=40.0, help="the Potential's data_std")
    build_parser.add_argument("--reference", nargs=2, metavar=("FRAMES", "OUT"))
    reference_parser = commands.add_parser("reference")
    reference_parser.add_argument("frames")
    reference_parser.add_argument("out")
    reference_parser.add_argument("models", nargs="+", help="DTYPE=FOLDER, e.g. float64=models/float64")
    args = parser.parse_args()
    if args.command == "build":
        build(args.folder, args.elements, args.seed, args.cutoff, args.threebody_cutoff, args.scale)
        if args.reference:
            models = [f"{dtype}={Path(args.folder) / dtype}" for dtype in ("float64", "float32")]
            reference(*args.reference, models)
    else:
        reference(args.frames, args.out, args.models)


if __name__ == "__main__":
    main()
