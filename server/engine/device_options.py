"""Options a GPU user expects, all off by default because each changes the numbers a model gives.

* ``tf32``: float32 matrix products and convolutions on TensorFloat-32 tensor cores (10-bit mantissa; CUDA only).
  It is a process-wide torch setting: in ``mlipserve serve`` every float32 model of the process gets it.
* ``compile``: ``torch.compile`` of the family's torch module (``potential.model``), in place, warmed up once at
  start-up so that a model that does not compile is refused before it takes requests.
* ``cueq``: NVIDIA's cuEquivariance kernels for the families that support them (MACE, SevenNet), through the card
  option ``cueq`` their backends read; it needs a CUDA device and the ``cuequivariance_torch`` package.

Each option a model cannot take is refused with :class:`DeviceOptionError` and a message saying why.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import torch

from ...models.cards import ModelCard
from ...models.loading import load_potential
from ...models.potential import Potential, pick_device
from ...models.prediction import ALL_PROPERTIES
from ...models.registry import ModelRegistry
from ...models.system import AtomicSystem
from ..config import DeviceOptions

log = logging.getLogger(__name__)

#: Families whose backends turn cuEquivariance kernels on through ``options.cueq``.
CUEQ_FAMILIES = ("mace", "sevennet")
CUEQ_PACKAGE = "cuequivariance_torch"


class DeviceOptionError(ValueError):
    """An option this model, device or environment cannot take."""


def load_with_options(
    registry: ModelRegistry, name: str, device: str | torch.device | None, options: DeviceOptions
) -> Potential:
    """Load model ``name`` on ``device`` (None or "auto": CUDA if available) with ``options`` applied."""
    card = registry.card(name)
    target = pick_device(None if device == "auto" else device)
    check_options(card, target, options)
    if options.cueq:
        card = dataclasses.replace(card, options={**card.options, "cueq": "true"})
    potential = load_potential(card, target)
    apply_options(potential, options)
    return potential


def check_options(card: ModelCard, device: torch.device, options: DeviceOptions) -> None:
    """Refuse options that ``card``'s family, ``device`` or this environment cannot take."""
    if options.tf32 and device.type != "cuda":
        raise DeviceOptionError(f"--tf32 applies to CUDA devices only; {card.name} runs on {device}")
    if options.cueq:
        if card.family not in CUEQ_FAMILIES:
            raise DeviceOptionError(
                f"--cueq: cuEquivariance kernels exist for the {' and '.join(CUEQ_FAMILIES)} families, "
                f"not for {card.name} ({card.family})"
            )
        if importlib.util.find_spec(CUEQ_PACKAGE) is None:
            raise DeviceOptionError(
                f"--cueq needs the {CUEQ_PACKAGE} package, which is not installed here: pip install "
                "cuequivariance-torch cuequivariance-ops-torch-cu12 (or -cu13, to match your CUDA)"
            )
        if device.type != "cuda":
            raise DeviceOptionError(f"--cueq needs a CUDA device; {card.name} runs on {device}")


def apply_options(potential: Potential, options: DeviceOptions) -> None:
    """Turn on TF32 and compile ``potential``'s module, as ``options`` say (cuEq is applied at load time)."""
    if options.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if options.compile:
        module = getattr(potential, "model", None)
        if not isinstance(module, torch.nn.Module):
            raise DeviceOptionError(
                f"--compile: {potential.card.name} ({potential.card.family}) has no torch module to compile; its "
                "model is evaluated by mlipserve's own tensor code"
            )
        module.compile(dynamic=True)
        try:
            potential.predict([warm_up_system(potential)], ALL_PROPERTIES, checked=True)
        except Exception as error:
            raise DeviceOptionError(f"--compile: {potential.card.name} does not run compiled: {error!r}") from error
    if options.enabled():
        log.info("%s runs with %s", potential.card.name, ", ".join(options.enabled()))


def warm_up_system(potential: Potential) -> AtomicSystem:
    """A small periodic cell of one of the potential's elements, for a first (compiling) call."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers = [min(potential.elements)] * len(atoms)
    atoms.rattle(0.05, seed=0)
    return AtomicSystem.from_ase(atoms)
