"""Model cards: what a model is, where its checkpoint lies, and the hash that checkpoint must have.

A card is a YAML file. Built-in cards ship in ``mlipserve/models/cards/``; user cards live in the model directory
(``--model-dir``, default ``~/.mlipserve/models``) beside their checkpoints. A checkpoint path in a user card is
relative to the model directory and must resolve inside it, symbolic links followed: some checkpoints are pickles
that run code when loaded (MACE's), and no card may make the server read a file it was not given.
Built-in cards may point into an installed package with ``package://<package>/<path>`` (SevenNet and CHGNet
ship their weights inside their wheels; the path must resolve inside that package's folder), or name a file that
the user downloads from ``source_url`` into the model directory (MACE's foundation models). Where the authors
publish no sha256 for such a file, the card leaves ``sha256`` empty and the user pins the hash of the file they
checked in ``<file>.sha256`` beside it (the output of ``sha256sum <file>``); nothing is unpickled without a hash
to check it against.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from ase.data import atomic_numbers

PACKAGE_SCHEME = "package://"
#: Suffix of the file beside a user-brought checkpoint that pins its sha256 when the card publishes none.
PIN_SUFFIX = ".sha256"


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
    #: Where a user-brought checkpoint can be downloaded (built-in cards whose file is not shipped).
    source_url: str = ""
    #: The model's F1 on matbench-discovery's stable-crystal classification, where its leaderboard publishes one.
    matbench_f1: float | None = None
    #: Folder that a relative ``checkpoint`` is resolved against; None for built-in cards.
    root: Path | None = None
    builtin: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, root: Path | None, builtin: bool = False) -> ModelCard:
        if data.get("family") == "committee":  # a committee's members carry the checkpoints (models/committee.py)
            from .committee import card_fields

            data = card_fields(data)
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
            sha256=_sha256(data["name"], data["sha256"]),
            license=str(data["license"]),
            elements=tuple(elements),
            cutoff=float(data["cutoff"]),
            citation=str(data.get("citation", "")).strip(),
            description=str(data.get("description", "")).strip(),
            options=dict(data.get("options") or {}),
            source_url=str(data.get("source_url", "")).strip(),
            matbench_f1=_fraction(data["name"], "matbench_f1", data.get("matbench_f1")),
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
    def user_brought(self) -> bool:
        """A built-in card whose checkpoint the user downloads into the model directory."""
        return self.builtin and not self.checkpoint.startswith(PACKAGE_SCHEME)

    def in_model_dir(self, model_dir: Path, *, read_pin: bool = True) -> ModelCard:
        """This card with a user-brought checkpoint resolved in ``model_dir``, and its pinned sha256 if any."""
        if not self.user_brought:
            return self
        card = replace(self, root=Path(model_dir))
        pin = card.checkpoint_path().with_name(Path(self.checkpoint).name + PIN_SUFFIX)
        if read_pin and not self.sha256 and pin.is_file():
            words = pin.read_text().split()
            digest = words[0].lower() if words else ""
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise CardError(f"{self.name}: {pin} does not start with a sha256 (64 hex digits)")
            card = replace(card, sha256=digest)
        return card

    @property
    def atomic_numbers(self) -> frozenset[int]:
        return frozenset(atomic_numbers[symbol] for symbol in self.elements)

    def checkpoint_path(self) -> Path:
        """Resolve the checkpoint file, refusing any path that leaves its folder.

        That folder is the model directory (``root``) for a user card or a user-brought file, and the package's
        folder for a built-in ``package://`` card. The path is resolved with every symbolic link followed (in the
        file's name and in its parents), so ``..``, an absolute path and a link that points elsewhere are all
        judged by where the file really is; a ``..`` or a link that stays inside the folder is fine.
        """
        if self.checkpoint.startswith(PACKAGE_SCHEME):
            if not self.builtin:
                raise CardError(f"{self.name}: only built-in cards may load from an installed package")
            package, _, relative = self.checkpoint[len(PACKAGE_SCHEME) :].partition("/")
            return _confined(self.name, self.checkpoint, _package_folder(self.name, package), relative, "package")
        if self.root is None:
            raise CardError(f"{self.name}: a built-in card needs a {PACKAGE_SCHEME} checkpoint")
        return _confined(self.name, self.checkpoint, self.root, self.checkpoint, "model directory")

    def is_installed(self) -> bool:
        try:
            return self.checkpoint_path().is_file()
        except CardError:
            return False

    def verified_checkpoint(self) -> Path:
        """Return the checkpoint path after checking that it exists and matches the card's sha256."""
        path = self.checkpoint_path()
        if not path.is_file():
            if self.source_url:
                raise CardError(
                    f"{self.name}: checkpoint file {path} not found; download {self.source_url} and save it as {path}"
                )
            raise CardError(f"{self.name}: checkpoint file {path} not found")
        if not self.sha256:
            pin = path.with_name(path.name + PIN_SUFFIX)
            raise CardError(
                f"{self.name}: the authors publish no sha256 for {path.name}, and none is pinned; once you trust "
                f"the file (from {self.source_url or 'its source'}), pin it with: sha256sum {path} > {pin}"
            )
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
            "source_url": self.source_url,
            "matbench_f1": self.matbench_f1,
            "installed": self.is_installed(),
        }


def _fraction(model: str, key: str, value: Any) -> float | None:
    """An optional number in [0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise CardError(f"model card {model!r}: {key} must be a number between 0 and 1, not {value!r}")
    return float(value)


def _sha256(model: str, value: Any) -> str:
    """A card's sha256: 64 hex digits, or empty (a user-brought file whose hash the user pins beside it)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise CardError(
            f"model card {model!r}: sha256 {value!r} is not text (YAML read it as {type(value).__name__}); "
            'quote its 64 hex digits: sha256: "..."'
        )
    digest = value.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CardError(f"model card {model!r}: sha256 must be 64 hex digits, got {value!r}")
    return digest


def _confined(model: str, checkpoint: str, folder: Path, relative: str, kind: str) -> Path:
    """``folder / relative`` with all links resolved, if it lies inside ``folder`` (also resolved); else CardError.

    ``kind`` is "model directory" or "package"; the error names the card, the path as written, where it leads
    and why (an absolute path, a ``..``, or a symbolic link).
    """
    try:
        root = Path(folder).resolve()
        path = (root / relative).resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symbolic link loop (Python < 3.13)
        raise CardError(f"{model}: checkpoint {checkpoint!r} cannot be resolved: {error}") from None
    if path.is_relative_to(root):
        return path
    # Say why: judged without following links, the path either already leaves the folder or a link takes it out.
    if Path(relative).is_absolute():
        why = "an absolute path"
    elif not Path(os.path.normpath(root / relative)).is_relative_to(root):
        why = "its '..' leads out"
    else:
        why = "a symbolic link in it leads out"
    where = f"the model directory {root}" if kind == "model directory" else f"the folder {root} of its package"
    hint = "; copy the file into the model directory" if kind == "model directory" else ""
    raise CardError(f"{model}: checkpoint {checkpoint!r} resolves to {path}, outside {where} ({why}){hint}")


def _package_folder(model: str, package: str) -> Path:
    """The folder of an installed top-level package, found without importing it (sevenn and chgnet import torch,
    which the HTTP front end never loads just to say whether a checkpoint is installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CardError(f"{model}: package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
