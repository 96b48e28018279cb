"""The ``mlipserve`` command line: ``serve`` starts the HTTP server, ``models`` lists the registered models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..models.registry import DEFAULT_MODEL, DEFAULT_MODEL_DIR, ModelRegistry
from .batching import BatchPolicy
from .config import ServerSettings
from .validation import StructureLimits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlipserve", description="Serve machine-learned interatomic potentials.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the HTTP server with embedded workers")
    defaults = ServerSettings()
    serve.add_argument("--host", default=defaults.host, help="address to bind (default %(default)s)")
    serve.add_argument("--port", type=int, default=defaults.port, help="port (default %(default)s)")
    serve.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="NAME",
        help=f"model to serve; repeat for several (default {DEFAULT_MODEL})",
    )
    _add_model_dir(serve)
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA if available; default)")
    serve.add_argument(
        "--batch-atoms",
        type=int,
        default=None,
        help="atom budget of a batch (default: 128 on the CPU, 8192 on a GPU)",
    )
    serve.add_argument(
        "--max-wait-ms", type=float, default=defaults.batch.max_wait * 1000, help="how long a batch waits to fill"
    )
    limits = defaults.limits
    serve.add_argument("--max-atoms-per-structure", type=int, default=limits.max_atoms)
    serve.add_argument("--max-atoms-per-request", type=int, default=defaults.max_atoms_per_request)
    serve.add_argument("--max-structures-per-request", type=int, default=defaults.max_structures_per_request)
    serve.add_argument(
        "--min-distance", type=float, default=limits.min_distance, help="reject atoms closer than this (Å)"
    )
    serve.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: all cores)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    models = commands.add_parser("models", help="list registered models and whether their files are installed")
    _add_model_dir(models)
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _add_model_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="folder of user model cards (*.yaml) and checkpoints (default %(default)s)",
    )


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        models=tuple(args.models or [DEFAULT_MODEL]),
        model_dir=args.model_dir,
        device=args.device,
        limits=StructureLimits(max_atoms=args.max_atoms_per_structure, min_distance=args.min_distance),
        max_structures_per_request=args.max_structures_per_request,
        max_atoms_per_request=args.max_atoms_per_request,
        batch=BatchPolicy(max_atoms=args.batch_atoms, max_wait=args.max_wait_ms / 1000),
        torch_threads=args.threads,
    )
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)


def list_models(args: argparse.Namespace) -> None:
    registry = ModelRegistry(args.model_dir)
    rows = [card.summary() for card in registry.cards()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = ("name", "family", "version", "installed", "elements", "license")
    table = [header] + [
        (r["name"], r["family"], r["version"], "yes" if r["installed"] else "no", str(len(r["elements"])), r["license"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for problem in registry.problems:
        print(f"warning: {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    {"serve": serve, "models": list_models}[args.command](args)


if __name__ == "__main__":
    main()
