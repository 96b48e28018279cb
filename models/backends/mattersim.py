"""MatterSim backend: evaluates a batch of structures with a MatterSim (M3GNet) checkpoint through mattersim's own
batched path.

Format: a MatterSim checkpoint (``mattersim-v1.0.0-1M.pth``, ``-5M.pth``, or one written by mattersim's
``Potential.save``) is a ``torch.save`` of a dict of plain data: ``model_name`` ("m3gnet"), ``model_args`` (the
``M3Gnet`` hyper-parameters: blocks, units, ``cutoff``, ``threebody_cutoff``, ``max_z``), ``model`` (the state dict)
and training state (optimiser, EMA and scheduler state dicts, epoch, metrics, description). It is read with
``torch.load(weights_only=True)`` (:func:`~mlipserve.models.loading.load_weights_only`, allowing beyond torch's
defaults only numpy's numeric arrays); mattersim itself calls ``torch.load`` without a ``weights_only`` argument,
which under torch >= 2.6 means ``weights_only=True`` too. The network is rebuilt by mattersim's ``M3Gnet`` from
``model_args`` and given the state dict, as ``mattersim.forcefield.Potential.from_checkpoint`` does, except that a
state dict lacking any learned weight is refused (mattersim loads with ``strict=False`` and would leave it random);
entries the network does not use are ignored, as mattersim ignores them. The weights evaluated are the ``model``
ones, not the EMA shadow, as in mattersim.

Batched: the whole batch goes through mattersim's own inference path, the one ``Potential.predict_properties``
takes: ``build_dataloader`` (its ``GraphConvertor``: pymatgen's neighbour search within ``cutoff``, three-body
indices within ``threebody_cutoff``) with one batch as large as the request, ``batch_to_dict``, and one call of
``Potential.forward``, whose autograd derivatives give the forces and, by a strain on the cell, the stresses of
every structure. ``MatterSimCalculator`` evaluates one structure at a time by the same path. A molecule is placed
by mattersim in a periodic cube large enough that no atom sees an image; it has no stress here.

Units: energies eV, forces eV/Å, stress eV/Å³ with ASE's sign (tensile positive): mattersim returns the stress in
GPa, converted as ``MatterSimCalculator`` does (× ``ase.units.GPa``). The published models and this backend are
float32 only: mattersim 1.2.3 builds its inputs and one-hot embeddings in float32.

Deviations from ``MatterSimCalculator``, each a fix of a result that would be wrong:

* mattersim divides the strain derivative by the signed determinant of the cell, so a cell given by a left-handed
  set of vectors gets the stress with the wrong sign; here it is divided by the volume.
* mattersim wraps every atom into the cell, along non-periodic axes too, which moves atoms of a slab (or wire)
  that lie outside its cell along the open axis onto the other side, another structure. Here such a system is first
  translated rigidly (and, if its atoms span more than the cell along that axis, the cell vector of the open axis
  is lengthened) so that mattersim's wrapping changes nothing; energy and forces do not depend on either, and the
  stress is the virial divided by the volume of the cell as given, as ASE defines it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.units import GPa

from ...errors import ErrorCode
from ..cards import CardError, ModelCard
from ..loading import NUMPY_ARRAYS, load_weights_only
from ..potential import (
    ALL_PROPERTIES,
    MIN_VOLUME,
    STRESS,
    Potential,
    Prediction,
    StructureRejected,
    has_volume,
    needs_gradients,
    split_batch,
)
from ..system import AtomicSystem

try:  # mattersim is the optional dependency of this family; the registry reports a missing package clearly
    from mattersim.datasets.utils.build import build_dataloader
    from mattersim.forcefield import potential as mattersim_forcefield
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
except ImportError as error:  # pragma: no cover - exercised only without mattersim
    raise ImportError(f"the MatterSim backend needs the 'mattersim' package: {error}") from error

log = logging.getLogger(__name__)

# mattersim warns once per molecule that it puts it in a large periodic box; that is how it evaluates molecules.
warnings.filterwarnings("ignore", message="No PBC detected", category=UserWarning)

#: The only architecture mattersim 1.2.3 builds from a checkpoint.
MODEL_NAME = "m3gnet"


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> MatterSimPotential:
    """Build the MatterSim network stored in ``checkpoint`` (already hash-checked) on ``device``."""
    return MatterSimPotential(card, checkpoint, device)


class MatterSimPotential(Potential):
    """A MatterSim (M3GNet) checkpoint evaluating whole batches in float32 through mattersim's ``Potential``."""

    implemented_properties = ALL_PROPERTIES

    def __init__(self, card: ModelCard, checkpoint: Path, device: torch.device | str):
        self.card = card
        self.device = torch.device(device)
        self.dtype = _card_dtype(card)
        contents = load_weights_only(card, checkpoint, NUMPY_ARRAYS)
        arguments = _model_arguments(card, checkpoint, contents)
        model = M3Gnet(device=str(self.device), **arguments)
        missing, unexpected = model.load_state_dict(contents["model"], strict=False)
        # The basis constants (rbf.*, sbf.*) are buffers that M3Gnet computes from model_args; every learned weight
        # (parameters, and the per-element energy scale and shift fitted to the training set) must be in the file.
        computed = {name for name, _ in model.named_buffers() if not name.startswith("normalizer.")}
        lacking = [key for key in missing if key not in computed]
        if lacking:
            raise CardError(
                f"{card.name}: {checkpoint.name} lacks {len(lacking)} of the network's weights "
                f"({', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}); it is not a checkpoint of an "
                f"M3Gnet with its model_args"
            )
        if unexpected:  # ignored, as mattersim ignores them
            log.warning("%s: %s holds entries the network does not use: %s", card.name, checkpoint.name, unexpected)
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        # mattersim's Potential sets torch's process-wide TF32 matmul flag; the process keeps its own setting.
        allow_tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            self.potential = mattersim_forcefield.Potential(model, device=str(self.device))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        self.model = self.potential.model
        self.cutoff = float(arguments["cutoff"])
        self.threebody_cutoff = float(arguments["threebody_cutoff"])
        # The atom embedding is a one-hot over atomic numbers 0..max_z (0 unused).
        self.elements = frozenset(range(1, int(arguments["max_z"]) + 1))

    def check_structure(self, system: AtomicSystem) -> None:
        """Reject a (partly) periodic system without a cell volume, which mattersim cannot place."""
        if system.is_periodic and system.volume < MIN_VOLUME:
            raise StructureRejected(
                ErrorCode.SINGULAR_CELL,
                f"cell is singular (volume {system.volume:.3g} Å³) but pbc is {system.pbc.tolist()}; MatterSim needs "
                "a cell vector along every axis, open ones included",
            )

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one call of mattersim's ``Potential.forward``."""
        need_gradients = needs_gradients(properties)
        need_stress = STRESS in properties and any(has_volume(system) for system in systems)
        prepared = [_as_mattersim_atoms(system) for system in systems]
        loader = build_dataloader(
            [atoms for atoms, _ in prepared],
            cutoff=self.cutoff,
            threebody_cutoff=self.threebody_cutoff,
            batch_size=len(systems),
            model_type=MODEL_NAME,
            only_inference=True,
        )
        (graph_batch,) = list(loader)  # one batch: the whole request
        if need_gradients:
            # Forces and stress are autograd derivatives: this must work under the caller's no_grad or
            # inference_mode, so the inputs are made outside inference mode too.
            with torch.inference_mode(False), torch.enable_grad():
                inputs = mattersim_forcefield.batch_to_dict(graph_batch, device=self.device)
                output = self.potential.forward(inputs, include_forces=True, include_stresses=need_stress)
        else:
            with torch.no_grad():
                inputs = mattersim_forcefield.batch_to_dict(graph_batch, device=self.device)
                output = self.potential.forward(inputs, include_forces=False, include_stresses=False)

        energy = output["total_energy"].detach().cpu().double().numpy().reshape(-1)
        forces = output["forces"].detach().cpu().double().numpy() if need_gradients else None
        stress = None
        if need_stress:
            # GPa -> eV/Å³, then mattersim's volume (signed, of the cell it was given) -> the system's own volume.
            factors = np.array([factor for _, factor in prepared])
            stress = output["stresses"].detach().cpu().double().numpy() * GPa * factors[:, None, None]
        return split_batch(systems, properties, energy, forces, stress)


def _card_dtype(card: ModelCard) -> torch.dtype:
    name = str(card.options.get("dtype", "float32"))
    if name != "float32":
        raise CardError(f"{card.name}: MatterSim models evaluate in float32 only; options.dtype {name!r} is not served")
    return torch.float32


def _model_arguments(card: ModelCard, checkpoint: Path, contents: Any) -> dict[str, Any]:
    """The ``M3Gnet`` hyper-parameters of a checkpoint dict, after checking that it is a MatterSim checkpoint."""
    if not isinstance(contents, dict) or not isinstance(contents.get("model"), dict):
        raise CardError(f"{card.name}: {checkpoint.name} is not a MatterSim checkpoint (a dict with a 'model' entry)")
    name = contents.get("model_name")
    if name != MODEL_NAME:
        raise CardError(f"{card.name}: {checkpoint.name} holds a {name!r} model; mattersim builds {MODEL_NAME!r} only")
    arguments = contents.get("model_args")
    needed = ("cutoff", "threebody_cutoff", "max_z")
    if not isinstance(arguments, dict) or any(key not in arguments for key in needed):
        raise CardError(f"{card.name}: {checkpoint.name} has no model_args with {', '.join(needed)}")
    return dict(arguments)


def _as_mattersim_atoms(system: AtomicSystem) -> tuple[Atoms, float]:
    """``system`` as the ``Atoms`` handed to mattersim, and the factor that turns mattersim's stress (strain
    derivative over the signed determinant of that cell) into the stress of the system as given.

    A periodic system whose atoms all lie inside its cell along every open axis is handed over unchanged, and the
    factor is ±1 (−1 for a left-handed cell). See the module docstring for what is changed otherwise, and why.
    """
    atoms = Atoms(numbers=system.numbers, positions=system.positions, cell=system.cell, pbc=system.pbc)
    if not system.is_periodic:
        return atoms, 1.0  # mattersim puts it in its own box; no stress is reported
    cell = system.cell.copy()
    positions = system.positions.copy()
    for axis in np.flatnonzero(~system.pbc):
        fractions = np.linalg.solve(cell.T, positions.T)[axis]
        if fractions.min() >= 0.0 and fractions.max() < 1.0:
            continue
        span = float(fractions.max() - fractions.min())
        stretch = max(1.0, 2.0 * span)  # the atoms then span at most half of the lengthened vector ...
        cell[axis] *= stretch
        fractions = fractions / stretch
        positions += (0.5 - (fractions.min() + fractions.max()) / 2) * cell[axis]  # ... around its middle
    atoms = Atoms(numbers=system.numbers, positions=positions, cell=cell, pbc=system.pbc)
    return atoms, float(np.linalg.det(cell)) / system.volume
