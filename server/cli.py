"""The ``mlipserve`` command line: ``serve`` starts the HTTP server, ``worker`` serves a model from Redis,
``models`` lists the registered models; ``predict``, ``relax`` and ``eval`` are clients of a running server, whose
code lives in :mod:`mlipserve.clients`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..clients.cli import add_file_commands
from ..models.cards import CardError
from ..models.registry import DEFAULT_MODEL, DEFAULT_MODEL_DIR, ModelRegistry, UnknownModel
from .config import RedisWorkerSettings, ServerSettings, StructureLimits
from .engine.batching import BatchPolicy

REDIS_ENV = "MLIPSERVE_REDIS_URL"


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
    _add_engine_options(serve)
    limits = defaults.limits
    for option, default, what in (
        ("--max-atoms-per-structure", limits.max_atoms, "atoms in one structure"),
        ("--max-atoms-per-request", defaults.max_atoms_per_request, "atoms in one request"),
        ("--max-structures-per-request", defaults.max_structures_per_request, "structures in one request"),
    ):
        serve.add_argument(option, type=int, default=default, help=f"most {what} (default %(default)s)")
    serve.add_argument(
        "--min-distance", type=float, default=limits.min_distance, help="reject atoms closer than this (Å)"
    )
    serve.add_argument(
        "--queue-limit",
        type=int,
        default=defaults.queue_limit,
        help="structures queued (per model in Redis mode) beyond which requests get 503 (default %(default)s)",
    )
    serve.add_argument(
        "--redis",
        default=os.environ.get(REDIS_ENV),
        metavar="URL",
        help=f"send work to `mlipserve worker` processes through this Redis instead of running models here "
        f"(default: ${REDIS_ENV}, else embedded mode)",
    )

    worker = commands.add_parser("worker", help="serve one model from a Redis queue (run one per GPU or process)")
    worker.add_argument("--model", required=True, metavar="NAME", help="the model this worker serves")
    worker.add_argument("--redis", default=os.environ.get(REDIS_ENV), metavar="URL", help=f"default ${REDIS_ENV}")
    _add_engine_options(worker)
    worker_defaults = RedisWorkerSettings(redis_url="", model="")
    worker.add_argument(
        "--claim-idle",
        type=float,
        default=worker_defaults.claim_idle,
        help="take over tasks another worker has held this long, in s (default %(default)s)",
    )
    worker.add_argument(
        "--max-deliveries",
        type=int,
        default=worker_defaults.max_deliveries,
        help="dead-letter a task after this many deliveries (default %(default)s)",
    )

    models = commands.add_parser("models", help="list registered models and whether their files are installed")
    _add_model_dir(models)
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")

    serve.set_defaults(handler=serve_command)
    worker.set_defaults(handler=worker_command)
    models.set_defaults(handler=list_models)
    add_file_commands(commands)
    _add_eval_commands(commands)
    return parser


def _add_eval_commands(commands: argparse._SubParsersAction) -> None:
    """``mlipserve eval ...``, where that package is present."""
    try:
        from ..clients.eval.cli import add_eval_parser
    except ModuleNotFoundError as error:
        if error.name not in ("mlipserve.clients.eval", "mlipserve.clients.eval.cli"):
            raise
        return
    add_eval_parser(commands)


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Where models come from and how they run: the options ``serve`` and ``worker`` share."""
    _add_model_dir(parser)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA if available; default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: all cores)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--batch-atoms", type=int, default=None, help="atom budget of a batch (default: 128 on the CPU, 8192 on a GPU)"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=BatchPolicy().max_wait * 1000, help="how long a batch waits to fill"
    )


def _add_model_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="folder of user model cards (*.yaml) and checkpoints (default %(default)s)",
    )


def serve_command(args: argparse.Namespace) -> None:
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    default_models = () if args.redis else (DEFAULT_MODEL,)
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        models=tuple(args.models or default_models),
        model_dir=args.model_dir,
        device=args.device,
        limits=StructureLimits(max_atoms=args.max_atoms_per_structure, min_distance=args.min_distance),
        max_structures_per_request=args.max_structures_per_request,
        max_atoms_per_request=args.max_atoms_per_request,
        batch=BatchPolicy(max_atoms=args.batch_atoms, max_wait=args.max_wait_ms / 1000),
        torch_threads=args.threads,
        redis_url=args.redis,
        queue_limit=args.queue_limit,
    )
    registry = ModelRegistry(settings.model_dir)
    for name, reason in registry.problems.items():
        logging.getLogger("mlipserve").warning("model card %r could not be used: %s", name, reason)
    try:
        if not settings.redis_url:  # the models load here: refuse a missing or altered checkpoint before starting
            for name in settings.models:
                registry.card(name).verified_checkpoint()
        app = create_app(settings, registry)
    except (UnknownModel, CardError) as error:
        raise SystemExit(f"mlipserve serve: {error}") from None
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)


def worker_command(args: argparse.Namespace) -> None:
    from .transport.redis.worker import run_worker

    if not args.redis:
        raise SystemExit(f"mlipserve worker needs --redis URL (or ${REDIS_ENV})")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = RedisWorkerSettings(
        redis_url=args.redis,
        model=args.model,
        device=args.device,
        batch=BatchPolicy(max_atoms=args.batch_atoms, max_wait=args.max_wait_ms / 1000),
        claim_idle=args.claim_idle,
        max_deliveries=args.max_deliveries,
        torch_threads=args.threads,
    )
    run_worker(settings, ModelRegistry(args.model_dir))


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
    for name, reason in registry.problems.items():
        print(f"warning: model card {name!r} could not be used: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if status := args.handler(args):  # the client commands return an exit status
        raise SystemExit(status)


if __name__ == "__main__":
    main()
