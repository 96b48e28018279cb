"""``mlipserve keys add|list|remove --file FILE``: manage the keys file of ``mlipserve serve --api-keys FILE``.

``add`` prints the new secret once; the file keeps only its sha256. A running server reads the file at start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .keys import ApiKey, KeyRing, KeysFileError, Scope, hash_secret, new_secret
from .tables import format_table

DEFAULT_SCOPES = "predict,relax,jobs"


def add_keys_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="make, list and remove the API keys of a keys file")
    actions = keys.add_subparsers(dest="action", required=True)

    add = actions.add_parser("add", help="make a key, store its hash, print its secret once")
    add.add_argument("name", help="who or what the key is for (unique in the file)")
    add.add_argument(
        "--scopes",
        default=DEFAULT_SCOPES,
        help=f"comma-separated, among {', '.join(s.value for s in Scope)} (default %(default)s)",
    )
    add.add_argument("--rate", type=float, default=None, help="requests per second (default: unlimited)")
    add.add_argument("--max-jobs", type=int, default=None, help="unfinished jobs at once (default: unlimited)")
    add.set_defaults(handler=add_key)

    listing = actions.add_parser("list", help="the keys of the file (names, scopes, limits; never secrets)")
    listing.set_defaults(handler=list_keys)

    remove = actions.add_parser("remove", help="remove a key; servers refuse it once restarted")
    remove.add_argument("name")
    remove.set_defaults(handler=remove_key)

    for action in (add, listing, remove):
        action.add_argument("--file", type=Path, required=True, help="the keys file (created by the first add)")


def add_key(args: argparse.Namespace) -> int:
    ring = _existing(args.file)
    if ring is None:
        return 1
    if any(key.name == args.name for key in ring.keys):
        print(f"mlipserve keys: {args.file} already has a key named {args.name!r}", file=sys.stderr)
        return 1
    try:
        scopes = frozenset(Scope(scope.strip()) for scope in args.scopes.split(",") if scope.strip())
    except ValueError:
        known = ", ".join(s.value for s in Scope)
        print(f"mlipserve keys: scopes must be among {known}, not {args.scopes!r}", file=sys.stderr)
        return 2
    if (args.rate is not None and args.rate <= 0) or (args.max_jobs is not None and args.max_jobs < 0):
        print("mlipserve keys: --rate must be > 0 and --max-jobs >= 0", file=sys.stderr)
        return 2
    secret = new_secret()
    key = ApiKey(args.name, hash_secret(secret), scopes, args.rate, args.max_jobs)
    KeyRing([*ring.keys, key]).save(args.file)
    print(secret)
    print(f"added key {args.name!r} to {args.file}; the secret above is shown only now", file=sys.stderr)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    ring = _existing(args.file)
    if ring is None:
        return 1
    rows = [("name", "scopes", "rate (1/s)", "max jobs")]
    rows += [
        (
            key.name,
            ",".join(sorted(s.value for s in key.scopes)),
            "-" if key.rate is None else f"{key.rate:g}",
            "-" if key.max_jobs is None else str(key.max_jobs),
        )
        for key in ring.keys
    ]
    print(format_table(rows) if ring.keys else f"{args.file}: no keys")
    return 0


def remove_key(args: argparse.Namespace) -> int:
    ring = _existing(args.file)
    if ring is None:
        return 1
    kept = [key for key in ring.keys if key.name != args.name]
    if len(kept) == len(ring.keys):
        print(f"mlipserve keys: {args.file} has no key named {args.name!r}", file=sys.stderr)
        return 1
    KeyRing(kept).save(args.file)
    return 0


def _existing(path: Path) -> KeyRing | None:
    """The keys of ``path`` (none when it does not exist yet); None, having said why, when it cannot be read."""
    if not path.exists():
        return KeyRing()
    try:
        return KeyRing.load(path)
    except KeysFileError as error:
        print(f"mlipserve keys: {error}", file=sys.stderr)
        return None
