"""Model cards: what a model is, where its checkpoint lies, and the hash that checkpoint must have.

A card is a YAML file. Built-in cards ship in ``mlipserve/models/cards/``; user cards live in the model directory
(``--model-dir``, default ``~/.mlipserve/models``) beside their checkpoints. A checkpoint path in a user card is
relative to the model directory and must stay inside it: checkpoints are pickles, and loading one runs code.
Built-in cards may point into an installed package with ``package://<package>/<path>`` (SevenNet and CHGNet
ship their weights inside their wheels).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from ase.data import atomic_numbers

PACKAGE_SCHEME = "package://"


class CardError(ValueError):
    """A model card is malformed, or its checkpoint is missing, outside the model directory or altered."""


@dataclass(frozen=True)
class ModelCard:
    """Everything the registry needs to know to load and describe a model."""

    name: str
    family: str
    version: str
    checkpoint: str
    sha256: str
    license: str
    elements: tuple[str, ...]
    cutoff: float
    citation: str = ""
    description: str = ""
    #: Family-specific loader options (e.g. ``species`` order for an MTP file).
    options: dict[str, Any] = field(default_factory=dict)
    #: Folder that a relative ``checkpoint`` is resolved against; None for built-in cards.
    root: Path | None = None
    builtin: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, root: Path | None, builtin: bool = False) -> ModelCard:
        required = ("name", "family", "version", "checkpoint", "sha256", "license", "elements", "cutoff")
        missing = [key for key in required if key not in data]
        if missing:
            raise CardError(f"model card {data.get('name', '?')!r} lacks {', '.join(missing)}")
        elements = data["elements"]
        if isinstance(elements, str):
            elements = elements.split()
        unknown = [symbol for symbol in elements if symbol not in atomic_numbers]
        if unknown:
            raise CardError(f"model card {data['name']!r} lists unknown elements {unknown}")
        known = {f for f in cls.__dataclass_fields__ if f not in ("root", "builtin")}
        extra = sorted(set(data) - known)
        if extra:
            raise CardError(f"model card {data['name']!r} has unknown keys {extra}")
        return cls(
            name=str(data["name"]),
            family=str(data["family"]),
            version=str(data["version"]),
            checkpoint=str(data["checkpoint"]),
            sha256=str(data["sha256"]).lower(),
            license=str(data["license"]),
            elements=tuple(elements),
            cutoff=float(data["cutoff"]),
            citation=str(data.get("citation", "")).strip(),
            description=str(data.get("description", "")).strip(),
            options=dict(data.get("options") or {}),
            root=root,
            builtin=builtin,
        )

    @classmethod
    def from_yaml(cls, path: Path, *, builtin: bool = False) -> ModelCard:
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise CardError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise CardError(f"{path}: a model card is a YAML mapping")
        return cls.from_dict(data, root=None if builtin else path.parent, builtin=builtin)

    @property
    def atomic_numbers(self) -> frozenset[int]:
        return frozenset(atomic_numbers[symbol] for symbol in self.elements)

    def checkpoint_path(self) -> Path:
        """Resolve the checkpoint file, refusing any path that leaves the model directory."""
        if self.checkpoint.startswith(PACKAGE_SCHEME):
            if not self.builtin:
                raise CardError(f"{self.name}: only built-in cards may load from an installed package")
            package, _, relative = self.checkpoint[len(PACKAGE_SCHEME) :].partition("/")
            try:
                return Path(str(resources.files(package).joinpath(relative)))
            except ModuleNotFoundError as error:
                raise CardError(f"{self.name}: package {package!r} is not installed") from error
        if self.root is None:
            raise CardError(f"{self.name}: a built-in card needs a {PACKAGE_SCHEME} checkpoint")
        root = self.root.resolve()
        path = (root / self.checkpoint).resolve()
        if not path.is_relative_to(root):
            raise CardError(
                f"{self.name}: checkpoint {self.checkpoint!r} lies outside the model directory {root}; "
                "copy the file into the model directory"
            )
        return path

    def is_installed(self) -> bool:
        try:
            return self.checkpoint_path().is_file()
        except CardError:
            return False

    def verified_checkpoint(self) -> Path:
        """Return the checkpoint path after checking that it exists and matches the card's sha256."""
        path = self.checkpoint_path()
        if not path.is_file():
            raise CardError(f"{self.name}: checkpoint file {path} not found")
        digest = file_sha256(path)
        if digest != self.sha256:
            raise CardError(
                f"{self.name}: checkpoint {path} has sha256 {digest}, but the card says {self.sha256}; "
                "refusing to load it"
            )
        return path

    def summary(self) -> dict[str, Any]:
        """The card's public fields, as served by ``GET /v1/models``."""
        return {
            "name": self.name,
            "family": self.family,
            "version": self.version,
            "sha256": self.sha256,
            "license": self.license,
            "elements": list(self.elements),
            "cutoff": self.cutoff,
            "citation": self.citation,
            "description": self.description,
            "installed": self.is_installed(),
        }


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
