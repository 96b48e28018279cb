"""The model registry: maps a model name to its card and its family's loader.

Built-in cards ship with mlipserve; user cards are ``*.yaml`` files in the model directory. Each family's backend
is imported only when one of its models is loaded, so a worker environment needs only its own family's package.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch

from .cards import CardError, ModelCard
from .potential import Potential, pick_device

log = logging.getLogger(__name__)

DEFAULT_MODEL = "7net-0"
DEFAULT_MODEL_DIR = Path("~/.mlipserve/models").expanduser()

#: family -> (backend module, the distribution it needs, the pip extra that installs it)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "sevennet": ("mlipserve.models.backends.sevennet", "sevenn", "sevenn"),
    "chgnet": ("mlipserve.models.backends.chgnet", "chgnet", "chgnet"),
    "mtp": ("mlipserve.models.backends.mtp", "torch", "torch"),
    "ace": ("mlipserve.models.backends.ace", "torch", "torch"),
    "mace": ("mlipserve.models.backends.mace", "mace-torch", "mace"),
    "nequip": ("mlipserve.models.backends.nequip", "torch", "torch"),
}


class UnknownModel(KeyError):
    """No card has that name."""

    def __str__(self) -> str:
        return str(self.args[0])


class BackendUnavailable(RuntimeError):
    """The model's family needs a package that is not installed in this environment."""


def builtin_cards() -> list[ModelCard]:
    """The cards that ship inside mlipserve."""
    folder = resources.files("mlipserve.models").joinpath("cards")
    return [
        ModelCard.from_yaml(Path(str(entry)), builtin=True)
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    ]


class ModelRegistry:
    """Model cards by name: the built-in ones, then those found in ``model_dir`` (which may override them)."""

    def __init__(self, model_dir: Path | str | None = None, extra_cards: Iterable[ModelCard] = ()):
        self.model_dir = Path(model_dir).expanduser() if model_dir else DEFAULT_MODEL_DIR
        self._cards: dict[str, ModelCard] = {}
        self.problems: list[str] = []
        for card in builtin_cards():
            try:  # a built-in card whose file the user brings is resolved (and its hash pin read) in model_dir
                self._cards[card.name] = card.in_model_dir(self.model_dir)
            except CardError as error:
                self.problems.append(str(error))
                self._cards[card.name] = card.in_model_dir(self.model_dir, read_pin=False)
        if self.model_dir.is_dir():
            for path in sorted(self.model_dir.glob("*.y*ml")):
                try:
                    card = ModelCard.from_yaml(path)
                except CardError as error:
                    self.problems.append(str(error))
                    log.warning("skipping model card %s: %s", path, error)
                    continue
                self._cards[card.name] = card
        for card in extra_cards:
            self._cards[card.name] = card

    def names(self) -> list[str]:
        return sorted(self._cards)

    def cards(self) -> list[ModelCard]:
        return [self._cards[name] for name in self.names()]

    def card(self, name: str) -> ModelCard:
        try:
            return self._cards[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._cards, n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise UnknownModel(f"unknown model {name!r}{hint}; known models: {', '.join(self.names())}") from None

    def load(self, name: str, device: str | torch.device | None = None) -> Potential:
        """Verify the checkpoint's hash, then build the model's Potential on ``device`` (default: CUDA if any)."""
        card = self.card(name)
        backend = load_backend(card.family)
        checkpoint = card.verified_checkpoint()
        potential = backend.load_potential(card, checkpoint, pick_device(device))
        log.info("loaded %s (%s %s) on %s", card.name, card.family, card.version, potential.device)
        return potential


def load_backend(family: str):
    """Import a family's backend module, with a clear error when its package is missing."""
    if family not in FAMILIES:
        raise CardError(f"unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}")
    module, distribution, extra = FAMILIES[family]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise BackendUnavailable(
            f"model family {family!r} needs the {distribution!r} package, which is not importable here "
            f"({error}); install it with: pip install 'mlipserve[{extra}]'"
        ) from error
