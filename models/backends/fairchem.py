"""fairchem backend: eSEN and UMA models of fairchem-core 2.x, a whole batch per call of fairchem's predict unit.

The format is fairchem-core 2.x's inference checkpoint (``uma-s-1p1.pt``, ``esen_sm_conserving_all.pt``, ...): a
``torch.save`` of the dataclass ``MLIPInferenceCheckpoint``, whose fields are plain containers and tensors: the
model's Hydra config (``model_config``: backbone and heads named by class), its state dict, the EMA state dict that
inference uses, and the task configs (normalisers, per-element reference energies, which dataset heads exist).
It is read with :func:`mlipserve.models.loading.load_weights_only`, that dataclass being the one class allowed
beyond tensors, containers and numeric numpy values, so a file that holds anything else is refused before any of
it runs. The configs are then instantiated by hydra, which calls whatever class a ``_target_`` names; so before
that every class named in them (``_target_``, the backbone's ``model``, each head's ``module`` and ``head_cls``)
must be one of fairchem-core's own (``fairchem.core.*``, or a registry name) or a torch tensor constructor, and a
file naming anything else (say ``os.system``) is refused. fairchem-core 1.x checkpoints (eqV2, the OCP models)
are another format and are refused.

What is batched: every structure becomes a fairchem ``AtomicData`` (as fairchem's ``FAIRChemCalculator`` makes it,
with the card's task, charge and spin), they are collated by ``atomicdata_list_to_batch`` into one graph, and one
call of fairchem's own ``MLIPPredictUnit.predict`` returns the energies, forces and stresses of all of them (ASE's
units and sign: fairchem's stress is ``(1/V) dE/dε``). The neighbour graph is the model's own (its cutoff and
``max_neighbors``, built inside the model), exactly as for the calculator. The predict unit runs fairchem's
``batch`` inference preset (no MoLE merging, no compilation: structures of any composition in one batch) in the
card's ``options.dtype`` (float32, the checkpoints' dtype, by default; float64 on request).

Deviations from ``FAIRChemCalculator``: a conserving model computes forces and stress by autograd inside its
output head whatever is asked, so an energy-only request costs as much as a full one (the extra results are
dropped). A multi-task model (UMA) answers for one task, the card's ``options.task`` (``omat``, ``omol``, ``oc20``,
``odac``, ``omc``); charge and spin multiplicity, which ``omol`` reads from ``atoms.info`` in ASE, are fixed per
card (``options.charge``, ``options.spin``; fairchem's defaults: 0, and multiplicity 1 for ``omol``, else 0). A lone
atom without a cell is refused: fairchem answers it from reference-energy tables that are downloaded, not in the
checkpoint. Reduced-precision modes (TF32, UMA Nitro, merged MoLE + compile) are not used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ErrorCode
from ..cards import CardError, ModelCard
from ..loading import NUMPY_ARRAYS, load_weights_only
from ..potential import (
    ALL_PROPERTIES,
    ENERGY,
    FORCES,
    STRESS,
    Potential,
    Prediction,
    StructureRejected,
    has_volume,
    split_batch,
)
from ..system import AtomicSystem

try:  # fairchem-core is the optional dependency of this family; the registry reports a missing package clearly
    from fairchem.core.datasets.atomic_data import AtomicData, atomicdata_list_to_batch
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint, inference_settings_batch
    from fairchem.core.units.mlip_unit.predict import MLIPPredictUnit
except ImportError as error:  # pragma: no cover - exercised only without fairchem-core
    raise ImportError(f"the fairchem backend needs the 'fairchem-core' package (2.x): {error}") from error


log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Classes the task configs may construct besides fairchem's own: the tensors of per-element reference energies.
TENSOR_TARGETS = frozenset({"torch.tensor", "torch.Tensor", "torch.DoubleTensor", "torch.FloatTensor"})
#: Config keys whose value names a class that hydra or fairchem's registry will construct.
CLASS_KEYS = ("_target_", "model", "module", "head_cls")
#: Default spin multiplicity per task, as fairchem's ``validate_uma_atoms_data`` sets it when ``atoms.info`` has none.
DEFAULT_SPIN = {"omol": 1}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> FairchemPotential:
    """Read the inference checkpoint in ``checkpoint`` (already hash-checked) and build its model on ``device``."""
    return FairchemPotential(card, checkpoint, device)


class FairchemPotential(Potential):
    """A fairchem-core 2.x model (eSEN, UMA) that evaluates whole batches through fairchem's predict unit.

    Card options: ``task`` (the dataset head; required when the model has several), ``dtype`` (``float32``, the
    default, or ``float64``), ``charge`` and ``spin`` (integers given to every structure, for ``omol``).
    """

    def __init__(self, card: ModelCard, checkpoint: Path, device: torch.device | str):
        self.card = card
        self.device = torch.device(device)
        self.dtype = _card_dtype(card)
        saved = _read_checkpoint(card, checkpoint)
        settings = inference_settings_batch()
        settings.base_precision_dtype = self.dtype
        self.unit = _CheckedPredictUnit(saved, self.device.type, settings)
        backbone = self.unit.model.module.backbone
        if not hasattr(backbone, "max_num_elements") or not hasattr(backbone, "cutoff"):
            raise CardError(f"{card.name}: {type(backbone).__name__} models are not supported by mlipserve")
        # The atom embedding is indexed by atomic number: it covers 1 .. max_num_elements - 1.
        self.elements = frozenset(range(1, int(backbone.max_num_elements)))
        self.cutoff = float(backbone.cutoff)
        self.task = _pick_task(card, sorted(self.unit.dataset_to_tasks))
        properties = {task.property for task in self.unit.dataset_to_tasks[self.task]}
        self.implemented_properties = tuple(p for p in ALL_PROPERTIES if p in properties)
        if ENERGY not in properties:
            raise CardError(f"{card.name}: task {self.task!r} of the model predicts no energy")
        self.charge = _card_integer(card, "charge", 0)
        self.spin = _card_integer(card, "spin", DEFAULT_SPIN.get(self.task, 0))

    def check_structure(self, system: AtomicSystem) -> None:
        """A lone atom without a cell: fairchem answers it from downloaded reference tables, not the model."""
        if system.n_atoms == 1 and not system.is_periodic:
            raise StructureRejected(
                ErrorCode.ISOLATED_ATOM,
                f"{self.card.name}: a single atom without periodicity cannot be evaluated by a fairchem model",
            )

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one call of fairchem's predict unit."""
        # A conserving head differentiates the energy by autograd: it must work under the caller's no_grad or
        # inference_mode, so the input tensors are made outside inference mode too.
        with torch.inference_mode(False), torch.enable_grad():
            batch = atomicdata_list_to_batch([self._atomic_data(system) for system in systems])
            output = self.unit.predict(batch)
        energy = output[ENERGY].detach().cpu().double().numpy().reshape(-1)
        forces = output[FORCES].detach().cpu().double().numpy() if FORCES in output else None
        stress = None
        if STRESS in output and any(has_volume(system) for system in systems):
            stress = output[STRESS].detach().cpu().double().numpy().reshape(-1, 3, 3)
        return split_batch(systems, properties, energy, forces, stress)

    def _atomic_data(self, system: AtomicSystem) -> AtomicData:
        """One structure as fairchem's ``AtomicData``, built as ``FAIRChemCalculator`` builds it (the model makes
        its own neighbour graph), with the card's task, charge and spin."""
        atoms = system.to_ase()
        if atoms.pbc.any() and not atoms.pbc.all():
            # A slab may come without a vector along its open axis; fairchem needs a full cell. The added vector
            # is along a non-periodic axis, so it adds no periodic images.
            atoms.set_cell(atoms.cell.complete(), scale_atoms=False)
        atoms.info["charge"], atoms.info["spin"] = self.charge, self.spin
        return AtomicData.from_ase(
            atoms, task_name=self.task, r_edges=False, r_data_keys=["spin", "charge"], target_dtype=self.dtype
        )


class _CheckedPredictUnit(MLIPPredictUnit):
    """fairchem's predict unit, built from a checkpoint that mlipserve has already read and checked.

    ``MLIPPredictUnit`` reads its checkpoint itself with ``torch.load(weights_only=False)``; this subclass replaces
    only that step (``_load_model``) and builds the model with fairchem's own methods, as the original does on the
    CPU and without UMA Nitro (a CUDA-only mode mlipserve does not use): ``_load_hydra_model`` from the checkpoint
    object, then the default derived tasks (e.g. stress from the energy) that the backbone adds.
    """

    def __init__(self, checkpoint: MLIPInferenceCheckpoint, device: str, settings: Any):
        self._checked_checkpoint = checkpoint
        super().__init__("<checked by mlipserve>", device=device, inference_settings=settings)

    def _load_model(self) -> None:
        self._load_hydra_model(self._checked_checkpoint)
        module = self.model.module
        derived = module.backbone.get_default_untrained_tasks(module.tasks, self.inference_settings)
        derived = [task for task in derived if task.name not in module.tasks]
        if derived:
            module.add_tasks(derived)
        self.model.eval()


def _read_checkpoint(card: ModelCard, checkpoint: Path) -> MLIPInferenceCheckpoint:
    """The checkpoint object, read with ``weights_only=True`` and checked to construct only fairchem's classes."""
    saved = load_weights_only(card, checkpoint, allowed=[MLIPInferenceCheckpoint, *NUMPY_ARRAYS])
    if not isinstance(saved, MLIPInferenceCheckpoint):
        raise CardError(
            f"{card.name}: {checkpoint.name} holds a {type(saved).__name__}, not a fairchem-core 2.x inference "
            "checkpoint (MLIPInferenceCheckpoint); fairchem-core 1.x files (eqV2, OCP models) and training "
            "checkpoints cannot be served"
        )
    for where, config in (("model_config", saved.model_config), ("tasks_config", saved.tasks_config)):
        for name in _named_classes(config):
            if not _allowed_class(name):
                raise CardError(
                    f"{card.name}: {checkpoint.name}'s {where} names {name!r}, which is not a fairchem-core class; "
                    "mlipserve constructs only fairchem's own classes from a checkpoint's config"
                )
    return saved


def _named_classes(config: Any) -> Iterator[str]:
    """Every value of a class key (:data:`CLASS_KEYS`) anywhere in a nested config."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key in CLASS_KEYS and isinstance(value, str):
                yield value
            else:
                yield from _named_classes(value)
    elif isinstance(config, list | tuple):
        for value in config:
            yield from _named_classes(value)


def _allowed_class(name: str) -> bool:
    """fairchem-core's classes (a dotted path under ``fairchem.core``, or a name in its registry, which holds only
    registered fairchem classes) and the tensor constructors of reference energies."""
    return name in TENSOR_TARGETS or name.startswith("fairchem.core.") or "." not in name


def _pick_task(card: ModelCard, tasks: list[str]) -> str:
    """The task named by ``options.task``; a model with a single task needs none."""
    task = card.options.get("task")
    if task is not None:
        if str(task) not in tasks:
            raise CardError(f"{card.name}: options.task={task!r} is not a task of the model; its tasks are {tasks}")
        return str(task)
    if len(tasks) == 1:
        return tasks[0]
    raise CardError(f"{card.name}: the model has several tasks; set options.task in the card to one of {tasks}")


def _card_dtype(card: ModelCard) -> torch.dtype:
    name = str(card.options.get("dtype", "float32"))
    if name not in DTYPES:
        raise CardError(f"{card.name}: options.dtype must be one of {sorted(DTYPES)}, not {name!r}")
    return DTYPES[name]


def _card_integer(card: ModelCard, key: str, default: int) -> int:
    value = card.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise CardError(f"{card.name}: options.{key} must be an integer, not {value!r}")
    return int(value)
