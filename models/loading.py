"""Loading a model: verify its checkpoint, build its family's Potential, check the card against it.

This is where torch and a family's package come in: the backend module is imported only when one of its models
is loaded, so a worker environment needs only its own family's package (``FAMILIES`` in :mod:`.registry`).
"""

from __future__ import annotations

import logging

import torch

from .cards import CardError, ModelCard
from .potential import Backend, Potential, check_card, pick_device
from .registry import FAMILIES, ModelRegistry

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The model's family needs a package that is not installed in this environment."""


def load_model(registry: ModelRegistry, name: str, device: str | torch.device | None = None) -> Potential:
    """The Potential of the model ``name`` on ``device`` (None or "auto": CUDA if available, else the CPU)."""
    return load_potential(registry.card(name), device)


def load_potential(card: ModelCard, device: str | torch.device | None = None) -> Potential:
    """Verify ``card``'s checkpoint hash, build its Potential on ``device``, and check the card against it."""
    backend = load_backend(card.family)
    checkpoint = card.verified_checkpoint()
    potential = backend.load_potential(card, checkpoint, pick_device(device))
    check_card(card, potential)
    log.info("loaded %s (%s %s) on %s", card.name, card.family, card.version, potential.device)
    return potential


def load_backend(family: str) -> Backend:
    """Import a family's backend module, with a clear error when its package is missing."""
    if family not in FAMILIES:
        raise CardError(f"unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}")
    found = FAMILIES[family]
    try:
        return found.backend()
    except ImportError as error:
        raise BackendUnavailable(
            f"model family {family!r} needs the {found.distribution!r} package, which is not importable here "
            f"({error}); install it with: pip install 'mlipserve[{found.extra}]'"
        ) from error
