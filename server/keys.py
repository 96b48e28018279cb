"""API keys: who may use the server, for what, and how much.

A keys file (``mlipserve serve --api-keys FILE``) lists each key by name with the sha256 of its secret, its
scopes, a request rate and a limit of unfinished jobs. Only hashes are stored: a leaked file lets nobody in.
``mlipserve keys add NAME`` makes a key, stores its hash and prints the secret once::

    keys:
      - name: screening
        sha256: 5f0c...            # of the secret the client sends as `Authorization: Bearer <secret>`
        scopes: [predict, relax, jobs]
        rate: 50                   # requests per second (omit: unlimited)
        max_jobs: 4                # unfinished jobs at once (omit: unlimited)
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Prefix of the secrets ``mlipserve keys add`` makes, so that a leaked one is easy to recognise (and grep for).
SECRET_PREFIX = "mls_"


class Scope(str, enum.Enum):
    PREDICT = "predict"  # POST /v1/predict
    RELAX = "relax"  # POST /v1/relax
    JOBS = "jobs"  # /v1/jobs: one's own jobs
    ADMIN = "admin"  # /metrics, /v1/status, every key's jobs


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file, the entry and the problem."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[Scope]
    #: Requests per second (None: unlimited).
    rate: float | None = None
    #: Unfinished jobs at once (None: unlimited).
    max_jobs: int | None = None

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def as_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "sha256": self.sha256,
            "scopes": sorted(s.value for s in self.scopes),
        }
        if self.rate is not None:
            entry["rate"] = self.rate
        if self.max_jobs is not None:
            entry["max_jobs"] = self.max_jobs
        return entry


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A fresh secret: 256 random bits, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """The keys of a keys file, found by the hash of the secret a request presents."""

    def __init__(self, keys: Iterable[ApiKey] = ()):
        self.keys = list(keys)
        self._by_hash = {key.sha256: key for key in self.keys}

    def identify(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None."""
        return self._by_hash.get(hash_secret(secret))

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read and check a keys file; KeysFileError naming the problem."""
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise KeysFileError(f"cannot read the keys file {path}: {error}") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise KeysFileError(f"{path}: expected a mapping with a list `keys:` (mlipserve keys add NAME makes one)")
        keys = [_parse_entry(path, index, entry) for index, entry in enumerate(entries)]
        names = [key.name for key in keys]
        if duplicated := sorted({name for name in names if names.count(name) > 1}):
            raise KeysFileError(f"{path}: key names must be unique; repeated: {', '.join(duplicated)}")
        return cls(keys)

    def save(self, path: Path) -> None:
        """Write the keys file (hashes only)."""
        header = "# mlipserve API keys: sha256 of each secret, never the secret (mlipserve keys add NAME)\n"
        path.write_text(header + yaml.safe_dump({"keys": [key.as_entry() for key in self.keys]}, sort_keys=False))


def _parse_entry(path: Path, index: int, entry: Any) -> ApiKey:
    where = f"{path}: key {index}"
    if not isinstance(entry, dict):
        raise KeysFileError(f"{where}: expected a mapping with name, sha256 and scopes")
    unknown = set(entry) - {"name", "sha256", "scopes", "rate", "max_jobs"}
    if unknown:
        raise KeysFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name, digest = entry.get("name"), str(entry.get("sha256", "")).lower()
    if not isinstance(name, str) or not name:
        raise KeysFileError(f"{where}: `name` must be a non-empty string")
    where = f"{path}: key {name!r}"
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise KeysFileError(f"{where}: `sha256` must be 64 hex digits (the hash of the secret, never the secret)")
    try:
        scopes = frozenset(Scope(scope) for scope in entry.get("scopes") or [])
    except ValueError:
        known = ", ".join(s.value for s in Scope)
        raise KeysFileError(f"{where}: scopes must be among {known}, not {entry.get('scopes')!r}") from None
    if not scopes:
        raise KeysFileError(f"{where}: give it at least one scope ({', '.join(s.value for s in Scope)})")
    rate, max_jobs = entry.get("rate"), entry.get("max_jobs")
    if rate is not None and (not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0):
        raise KeysFileError(f"{where}: `rate` must be a positive number of requests per second")
    if max_jobs is not None and (not isinstance(max_jobs, int) or isinstance(max_jobs, bool) or max_jobs < 0):
        raise KeysFileError(f"{where}: `max_jobs` must be a whole number >= 0")
    return ApiKey(name, digest, scopes, None if rate is None else float(rate), max_jobs)
