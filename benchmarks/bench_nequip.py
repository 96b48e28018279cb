"""Throughput of deployed NequIP models: nequip's own one-structure-at-a-time loop vs mlipserve on the same structures.

Two model files, each timed three ways on the same structures (energy, forces and, where the model has it, stress):

- ``aotinductor``: a NequIP model trained here for two epochs on EMT Al-Cu data (``tests/data/nequip/tiny_nequip.yaml``
  scaled to nequip's tutorial size: 4 layers, 32 features, l_max 1, r_max 4 Å) and compiled twice with
  ``nequip-compile --mode aotinductor --device cpu`` (``--target ase`` and ``--target batch``). (a) a loop over
  ``NequIPCalculator.from_compiled_model`` (the ase package); (b) mlipserve's Potential in-process on the batch
  package, in batches of the server's CPU atom budget; (c) ``mlipserve serve`` through the Python client.
- ``torchscript``: the nequip 0.5.6 LiCl model of ../shared/fixtures. (a) a loop calling the TorchScript module on
  one structure at a time with nequip 0.5.6's inputs (what its ASE calculator did); (b) and (c) as above.

    python benchmarks/bench_nequip.py --threads 1                      # both
    python benchmarks/bench_nequip.py --threads 1 --only torchscript   # no training or compiling

On a shared CPU, ``--threads 1`` keeps OpenMP's thread barriers (hundreds per AOTInductor call) from waiting on
descheduled threads, which otherwise dominates every path that makes many small calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from mlipserve.models import AtomicSystem, ModelRegistry
from mlipserve.models.cards import file_sha256
from mlipserve.models.loading import load_model
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.tuning import tune_process

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from serving import served  # noqa: E402
from timing import time_batched, time_served  # noqa: E402

from tests.test_nequip_aotinductor import compile_command, finish, random_alloy, run, train, training_data  # noqa: E402
from tests.test_nequip_torchscript import DEPLOYED, nequip_056_inputs  # noqa: E402

TUTORIAL_SIZE = [
    "++training_module.model.num_layers=4",
    "++training_module.model.num_features=32",
    "++training_module.model.radial_mlp_depth=2",
    "++training_module.model.radial_mlp_width=64",
]
REPEATS = [(i, j, k) for i in range(1, 5) for j in range(1, 4) for k in range(1, 3) if i >= j >= k]


def alcu_structures(count: int, seed: int = 0) -> list[Atoms]:
    """Rattled, strained Al-Cu fcc cells of 4 to 48 atoms."""
    rng = np.random.default_rng(seed)
    return [random_alloy(rng, REPEATS[i % len(REPEATS)], seed=i) for i in range(count)]


def licl_structures(count: int, seed: int = 0) -> list[Atoms]:
    """Rattled, strained rocksalt LiCl cells of 2 to 64 atoms."""
    rng = np.random.default_rng(seed)
    shapes = [(bulk("LiCl", "rocksalt", a=5.14), (1, 1, 1))]
    shapes += [(bulk("LiCl", "rocksalt", a=5.14, cubic=True), repeat) for repeat in [(1, 1, 1), (2, 1, 1), (2, 2, 1)]]
    shapes += [(bulk("LiCl", "rocksalt", a=5.14, cubic=True), (2, 2, 2))]
    structures = []
    for index in range(count):
        base, repeat = shapes[index % len(shapes)]
        atoms = base.repeat(repeat)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=index)
        structures.append(atoms)
    return structures


def write_card(folder: Path, name: str, source: Path, elements: str, cutoff: float) -> None:
    shutil.copy(source, folder / source.name)
    card = {"name": name, "family": "nequip", "version": "bench", "checkpoint": source.name}
    card |= {"sha256": file_sha256(folder / source.name), "license": "MIT", "elements": elements, "cutoff": cutoff}
    (folder / f"{name}.yaml").write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in card.items()))


def build_packages(work: Path) -> tuple[Path, Path]:
    """Train the tutorial-sized NequIP model and compile it for ``--target ase`` and ``--target batch``."""
    checkpoint = train("tiny_nequip.yaml", training_data(work / "alcu.extxyz"), work, TUTORIAL_SIZE)
    packages = {target: work / f"bench-{target}.nequip.pt2" for target in ("ase", "batch")}
    processes = {
        target: run(compile_command(checkpoint, path, target), work, f"{target}.log")
        for target, path in packages.items()
    }
    for target, process in processes.items():
        finish(process, work, f"{target}.log", f"nequip-compile --target {target}")
    return packages["ase"], packages["batch"]


def time_loop(evaluate, structures: list[Atoms]) -> float:
    evaluate(structures[0])  # warm-up
    start = time.perf_counter()
    for atoms in structures:
        evaluate(atoms)
    return time.perf_counter() - start


def nequip_calculator_loop(package: Path, structures: list[Atoms]) -> float:
    from nequip.integrations.ase import NequIPCalculator

    calculator = NequIPCalculator.from_compiled_model(
        str(package), device="cpu", chemical_species_to_atom_type_map=True
    )

    def evaluate(atoms: Atoms) -> None:
        atoms = atoms.copy()
        atoms.calc = calculator
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

    seconds = time_loop(evaluate, structures)
    torch.set_default_dtype(torch.float32)  # nequip's loader set float64 for the whole process
    return seconds


def torchscript_loop(structures: list[Atoms]) -> float:
    extra = {"type_names": "", "r_max": ""}
    module = torch.jit.load(str(DEPLOYED), map_location="cpu", _extra_files=extra)
    type_names, r_max = extra["type_names"].decode().split(), float(extra["r_max"])
    return time_loop(lambda atoms: module(nequip_056_inputs(atoms, type_names, r_max)), structures)


def batched_in_process(model_dir: Path, model: str, structures: list[Atoms], policy: BatchPolicy) -> float:
    potential = load_model(ModelRegistry(model_dir), model, "cpu")
    return time_batched(potential, [AtomicSystem.from_ase(atoms) for atoms in structures], policy.max_atoms)


def http_server(
    model_dir: Path, model: str, structures: list[Atoms], policy: BatchPolicy, threads: int | None
) -> float:
    options = ["--model-dir", str(model_dir), "--batch-atoms", str(policy.max_atoms)]
    options += [] if threads is None else ["--threads", str(threads)]
    with served(model, *options) as url:
        return time_served(url, model, structures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["aotinductor", "torchscript"], help="run one of the two")
    parser.add_argument("--count", type=int, default=128, help="structures per model (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads in every path (default: all cores)")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    tune_process(args.threads)  # the server's thread and allocator settings, for every path
    policy = BatchPolicy().for_device("cpu")
    records = []
    with tempfile.TemporaryDirectory() as work:
        model_dir = Path(work) / "models"
        model_dir.mkdir()
        runs = []
        if args.only in (None, "torchscript"):
            write_card(model_dir, "licl-nequip056", DEPLOYED, "Li Cl", 4.0)
            runs.append(
                ("licl-nequip056", licl_structures(args.count), lambda s: torchscript_loop(s), "a: TorchScript loop")
            )
        if args.only in (None, "aotinductor"):
            ase_package, batch_package = build_packages(Path(work))
            write_card(model_dir, "alcu-nequip-batch", batch_package, "Al Cu", 4.0)
            loop = lambda s: nequip_calculator_loop(ase_package, s)  # noqa: E731
            runs.append(("alcu-nequip-batch", alcu_structures(args.count), loop, "a: NequIPCalculator loop"))
        for model, structures, loop, loop_name in runs:
            n_atoms = sum(len(atoms) for atoms in structures)
            timings = {
                loop_name: loop(structures),
                "b: batched in-process": batched_in_process(model_dir, model, structures, policy),
                "c: HTTP server": http_server(model_dir, model, structures, policy, args.threads),
            }
            records.append({"model": model, "structures": len(structures), "atoms": n_atoms, "seconds": timings})

    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}"
    print(f"{machine}; torch threads {torch.get_num_threads()}; CPU atom budget {policy.max_atoms}")
    print("| model | path | seconds | structures/s | atoms/s |\n|---|---|---|---|---|")
    for record in records:
        for name, seconds in record["seconds"].items():
            n, atoms = record["structures"], record["atoms"]
            print(f"| {record['model']} | {name} | {seconds:.2f} | {n / seconds:.1f} | {atoms / seconds:.0f} |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"machine": machine, "runs": records}, indent=2))


if __name__ == "__main__":
    main()
