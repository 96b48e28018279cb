"""Models: the Potential contract, batched graphs, model cards, the registry and one backend per family.

Importing this package does not import torch: the names of :mod:`.potential` and :mod:`.graph` (vesin imports torch
where it is installed) are loaded on first use, so the HTTP front end may read cards, the registry and the shared
checks without a model framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .cards import CardError, ModelCard
from .checks import StructureRejected, check_elements
from .prediction import ALL_PROPERTIES, Prediction
from .registry import DEFAULT_MODEL, ModelRegistry, UnknownModel, UnusableCard
from .system import AtomicSystem

if TYPE_CHECKING:
    from .graph import BatchedGraph, build_graph
    from .loading import BackendUnavailable, load_model, load_potential
    from .potential import Potential, PropertyNotImplemented, pick_device

#: The names imported when first asked for, and their modules.
_LAZY = {
    "BackendUnavailable": "loading",
    "load_model": "loading",
    "load_potential": "loading",
    "BatchedGraph": "graph",
    "build_graph": "graph",
    "Potential": "potential",
    "PropertyNotImplemented": "potential",
    "pick_device": "potential",
}

__all__ = [
    "ALL_PROPERTIES",
    "DEFAULT_MODEL",
    "AtomicSystem",
    "BackendUnavailable",
    "BatchedGraph",
    "CardError",
    "ModelCard",
    "ModelRegistry",
    "Potential",
    "Prediction",
    "PropertyNotImplemented",
    "StructureRejected",
    "UnknownModel",
    "UnusableCard",
    "build_graph",
    "check_elements",
    "load_model",
    "load_potential",
    "pick_device",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
