"""Run inside the GRACE environment (``.venv-grace``), never imported by the test process, which has no TensorFlow.

``build OUT.tar.gz --elements H O Si Cu --layers 2 --dtype float64`` builds a randomly initialised GRACE model
from tensorpotential's own preset (``GRACE_2LAYER_latest`` or ``GRACE_1LAYER_latest``, with small
hyper-parameters and per-element energy shifts), exports it as a SavedModel with ``TPModel.save_model`` and packs
that folder into a ``.tar.gz``, the format of the published GRACE models. ``--also-float32 OUT32.tar.gz`` also
exports a one-layer model with float32 weights, in the same process (TensorFlow starts once). Published models
are exported with XLA (``jit_compile=True``), which compiles the signature once per padded input shape, seconds
each on a CPU; the test models are exported without it unless ``--xla`` is given: that changes how TensorFlow
runs the same graph, not what the backend does.

``reference IN.extxyz MODEL.tar.gz OUT.npz [MODEL OUT ...]`` unpacks each archive and evaluates each frame with
tensorpotential's own ``TPCalculator``, one structure at a time through the package's ``predict_structures``
(largest first, so that XLA compiles once; printing the seconds), and saves energies, forces and stresses (3×3,
ASE sign; NaN for a frame without a cell: TPCalculator reports a stress of the box it invents).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.io import read
from ase.stress import voigt_6_to_full_3x3_stress

with contextlib.redirect_stdout(io.StringIO()):
    import tensorpotential  # noqa: F401  (first: it configures TensorFlow's Keras before TensorFlow loads)

    # isort: split
    import tensorflow as tf


def build(args: argparse.Namespace) -> None:
    """Export the model to ``args.path``, and a one-layer float32 model of the same elements if asked."""
    save(args.path, args.elements, args.layers, args.dtype, args.cutoff, args.seed, args.xla)
    if args.also_float32:
        save(args.also_float32, args.elements, 1, "float32", args.cutoff, args.seed + 1, args.xla)


def save(path: str, elements: list[str], layers: int, dtype: str, cutoff: float, seed: int, xla: bool) -> None:
    from tensorpotential.potentials import get_preset
    from tensorpotential.tpmodel import TPModel

    rng = np.random.default_rng(seed)
    element_map = {symbol: index for index, symbol in enumerate(sorted(elements))}
    settings = dict(
        element_map=element_map,
        rcut=cutoff,
        avg_n_neigh=12.0,
        basis_type="Cheb",
        n_rad_base=4,
        embedding_size=8,
        n_mlp_dens=4,
        max_order=3,
        # energies of the right size: a shift per element, as fitted models have
        atomic_shift_map={index: float(rng.uniform(-5.0, -1.0)) for index in element_map.values()},
    )
    if layers == 1:
        preset = get_preset("GRACE_1LAYER_latest")
        settings.update(lmax=2, n_rad_max=8, prod_func_n_max=8)
    else:
        preset = get_preset("GRACE_2LAYER_latest")
        settings.update(lmax=[2, 2], n_rad_max=[8, 8], prod_func_n_max=[8, 8], indicator_lmax=1)
    tf.random.set_seed(seed)
    model = TPModel(preset(**settings).get_instructions())
    model.build(tf.float64 if dtype == "float64" else tf.float32)
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / Path(path).name.removesuffix(".tar.gz")
        with contextlib.redirect_stdout(io.StringIO()):
            model.save_model(str(saved), jit_compile=xla)
        with tarfile.open(path, "w:gz") as archive:
            archive.add(saved, arcname=saved.name)


def reference(frames_path: str, pairs: list[str]) -> None:
    from tensorpotential.calculator import TPCalculator, predict_structures

    frames = read(frames_path, index=":", format="extxyz")
    for model_path, out_path in zip(pairs[::2], pairs[1::2], strict=True):
        with tempfile.TemporaryDirectory() as folder:
            with tarfile.open(model_path) as archive:
                archive.extractall(folder, filter="data")
            (saved,) = [path.parent for path in Path(folder).rglob("saved_model.pb")]
            with contextlib.redirect_stdout(io.StringIO()):
                calculator = TPCalculator(model=str(saved))
        start = time.perf_counter()
        # predict_structures evaluates copies of the frames (TPCalculator boxes a molecule in place)
        results = predict_structures(frames, calculator, properties=("energy", "forces", "stress"))
        print(f"{model_path}: seconds {time.perf_counter() - start:.3f}")
        stresses = [
            voigt_6_to_full_3x3_stress(stress) if frame.pbc.any() else np.full((3, 3), np.nan)
            for frame, stress in zip(frames, results["stress"], strict=True)
        ]
        np.savez(
            out_path,
            energy=np.array(results["energy"]),
            forces=np.concatenate(results["forces"]),
            stress=np.array(stresses),
            n_atoms=np.array([len(frame) for frame in frames]),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("path")
    build_parser.add_argument("--elements", nargs="+", required=True)
    build_parser.add_argument("--layers", type=int, choices=(1, 2), default=2)
    build_parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    build_parser.add_argument("--cutoff", type=float, default=4.5)
    build_parser.add_argument("--seed", type=int, default=0)
    build_parser.add_argument("--also-float32", default="", help="a second archive: one layer, float32 weights")
    build_parser.add_argument("--xla", action="store_true", help="export with jit_compile=True, as published")
    reference_parser = commands.add_parser("reference")
    reference_parser.add_argument("frames")
    reference_parser.add_argument("pairs", nargs="+", metavar="MODEL OUT")
    args = parser.parse_args()
    if args.command == "build":
        build(args)
    else:
        reference(args.frames, args.pairs)


if __name__ == "__main__":
    main()
