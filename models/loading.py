"""Loading a model: verify its checkpoint, build its family's Potential, check the card against it.

This is where torch and a family's package come in: the backend module is imported only when one of its models
is loaded, so a worker environment needs only its own family's package (``FAMILIES`` in :mod:`.registry`).

Checkpoints whose format is a ``torch.save`` of tensors and plain data (SevenNet, CHGNet) are read with
:func:`load_weights_only`: ``torch.load(weights_only=True)``, whose unpickler builds only tensors, containers,
numbers and strings (plus the harmless classes a family names), so a crafted file cannot run code even if its hash
was pinned by mistake. Formats that cannot be read that way say why in their backend's docstring.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import pickle
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cards import CardError, ModelCard
from .committee import is_committee
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
    checkpoint = Path() if is_committee(card) else card.verified_checkpoint()  # a committee's members have theirs
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


def _numpy_multiarray() -> Any:
    """numpy's ``multiarray`` module: ``numpy._core.multiarray`` from numpy 2 on, ``numpy.core.multiarray`` before."""
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        return importlib.import_module("numpy.core.multiarray")


def _numpy_array_globals() -> list[Any]:
    """What the unpickler needs to rebuild numpy arrays and scalars of numeric dtypes, and nothing else.

    ``_reconstruct`` makes an empty array of an allowed class (only ``ndarray`` is), ``scalar`` a number from its
    bytes, and the dtype classes hold a dtype's state; none of them calls anything given in the file. Object
    arrays stay refused: their dtype class (``ObjectDType``) is not listed. A file written under numpy 1 names
    ``numpy.core.multiarray``, one written under numpy 2 ``numpy._core.multiarray``: both names are allowed.
    """
    multiarray = _numpy_multiarray()
    dtype_classes = dict.fromkeys(type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG")
    return [
        *((multiarray._reconstruct, f"{module}._reconstruct") for module in _MULTIARRAY_NAMES),
        *((multiarray.scalar, f"{module}.scalar") for module in _MULTIARRAY_NAMES),
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


_MULTIARRAY_NAMES = ("numpy.core.multiarray", "numpy._core.multiarray")
#: Classes and functions a checkpoint may name for its numeric numpy arrays (SevenNet keeps some in its config).
NUMPY_ARRAYS: tuple[Any, ...] = tuple(_numpy_array_globals())

# torch keeps the extra allowed globals in one process-wide set, which ``safe_globals`` adds to on entry and removes
# from on exit; loads that widen it are serialised so that one load's exit cannot narrow another's mid-load.
_SAFE_GLOBALS_LOCK = threading.Lock()


def load_weights_only(card: ModelCard, checkpoint: Path, allowed: Sequence[Any] = ()) -> Any:
    """Read a ``torch.save`` file with ``torch.load(weights_only=True)``, onto the CPU.

    The file is read once and its bytes are checked against the card's sha256 again before unpickling, so the
    bytes unpickled are the bytes verified, even if the file is replaced after :meth:`ModelCard.verified_checkpoint`.
    ``allowed`` names classes and functions beyond torch's own allowlist that the format needs (e.g.
    :data:`NUMPY_ARRAYS`). Anything else in the file (a class, a function such as ``os.system``) is refused with
    a :class:`CardError` naming the card and the file, and nothing of the file is executed.
    """
    data = checkpoint.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise CardError(
            f"{card.name}: checkpoint {checkpoint} changed while it was loaded (sha256 {digest}, the card says "
            f"{card.sha256}); refusing to load it"
        )
    try:
        with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals(list(allowed)):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CardError(
            f"{card.name}: {checkpoint.name} holds more than tensors and plain data ({_unpickler_reason(error)}); "
            f"mlipserve reads {card.family} checkpoints with torch.load(weights_only=True) and will not unpickle it"
        ) from None
    except (RuntimeError, EOFError, ValueError) as error:  # not a torch.save file at all (truncated, other format)
        raise CardError(f"{card.name}: {checkpoint.name} is not a {card.family} checkpoint: {error}") from None


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The restricted unpickler's own reason (e.g. ``unsupported GLOBAL posix.system``), without torch's advice
    to retry with ``weights_only=False``, which is exactly what must not be done with such a file."""
    inner = error.__context__ if error.__context__ is not None else error
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
    return reason.split(". ")[0].rstrip(".")  # its first sentence: the rest tells how to allow the global
