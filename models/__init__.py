"""Models: the Potential contract, batched graphs, model cards, the registry and one backend per family."""

from .cards import CardError, ModelCard
from .graph import BatchedGraph, build_graph
from .potential import ALL_PROPERTIES, Potential, Prediction, PropertyNotImplemented, StructureRejected, pick_device
from .registry import DEFAULT_MODEL, BackendUnavailable, ModelRegistry, UnknownModel
from .system import AtomicSystem

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
    "build_graph",
    "pick_device",
]
