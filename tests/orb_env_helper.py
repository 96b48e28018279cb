"""Run inside the ORB environment (``.venv-orb``), never imported by the test process, which has no orb-models.

``build OUT.ckpt --architecture orb-v3-conservative --dtype float64`` saves a randomly initialised model of one of
orb-models' own architectures (small hyper-parameters, listed by :data:`SMALL`) as ``torch.save(state_dict)``, the
format of the ``.ckpt`` files Orbital Materials publish. The energy head's per-element reference energies and the
normalisers start at zero and one; they are set to random values so that the test exercises them.
``reference MODEL.ckpt IN.extxyz OUT.npz --architecture ... --dtype float64`` loads the file with orb-models' own
``pretrained.load_model`` (not compiled), evaluates each frame with its ``ORBCalculator``, one structure at a time
(printing the loop's seconds), and saves energies, forces and stresses (3×3, ASE's sign; NaN for a non-periodic
frame).
``prepare DIR IN.extxyz`` does both for the test's models in one process (importing orb-models takes seconds):
``DIR/tiny-v3.ckpt`` (orb-v3 conservative), ``DIR/tiny-v3-direct.ckpt`` and ``DIR/tiny-v2.ckpt`` (orb-v2, direct),
float64, each with its reference ``DIR/<stem>.npz``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.io import read
from ase.stress import voigt_6_to_full_3x3_stress

#: Hyper-parameters of the small random models, per architecture; the backend reads them from the card's options.
SMALL = {
    "orb-v3-conservative": {
        "latent_dim": 32,
        "base_mlp_hidden_dim": 64,
        "head_mlp_hidden_dim": 32,
        "num_message_passing_steps": 2,
    },
    "orb-v3-direct": {
        "latent_dim": 32,
        "base_mlp_hidden_dim": 64,
        "head_mlp_hidden_dim": 32,
        "num_message_passing_steps": 2,
    },
    "orb-v2": {"num_message_passing_steps": 2},
}
MAX_NUM_NEIGHBORS = 20
#: orb-models' name of each precision (float32 at torch's default matmul precision, as mlipserve runs it).
PRECISIONS = {"float32": "float32-highest", "float64": "float64"}


def architecture(name: str, dtype: torch.dtype) -> torch.nn.Module:
    """A model of orb-models' architecture ``name`` with :data:`SMALL` hyper-parameters, on the CPU, in ``dtype``."""
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.atomic_system import SystemConfig

    builders = {
        "orb-v3-conservative": pretrained.orb_v3_conservative_architecture,
        "orb-v3-direct": pretrained.orb_v3_direct_architecture,
        "orb-v2": pretrained.orb_v2_architecture,
    }
    config = SystemConfig(radius=6.0, max_num_neighbors=MAX_NUM_NEIGHBORS)
    model = builders[name](device="cpu", system_config=config, **SMALL[name])
    return model.to(dtype).eval()


def build(path: str, name: str, dtype: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = architecture(name, getattr(torch, dtype))
    state = model.state_dict()
    generator = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        # Reference energies and normaliser statistics are zeros and ones in a fresh model; random values make them
        # count, as they do in a trained one (small, so that the energies stay those of a potential).
        if key.endswith("reference.linear.weight"):
            value.copy_(torch.rand(value.shape, generator=generator, dtype=value.dtype) * -5.0)
        elif key.endswith("bn.running_mean"):
            value.copy_(torch.rand(value.shape, generator=generator, dtype=value.dtype) * 0.2)
        elif key.endswith("bn.running_var"):
            value.copy_(1.0 + torch.rand(value.shape, generator=generator, dtype=value.dtype))
    torch.save(state, path)


def reference(model_path: str, frames_path: str, out_path: str, name: str, dtype: str) -> None:
    from orb_models.forcefield.calculator import ORBCalculator
    from orb_models.forcefield.pretrained import load_model

    # orb-models' own loader: it builds the architecture in torch's default dtype, sets the default dtype to the
    # precision asked for (ORBCalculator builds its graphs in it), casts the model and loads the state dict.
    model = load_model(architecture(name, torch.float32), model_path, "cpu", precision=PRECISIONS[dtype], compile=False)
    calculator = ORBCalculator(model, device="cpu")
    energies, forces, stresses = [], [], []
    frames = read(frames_path, index=":", format="extxyz")
    start = time.perf_counter()
    for atoms in frames:
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        if atoms.pbc.all():
            stresses.append(voigt_6_to_full_3x3_stress(atoms.get_stress()))
        else:
            stresses.append(np.full((3, 3), np.nan))
    print(f"seconds {time.perf_counter() - start:.3f}")
    np.savez(
        out_path,
        energy=np.array(energies),
        forces=np.concatenate(forces),
        stress=np.array(stresses),
        n_atoms=np.array([len(f) for f in forces]),
    )


#: The test's models: file stem, architecture and seed.
TEST_MODELS = (("tiny-v3", "orb-v3-conservative", 0), ("tiny-v3-direct", "orb-v3-direct", 2), ("tiny-v2", "orb-v2", 1))


def prepare(folder: str, frames_path: str) -> None:
    for stem, name, seed in TEST_MODELS:
        build(f"{folder}/{stem}.ckpt", name, "float64", seed)
        reference(f"{folder}/{stem}.ckpt", frames_path, f"{folder}/{stem}.npz", name, "float64")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("path")
    build_parser.add_argument("--seed", type=int, default=0)
    reference_parser = commands.add_parser("reference")
    reference_parser.add_argument("model")
    reference_parser.add_argument("frames")
    reference_parser.add_argument("out")
    prepare_parser = commands.add_parser("prepare")
    prepare_parser.add_argument("folder")
    prepare_parser.add_argument("frames")
    for sub in (build_parser, reference_parser):
        sub.add_argument("--architecture", choices=sorted(SMALL), default="orb-v3-conservative")
        sub.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.folder, args.frames)
    elif args.command == "build":
        build(args.path, args.architecture, args.dtype, args.seed)
    else:
        reference(args.model, args.frames, args.out, args.architecture, args.dtype)


if __name__ == "__main__":
    main()
