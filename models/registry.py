"""The model registry: maps a model name to its card; ``FAMILIES`` maps a card's family to its backend module.

Built-in cards ship with mlipserve; user cards are ``*.yaml`` files in the model directory. Reading cards imports
no model framework (not even torch), so the HTTP front end uses the registry; loading a model is the job of
:mod:`.loading`, which imports a family's backend only when one of its models is loaded. A card that cannot be
used is kept out, with the reason, in :attr:`ModelRegistry.problems`.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from . import committee
from .cards import CardError, ModelCard

if TYPE_CHECKING:
    from .potential import Backend

log = logging.getLogger(__name__)

DEFAULT_MODEL = "7net-0"
DEFAULT_MODEL_DIR = Path("~/.mlipserve/models").expanduser()


@dataclass(frozen=True)
class Family:
    """Where a model family's backend lives and what it needs."""

    module: str  #: the backend module, which provides ``load_potential`` (:class:`~.potential.Backend`)
    distribution: str  #: the package it needs
    extra: str  #: the pip extra of mlipserve that installs that package
    #: The precision its models run in unless their card says otherwise (``options: {dtype: ...}``).
    dtype: str = "float32"
    #: The worker environment it runs in: None for the main one, else FAMILY (``make env-FAMILY``, ``.venv-FAMILY``).
    environment: str | None = None

    def describe_environment(self) -> str:
        """Where the family's models run, as ``mlipserve models`` and ``GET /v1/models`` say it."""
        if self.environment is None:
            return "main"
        return f".venv-{self.environment} (make env-{self.environment})"

    def backend(self) -> Backend:
        """Import the backend module."""
        return cast("Backend", importlib.import_module(self.module))


FAMILIES: dict[str, Family] = {
    "sevennet": Family("mlipserve.models.backends.sevennet", "sevenn", "sevenn"),
    "chgnet": Family("mlipserve.models.backends.chgnet", "chgnet", "chgnet"),
    "mtp": Family("mlipserve.models.backends.mtp", "torch", "torch", dtype="float64"),
    "ace": Family("mlipserve.models.backends.ace", "torch", "torch", dtype="float64"),
    "snap": Family("mlipserve.models.backends.snap", "torch", "torch", dtype="float64"),
    "mace": Family("mlipserve.models.backends.mace", "mace-torch", "mace", environment="mace"),
    "nequip": Family("mlipserve.models.backends.nequip", "torch", "torch"),
    "pair": Family("mlipserve.models.backends.pair", "torch", "torch", dtype="float64"),
    "gap": Family("mlipserve.models.backends.gap", "torch", "torch", dtype="float64"),
    "hdnnp": Family("mlipserve.models.backends.hdnnp", "torch", "torch", dtype="float64"),
    # downloadable universal models, each served from a worker environment of its own (deploy/make-env.sh FAMILY)
    "orb": Family("mlipserve.models.backends.orb", "orb-models", "orb", environment="orb"),
    "mattersim": Family("mlipserve.models.backends.mattersim", "mattersim", "mattersim", environment="mattersim"),
    "grace": Family("mlipserve.models.backends.grace", "tensorpotential", "grace", environment="grace"),
    "fairchem": Family("mlipserve.models.backends.fairchem", "fairchem-core", "fairchem", environment="fairchem"),
    "m3gnet": Family("mlipserve.models.backends.m3gnet", "matgl", "m3gnet", environment="m3gnet"),
    # every member loaded in one worker (models/committee.py); members served apart need no entry of their own
    "committee": Family("mlipserve.models.backends.committee", "torch", "torch"),
}


class UnknownModel(KeyError):
    """No card has that name."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnusableCard(UnknownModel, CardError):
    """A card of that name exists but could not be used (the reason is in the message)."""


def builtin_card_files() -> list[Path]:
    """The files of the cards that ship inside mlipserve."""
    folder = resources.files("mlipserve.models").joinpath("cards")
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".yaml"))
    return [Path(str(folder.joinpath(name))) for name in names]


class ModelRegistry:
    """Model cards by name: the built-in ones, then those found in ``model_dir`` (which may override them).

    :attr:`problems` maps the name of each card that could not be used (its YAML ``name``, else its file's stem) to
    the reason; :meth:`card` refuses such a name with that reason.
    """

    def __init__(self, model_dir: Path | str | None = None, extra_cards: Iterable[ModelCard] = ()):
        self.model_dir = Path(model_dir).expanduser() if model_dir else DEFAULT_MODEL_DIR
        self._cards: dict[str, ModelCard] = {}
        self._files: dict[str, Path] = {}  # the file of each card in problems
        self.problems: dict[str, str] = {}
        for path in builtin_card_files():
            card = ModelCard.from_yaml(path, builtin=True)
            try:  # a built-in card whose file the user brings is resolved (and its hash pin read) in model_dir
                self._add(card.in_model_dir(self.model_dir))
            except CardError as error:
                self._refuse(card.name, path, error)
        if self.model_dir.is_dir():
            for path in sorted(self.model_dir.glob("*.y*ml")):
                self._read_user_card(path)
        for card in extra_cards:
            self._add(card)
        self._resolve_committees()

    def _resolve_committees(self) -> None:
        """Fill each committee card from its members' cards (models/committee.py), or refuse it saying why."""
        for card in [c for c in self._cards.values() if committee.is_committee(c)]:
            try:
                self._add(committee.resolve_card(card, self._cards))
            except CardError as error:
                self._refuse(card.name, (card.root or self.model_dir) / f"{card.name}.yaml", error)

    def _read_user_card(self, path: Path) -> None:
        """Add the card in ``path`` if it is well formed and its checkpoint lies inside the model directory."""
        try:
            card = ModelCard.from_yaml(path)
            card.checkpoint_path()  # refuses a path that leaves the model directory; the hash is checked at load
        except CardError as error:
            self._refuse(_card_name(path), path, error)
            return
        self._add(card)

    def _add(self, card: ModelCard) -> None:
        self._cards[card.name] = card
        self.problems.pop(card.name, None)

    def _refuse(self, name: str, path: Path, error: CardError) -> None:
        log.warning("model card %r (%s) could not be used: %s", name, path, error)
        self._cards.pop(name, None)
        self.problems[name] = str(error)
        self._files[name] = path

    def names(self) -> list[str]:
        return sorted(self._cards)

    def cards(self) -> list[ModelCard]:
        return [self._cards[name] for name in self.names()]

    def summary(self, card: ModelCard) -> dict[str, Any]:
        """The card's public fields with its family's: the precision it runs in and the environment it needs."""
        family = FAMILIES.get(card.family)
        dtype = card.options.get("dtype") or (family.dtype if family else "unknown")
        environment = family.describe_environment() if family else "unknown"
        if committee.is_committee(card):
            dtypes = sorted({self.summary(member)["dtype"] for member in committee.member_cards(card)})
            return card.summary() | {"dtype": "/".join(dtypes)} | committee.summary(card)
        return card.summary() | {"dtype": str(dtype), "environment": environment}

    def card(self, name: str) -> ModelCard:
        if name in self.problems:
            raise UnusableCard(f"model card {name!r} ({self._files[name]}) could not be used: {self.problems[name]}")
        try:
            return self._cards[name]
        except KeyError:
            close = difflib.get_close_matches(name, [*self._cards, *self.problems], n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise UnknownModel(f"unknown model {name!r}{hint}; known models: {', '.join(self.names())}") from None


def _card_name(path: Path) -> str:
    """The ``name`` in a card file, or the file's stem when the file cannot be read as a card."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return path.stem
    name = data.get("name") if isinstance(data, dict) else None
    return path.stem if name is None or str(name) == "" else str(name)
