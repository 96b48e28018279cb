"""NequIP / Allegro backend: serves deployed NequIP-framework models, batched where the file allows it.

Two file forms are served (see :mod:`.nequip_formats`): TorchScript files from ``nequip-deploy`` (nequip ≤ 0.6) and
AOTInductor packages from ``nequip-compile --mode aotinductor`` (current nequip; ``--target batch`` for batched
inference, ``--target ase`` one structure per call). Both run on torch alone; the ``nequip`` package is not needed.

Neither form is a pickle, so ``torch.load(weights_only=True)`` does not apply to them. A TorchScript file is read by
``torch.jit.load``, whose own unpickler rebuilds only tensors and the TorchScript classes compiled from the file's
code; that code then runs in the TorchScript interpreter as the model. An AOTInductor package holds a compiled
shared library that ``aoti_load_package`` loads into the process: native code with the server's rights. For both,
the guard is that only a file inside the model directory whose sha256 matches the card is loaded. A pickled
training checkpoint (``.ckpt``) is recognised by its zip entries and refused without being unpickled.

The cutoff and the atom type names are read from the file (the registry checks the card against them). A model's
types are names, not elements: the card maps elements to them with ``options.type_names`` (``{Li: Li, Cl: Cl}``);
without that option the type names must be element symbols, and they are the potential's elements.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from ..cards import CardError, ModelCard
from ..potential import ALL_PROPERTIES, Potential, Prediction, split_batch
from ..system import AtomicSystem
from .nequip_formats import (
    TORCHSCRIPT,
    AOTInductorModel,
    LegacyTorchScriptModel,
    UnsupportedModelFile,
    sniff_format,
)

log = logging.getLogger(__name__)

#: Card options this family understands.
CARD_OPTIONS = frozenset({"type_names"})


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> NequIPPotential:
    """Load the deployed model ``checkpoint`` (already hash-checked) on ``device``."""
    unknown = sorted(set(card.options) - CARD_OPTIONS)
    if unknown:
        raise CardError(f"{card.name}: unknown options {unknown} for family nequip; known: {sorted(CARD_OPTIONS)}")
    try:
        kind = sniff_format(checkpoint)
        loader = LegacyTorchScriptModel if kind == TORCHSCRIPT else AOTInductorModel
        model = loader(checkpoint, device)
    except UnsupportedModelFile as error:
        raise CardError(f"{card.name}: {error}") from error
    return NequIPPotential(card, model, device)


def atom_type_indices(card: ModelCard, type_names: Sequence[str]) -> dict[int, int]:
    """Map atomic numbers to the model's type indices: by ``options.type_names`` (element -> type name), or, without
    that option, by the type names themselves, which must then be element symbols."""
    mapping = card.options.get("type_names")
    listed = ", ".join(type_names)
    if mapping is None:
        not_elements = [name for name in type_names if name not in atomic_numbers]
        if not_elements:
            raise CardError(
                f"{card.name}: the model's type names ({listed}) are not all element symbols; map the card's elements "
                "to them with options.type_names, e.g. {element: type name}"
            )
        mapping = {name: name for name in type_names}
    if not isinstance(mapping, dict) or any(element not in atomic_numbers for element in mapping):
        raise CardError(f"{card.name}: options.type_names must map element symbols to the model's type names")
    unknown = sorted(str(name) for name in mapping.values() if name not in type_names)
    if unknown:
        raise CardError(f"{card.name}: options.type_names names types {unknown} that the model lacks (it has {listed})")
    return {atomic_numbers[element]: list(type_names).index(name) for element, name in mapping.items()}


class NequIPPotential(Potential):
    """A deployed NequIP or Allegro model; energies, forces and (if the model computes it) stress."""

    implemented_properties = ALL_PROPERTIES

    def __init__(self, card: ModelCard, model: LegacyTorchScriptModel | AOTInductorModel, device: torch.device):
        self.card = card
        self.model = model
        self.device = torch.device(device)
        self.dtype = model.dtype
        self.cutoff = model.r_max
        self.type_index = atom_type_indices(card, model.type_names)
        self.elements = frozenset(self.type_index)
        self._lookup = np.full(len(chemical_symbols), -1, dtype=np.int64)
        for number, index in self.type_index.items():
            self._lookup[number] = index
        if not model.has_stress:
            log.info("%s: the model file computes no stress; stress will be null", card.name)

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate ``systems``; stress is None for molecules and for models deployed without a stress output.

        A deployed model computes forces (and stress) in its forward pass whatever is asked: they are dropped here.
        """
        output = self.model.evaluate(systems, [self._lookup[system.numbers] for system in systems])
        return split_batch(systems, properties, output.energy, output.forces, output.stress)
