"""Run inside the fairchem environment (``.venv-fairchem``), never imported by the test process, which has no fairchem.

``build OUT.pt --kind esen|uma`` saves a small randomly initialised fairchem-core 2.x model in fairchem's inference
checkpoint format (``torch.save`` of ``MLIPInferenceCheckpoint``, as fairchem's training writes ``inference_ckpt.pt``
and as the released ``uma-s-1p1.pt`` / ``esen_sm_conserving_all.pt`` files are): ``esen`` is an eSCNMDBackbone with
one conserving energy/forces/stress head for the ``omat`` task (the eSEN architecture); ``uma`` is an
eSCNMDMoeBackbone with mixture-of-linear-experts layers and one head per dataset (``omat`` and ``omol``, the UMA
architecture). Both have random per-element reference energies, so energies are of a realistic size.
``reference MODEL IN.extxyz OUT.npz --task omat --dtype float64`` evaluates each frame with fairchem's own
``FAIRChemCalculator``, one structure at a time, and saves energies, forces and stresses (3×3, ASE sign; NaN for a
non-periodic frame).
``prepare DIR IN.extxyz`` does all that ``tests/test_fairchem.py`` needs in one process (importing fairchem takes
seconds): ``esen.pt`` and ``uma.pt`` in DIR, the references ``esen-omat.npz``, ``uma-omat.npz`` and ``uma-omol.npz``,
and ``tampered.pt``, the eSEN checkpoint with its backbone's class replaced by ``os.system``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.io import read

TASK = "fairchem.core.units.mlip_unit.mlip_unit.Task"
NORMALIZER = "fairchem.core.modules.normalization.normalizer.Normalizer"
REFERENCES = "fairchem.core.modules.normalization.element_references.ElementReferences"
PROPERTIES = ("energy", "forces", "stress")


def backbone_config(kind: str, cutoff: float, datasets: list[str]) -> dict:
    """A small backbone of the real architecture (eSEN's, or UMA's with two experts)."""
    config = {
        "model": "fairchem.core.models.uma.escn_md.eSCNMDBackbone",
        "max_num_elements": 100,
        "sphere_channels": 8,
        "lmax": 2,
        "mmax": 2,
        "otf_graph": True,
        "max_neighbors": 300,
        "cutoff": cutoff,
        "edge_channels": 8,
        "num_distance_basis": 8,
        "direct_forces": False,
        "regress_forces": True,
        "regress_stress": True,
        "num_layers": 2,
        "hidden_channels": 8,
        "norm_type": "rms_norm_sh",
        "act_type": "gate",
        "ff_type": "grid",
        "dataset_mapping": {name: name for name in datasets},
        "use_dataset_embedding": True,
        "always_use_pbc": False,
    }
    if kind == "uma":
        config |= {"model": "fairchem.core.models.uma.escn_moe.eSCNMDMoeBackbone", "num_experts": 2}
    return config


def task_config(name: str, dataset: str, prefix: str, rmsd: float, references: list[float] | None) -> dict:
    """A fairchem Task config, as the training configs write them (energy with element references)."""
    dims = {"energy": [1], "forces": [3], "stress": [1, 9]}
    task = {
        "_target_": TASK,
        "name": f"{prefix}{name}",
        "level": "atom" if name == "forces" else "system",
        "property": name,
        "out_spec": {"dim": dims[name], "dtype": "float32"},
        "normalizer": {"_target_": NORMALIZER, "mean": 0.0, "rmsd": rmsd},
        "datasets": [dataset],
    }
    if references is not None:
        task["element_references"] = {
            "_target_": REFERENCES,
            "element_references": {"_target_": "torch.DoubleTensor", "_args_": [references]},
        }
    return task


def build(path: str, kind: str, seed: int, cutoff: float, rmsd: float) -> None:
    import hydra
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    datasets = ["omat"] if kind == "esen" else ["omat", "omol"]
    model_config = {
        "_target_": "fairchem.core.models.base.HydraModel",
        "backbone": backbone_config(kind, cutoff, datasets),
        "pass_through_head_outputs": True,
    }
    tasks = []
    if kind == "esen":
        model_config["heads"] = {"efs": {"module": "fairchem.core.models.uma.escn_md.MLP_EFS_Head"}}
        references = [0.0, *rng.uniform(-6.0, -1.0, 99).tolist()]
        tasks += [task_config(name, "omat", "", rmsd, references if name == "energy" else None) for name in PROPERTIES]
    else:
        model_config["model_id"] = "UMA-test"  # a tagged UMA generation (fairchem refuses untagged MoE models)
        model_config["heads"] = {
            "efs": {
                "module": "fairchem.core.models.uma.escn_moe.DatasetSpecificMoEWrapper",
                "head_cls": "fairchem.core.models.uma.escn_md.MLP_EFS_Head",
                "head_kwargs": {"wrap_property": False},  # the wrapper splits the head's tensors by dataset
                "dataset_mapping": {name: name for name in datasets},
            }
        }
        for dataset in datasets:
            references = [0.0, *rng.uniform(-6.0, -1.0, 99).tolist()]
            names = (
                PROPERTIES if dataset == "omat" else ("energy", "forces")
            )  # omol: no stress task; the backbone derives one
            tasks += [
                task_config(name, dataset, f"{dataset}_", rmsd, references if name == "energy" else None)
                for name in names
            ]
    model = hydra.utils.instantiate(model_config)
    with torch.no_grad():
        for parameter in model.parameters():  # a random model whose forces are large enough to test
            parameter.normal_(0.0, 0.4)
    averaged = torch.optim.swa_utils.AveragedModel(model)  # inference reads the EMA weights
    checkpoint = MLIPInferenceCheckpoint(
        model_config=model_config,
        model_state_dict=model.state_dict(),
        ema_state_dict=averaged.state_dict(),
        tasks_config=tasks,
    )
    torch.save(checkpoint, path)


def reference(model_path: str, frames_path: str, out_path: str, task: str, dtype: str) -> None:
    from fairchem.core import FAIRChemCalculator
    from fairchem.core.units.mlip_unit import load_predict_unit
    from fairchem.core.units.mlip_unit.api.inference import inference_settings_batch

    settings = inference_settings_batch()
    settings.base_precision_dtype = getattr(torch, dtype)
    calculator = FAIRChemCalculator(load_predict_unit(model_path, settings, device="cpu"), task_name=task)
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
        energy=np.array(energies),
        forces=np.concatenate(forces),
        stress=np.array(stresses),
        n_atoms=np.array([len(f) for f in forces]),
    )


def prepare(folder: str, frames_path: str, cutoff: float) -> None:
    for kind in ("esen", "uma"):
        build(f"{folder}/{kind}.pt", kind, seed=0, cutoff=cutoff, rmsd=5.0)
    for kind, task in (("esen", "omat"), ("uma", "omat"), ("uma", "omol")):
        reference(f"{folder}/{kind}.pt", frames_path, f"{folder}/{kind}-{task}.npz", task, "float64")
    # A checkpoint that mlipserve must refuse: its config names a class outside fairchem-core.
    saved = torch.load(f"{folder}/esen.pt", weights_only=False)
    saved.model_config["backbone"]["model"] = "os.system"
    torch.save(saved, f"{folder}/tampered.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("path")
    build_parser.add_argument("--kind", choices=["esen", "uma"], default="esen")
    build_parser.add_argument("--seed", type=int, default=0)
    build_parser.add_argument("--cutoff", type=float, default=4.5)
    build_parser.add_argument("--rmsd", type=float, default=5.0, help="the energy normaliser's scale, eV")
    reference_parser = commands.add_parser("reference")
    reference_parser.add_argument("model")
    reference_parser.add_argument("frames")
    reference_parser.add_argument("out")
    reference_parser.add_argument("--task", default="omat")
    reference_parser.add_argument("--dtype", default="float64")
    prepare_parser = commands.add_parser("prepare")
    prepare_parser.add_argument("folder")
    prepare_parser.add_argument("frames")
    prepare_parser.add_argument("--cutoff", type=float, default=4.5)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.folder, args.frames, args.cutoff)
    elif args.command == "build":
        build(args.path, args.kind, args.seed, args.cutoff, args.rmsd)
    else:
        reference(args.model, args.frames, args.out, args.task, args.dtype)


if __name__ == "__main__":
    main()
