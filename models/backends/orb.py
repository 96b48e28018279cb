"""ORB backend: evaluates a batch of structures with an orb-models checkpoint in one forward pass.

Format: Orbital Materials publish their models as ``.ckpt`` files that are ``torch.save`` of a plain state dict
(tensors only), which orb-models itself reads with ``torch.load(weights_only=True)``. mlipserve reads them the same
way, through :func:`~mlipserve.models.loading.load_weights_only`, so loading a checkpoint runs no code from it. The
file holds weights, not the architecture: the card names it (``options.architecture``: ``orb-v3-conservative``,
``orb-v3-direct`` or ``orb-v2``), the model is built by orb-models' own builder for it
(``orb_models.forcefield.pretrained.orb_v3_conservative_architecture`` etc.), with the published hyper-parameters
unless the card's options give others, and every weight of the file must fit it: a missing or extra key (a direct
checkpoint on a conservative card, say) is refused, rather than left at its random initial value or ignored as
orb-models' lenient loader would. ``options.max_num_neighbors`` (20 or 120 for the published models, the ``-20-``
and ``-inf-`` in their names) is the neighbour limit of the model's graphs, as in orb-models' loaders.

The cutoff is the checkpoint's own (the Bessel basis' ``r_max`` of an orb-v3 file; orb-v2 files store none, and
orb-models fixes 6 Å for them); the elements are those the model's atom embedding and orb-models' featuriser cover
(H to Ts, Z 1-117); the card narrows them to its training set's. The dtype is the checkpoint's (float32 for the
published files) unless ``options.dtype`` says otherwise.

What is batched: each structure becomes orb-models' ``AtomGraphs`` through its own featuriser
(``ase_atoms_to_atom_graphs``: positions wrapped into the cell, the k-nearest-neighbour graph within the cutoff),
the graphs are joined by orb-models' ``batch_graphs``, and one call of the model's ``predict`` returns the energies,
forces and stresses of all of them, which is what ``ORBCalculator`` does for a single structure. A conservative
model's forces and stress are autograd derivatives that its forward pass always computes, so an energy-only
request costs as much as a full one; a direct model's come from its heads.

Deviations from orb-models' own loaders: the model is not compiled with ``torch.compile`` (which needs a C++
compiler at run time and a long first call), and the process-wide torch settings that ``pretrained.load_model``
changes (the default dtype, float32 matmul precision "high", i.e. TF32 on a GPU) are left as they are: graphs are
built in the model's dtype explicitly, and float32 matmuls run at torch's default precision. A few numbers inside
orb-models follow torch's default dtype whatever the model's (the ZBL repulsion's 14.3996·Z_i·Z_j, orb-v2's
softplus shift, the constants the builder makes): in a float64 model they keep float32 rounding, as they do under
orb-models' own loader when the default dtype is float32 at build time; against ``ORBCalculator`` in a process set
to float64 that moves forces by about 1e-7 eV/Å. Structures periodic
along some axes only (slabs) are refused: orb-models cannot build their graphs. orb-v3 OMol models, which need a
total charge and spin per structure, are refused at load: mlipserve passes neither.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols
from ase.stress import voigt_6_to_full_3x3_stress

from ...errors import ErrorCode
from ..cards import CardError, ModelCard
from ..loading import load_weights_only
from ..potential import (
    ALL_PROPERTIES,
    FORCES,
    STRESS,
    Potential,
    Prediction,
    StructureRejected,
    has_volume,
    split_batch,
)
from ..system import AtomicSystem

try:  # orb-models is the optional dependency of this family; the registry reports a missing package clearly
    from orb_models.forcefield import featurization_utilities, pretrained
    from orb_models.forcefield.atomic_system import SystemConfig, ase_atoms_to_atom_graphs
    from orb_models.forcefield.base import batch_graphs
    from orb_models.forcefield.load import load_forcefield_state_dict
except ImportError as error:  # pragma: no cover - exercised only without orb-models
    raise ImportError(f"the ORB backend needs the 'orb-models' package: {error}") from error

#: orb-models' builder of each architecture a card may name.
ARCHITECTURES = {
    "orb-v3-conservative": pretrained.orb_v3_conservative_architecture,
    "orb-v3-direct": pretrained.orb_v3_direct_architecture,
    "orb-v2": pretrained.orb_v2_architecture,
}
#: Builder arguments that are not hyper-parameters a card may set: mlipserve places the model itself, builds the
#: graph configuration from the checkpoint, and cannot pass the total charge and spin a conditioned model needs.
NOT_OPTIONS = ("device", "system_config", "has_charge_spin_cond", "has_stress")
#: Card options that are not builder hyper-parameters.
LOADER_OPTIONS = ("architecture", "max_num_neighbors", "dtype")
#: orb-models gives orb-v2 graphs (whose checkpoints store no cutoff) a 6 Å radius in every loader of
#: ``pretrained``, and its attention envelope (``nn_util.get_cutoff``) is fixed at 6 Å.
ORB_V2_CUTOFF = 6.0
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> ORBPotential:
    """Build the ORB model of ``card`` from ``checkpoint`` (already hash-checked) on ``device``."""
    return ORBPotential(card, checkpoint, device)


class ORBPotential(Potential):
    """An orb-models model that evaluates whole batches of fully periodic or non-periodic structures.

    Card options: ``architecture`` (required), ``max_num_neighbors`` (required), ``dtype`` (``float32`` |
    ``float64``; default: the checkpoint's), and the builder's hyper-parameters where they differ from the
    published models' (``latent_dim``, ``num_message_passing_steps``, ...).
    """

    implemented_properties = ALL_PROPERTIES

    def __init__(self, card: ModelCard, checkpoint: Path, device: torch.device | str):
        self.card = card
        self.device = torch.device(device)
        state = load_weights_only(card, checkpoint)
        if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
            raise CardError(f"{card.name}: {checkpoint.name} is not a state dict of tensors, as ORB .ckpt files are")
        self.dtype = _dtype(card, state)
        r_max = state.get("model.rbf_transform.r_max")
        self.cutoff = float(r_max) if r_max is not None else ORB_V2_CUTOFF
        self.system_config = SystemConfig(radius=self.cutoff, max_num_neighbors=_max_num_neighbors(card))
        model = _build(card, self.system_config).to(self.dtype)  # in the dtype first: loading keeps every digit
        _load_state(card, checkpoint, model, state)
        self.conservative = hasattr(model, "grad_forces_name")
        # The embedding has a row for each atomic number up to its size; the featuriser's one-hot encoding (used
        # by every architecture, 118 classes with class 0 unused) stops one element short of that.
        rows = model.model.atom_emb.embeddings.num_embeddings
        classes = featurization_utilities.get_atom_embedding(_hydrogen(), k_hot=False).shape[1]
        self.elements = frozenset(range(1, min(rows, classes)))
        self.model = model.to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def check_structure(self, system: AtomicSystem) -> None:
        """Refuse a structure periodic along some axes only: orb-models builds graphs for all or none."""
        if system.pbc.any() and not system.pbc.all():
            axes = "".join("xyz"[axis] for axis in range(3) if system.pbc[axis])
            raise StructureRejected(
                ErrorCode.MALFORMED_STRUCTURE,
                f"{self.card.name}: ORB models evaluate structures periodic along all three axes or none; this one "
                f"is periodic along {axes} only (give it a periodic cell with enough vacuum instead)",
            )

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` as one batch of orb-models graphs, in one call of the model's ``predict``."""
        if self.conservative:
            # Forces and stress are autograd derivatives, which the model's forward pass always takes; this must
            # work under the caller's no_grad or inference_mode, so the graphs are built outside it too.
            with torch.inference_mode(False), torch.enable_grad():
                output = self.model.predict(self._batch(systems))
            forces_key, stress_key = self.model.grad_forces_name, self.model.grad_stress_name
        else:
            with torch.no_grad():
                output = self.model.predict(self._batch(systems))
            forces_key, stress_key = "forces", "stress"
        energy = output["energy"].detach().cpu().double().numpy().reshape(-1)
        forces = output[forces_key].detach().cpu().double().numpy() if FORCES in properties else None
        stress = None
        if STRESS in properties and any(has_volume(system) for system in systems):
            voigt = output[stress_key].detach().cpu().double().numpy().reshape(len(systems), 6)
            stress = np.stack([voigt_6_to_full_3x3_stress(row) for row in voigt])
        return split_batch(systems, properties, energy, forces, stress)

    def _batch(self, systems: Sequence[AtomicSystem]) -> Any:
        """The systems' graphs joined by orb-models' ``batch_graphs`` into one."""
        return batch_graphs([self._graph(system) for system in systems])

    def _graph(self, system: AtomicSystem) -> Any:
        """One structure as orb-models' ``AtomGraphs``, built by its own featuriser in the model's dtype."""
        return ase_atoms_to_atom_graphs(
            system.to_ase(),
            self.system_config,
            device=self.device,
            output_dtype=self.dtype,
            graph_construction_dtype=self.dtype,
        )


def _dtype(card: ModelCard, state: dict[str, torch.Tensor]) -> torch.dtype:
    """``options.dtype``, else the dtype of the checkpoint's floating-point weights."""
    name = card.options.get("dtype")
    if name is not None:
        if str(name) not in DTYPES:
            raise CardError(f"{card.name}: options.dtype must be one of {sorted(DTYPES)}, not {name!r}")
        return DTYPES[str(name)]
    found = {value.dtype for value in state.values() if value.is_floating_point()}
    if len(found) != 1 or next(iter(found)) not in DTYPES.values():
        raise CardError(f"{card.name}: the checkpoint's weights are {sorted(map(str, found))}; set options.dtype")
    return next(iter(found))


def _max_num_neighbors(card: ModelCard) -> int:
    value = card.options.get("max_num_neighbors")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CardError(
            f"{card.name}: options.max_num_neighbors must be a positive integer (20 for the published '-20-' "
            f"models, 120 for the '-inf-' ones and orb-v3 OMol), not {value!r}"
        )
    return value


def _build(card: ModelCard, system_config: SystemConfig) -> torch.nn.Module:
    """The model of the card's ``architecture``, built by orb-models with the card's hyper-parameters."""
    name = card.options.get("architecture")
    if name not in ARCHITECTURES:
        raise CardError(f"{card.name}: options.architecture must be one of {sorted(ARCHITECTURES)}, not {name!r}")
    builder = ARCHITECTURES[name]
    allowed = [key for key in inspect.signature(builder).parameters if key not in NOT_OPTIONS]
    hyper = {key: value for key, value in card.options.items() if key not in LOADER_OPTIONS}
    unknown = sorted(set(hyper) - set(allowed))
    if unknown:
        raise CardError(f"{card.name}: unknown options {unknown} for {name}; its hyper-parameters are {allowed}")
    return builder(device="cpu", system_config=system_config, **hyper)


def _load_state(card: ModelCard, checkpoint: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` through orb-models' loader (which renames orb-v2's keys), requiring that every
    weight of the model is in the file and every weight of the file is used."""
    try:
        keys = load_forcefield_state_dict(model, state, strict=False)
    except RuntimeError as error:  # shapes that do not fit: other hyper-parameters
        raise CardError(
            f"{card.name}: {checkpoint.name} does not fit {card.options['architecture']} with the card's "
            f"hyper-parameters: {str(error).splitlines()[-1].strip()}"
        ) from None
    if keys.missing_keys or keys.unexpected_keys:
        raise CardError(
            f"{card.name}: {checkpoint.name} is not a {card.options['architecture']} checkpoint (missing: "
            f"{keys.missing_keys[:5]}, not used: {keys.unexpected_keys[:5]}); check options.architecture"
        )


def _hydrogen() -> Any:
    from ase import Atoms

    return Atoms(chemical_symbols[1])
