"""The ``mlipserve`` command line: ``serve`` starts the HTTP server, ``worker`` serves a model from Redis,
``models`` lists the registered models; ``predict``, ``relax`` and ``eval`` are clients of a running server, whose
code lives in :mod:`mlipserve.clients`."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path

from ..clients.cli import add_file_commands
from ..models.cards import CardError
from ..models.registry import DEFAULT_MODEL, DEFAULT_MODEL_DIR, ModelRegistry, UnknownModel
from .config import DeviceOptions, RedisWorkerSettings, ServerSettings, StructureLimits
from .engine.batching import BatchPolicy
from .keys import KeysFileError
from .keys_command import add_keys_parser
from .logs import FORMATS, configure_logging
from .tables import format_table

REDIS_ENV = "MLIPSERVE_REDIS_URL"
MODEL_DIR_ENV = "MLIPSERVE_MODEL_DIR"
LOG_FORMAT_ENV = "MLIPSERVE_LOG_FORMAT"


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
        "--max-atom-steps",
        type=int,
        default=limits.max_atom_steps,
        help="most atoms × steps (× images) of one MD run or NEB path (default %(default)s)",
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
    serve.add_argument(
        "--api-keys",
        type=Path,
        metavar="FILE",
        help="require an API key of FILE (names, hashes, scopes, rates: `mlipserve keys add NAME` makes it) on every "
        "/v1/ route; without it the API is open, and listens on loopback only unless --insecure",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve an open API (no --api-keys) on an address beyond loopback: for a network you trust",
    )
    serve.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages of ORIGIN (e.g. https://lab.example.org) call the API from a browser; repeat for several",
    )
    for option, default, what in (
        ("--max-body-bytes", defaults.max_body_bytes, "a JSON request body"),
        ("--max-upload-bytes", defaults.max_upload_bytes, "an uploaded file (multipart body)"),
    ):
        serve.add_argument(option, type=int, default=default, help=f"largest {what}, in bytes (default %(default)s)")
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.body_timeout,
        help="seconds a request body may stall before 408 (default %(default)s)",
    )
    serve.add_argument(
        "--scale-from-zero",
        action="store_true",
        help="with --redis: queue requests for a --model that has no live worker (an autoscaler such as KEDA starts "
        "one on the queue's length) instead of answering 503; /readyz then needs Redis only",
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
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=worker_defaults.drain_timeout,
        help="on SIGTERM, finish held tasks for up to this many seconds, then hand the rest back to the queue "
        "(default %(default)s)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port (default: none)",
    )

    status = commands.add_parser("status", help="a fleet's workers and queues, read from its Redis")
    status.add_argument("--redis", default=os.environ.get(REDIS_ENV), metavar="URL", help=f"default ${REDIS_ENV}")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")

    models = commands.add_parser("models", help="list registered models and whether their files are installed")
    _add_model_dir(models)
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")

    serve.set_defaults(handler=serve_command)
    worker.set_defaults(handler=worker_command)
    models.set_defaults(handler=list_models)
    status.set_defaults(handler=fleet_status)
    add_keys_parser(commands)
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
        "--log-format",
        default=os.environ.get(LOG_FORMAT_ENV, "text"),
        choices=FORMATS,
        help=f"text, or json: a JSON object per line with request and job ids (default: ${LOG_FORMAT_ENV}, else text)",
    )
    parser.add_argument(
        "--batch-atoms",
        type=int,
        default=None,
        help="atom budget of a batch (default: measured from free memory on a GPU, 128 on the CPU)",
    )
    parser.add_argument(
        "--tf32", action="store_true", help="float32 matrix products on TF32 tensor cores (CUDA; changes numbers)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's torch module (slower start; may change numbers)",
    )
    parser.add_argument(
        "--cueq",
        action="store_true",
        help="cuEquivariance kernels for MACE and SevenNet (CUDA, needs cuequivariance-torch; changes numbers)",
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=BatchPolicy().max_wait * 1000, help="how long a batch waits to fill"
    )


def device_options(args: argparse.Namespace) -> DeviceOptions:
    """The GPU options given on the command line (all off by default)."""
    return DeviceOptions(tf32=args.tf32, compile=args.compile, cueq=args.cueq)


def _add_model_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR)),
        help=f"folder of user model cards and checkpoints (default: ${MODEL_DIR_ENV}, else {DEFAULT_MODEL_DIR})",
    )


def serve_command(args: argparse.Namespace) -> None:
    import uvicorn

    from .app import create_app

    configure_logging(args.log_level, args.log_format)
    default_models = () if args.redis else (DEFAULT_MODEL,)
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        models=tuple(args.models or default_models),
        model_dir=args.model_dir,
        device=args.device,
        limits=StructureLimits(
            max_atoms=args.max_atoms_per_structure,
            min_distance=args.min_distance,
            max_atom_steps=args.max_atom_steps,
        ),
        max_structures_per_request=args.max_structures_per_request,
        max_atoms_per_request=args.max_atoms_per_request,
        batch=BatchPolicy(max_atoms=args.batch_atoms, max_wait=args.max_wait_ms / 1000),
        device_options=device_options(args),
        torch_threads=args.threads,
        redis_url=args.redis,
        queue_limit=args.queue_limit,
        scale_from_zero=args.scale_from_zero,
        api_keys=args.api_keys,
        insecure=args.insecure,
        cors_origins=tuple(args.cors_origins),
        max_body_bytes=args.max_body_bytes,
        max_upload_bytes=args.max_upload_bytes,
        body_timeout=args.body_timeout,
    )
    if settings.scale_from_zero and not settings.redis_url:
        raise SystemExit("mlipserve serve: --scale-from-zero needs --redis (embedded models are always loaded)")
    if settings.api_keys is None and not settings.insecure and not is_loopback(settings.host):
        raise SystemExit(
            f"mlipserve serve: refusing to serve an open API on {settings.host}: give --api-keys FILE "
            "(`mlipserve keys add NAME --file FILE` makes one), or --insecure on a network you trust"
        )
    registry = ModelRegistry(settings.model_dir)
    for name, reason in registry.problems.items():
        logging.getLogger("mlipserve").warning("model card %r could not be used: %s", name, reason)
    try:
        if not settings.redis_url:  # the models load here: refuse a missing or altered checkpoint before starting
            for name in settings.models:
                registry.card(name).verified_checkpoint()
        app = create_app(settings, registry)
    except (UnknownModel, CardError, KeysFileError) as error:
        raise SystemExit(f"mlipserve serve: {error}") from None
    # log_config=None: uvicorn's loggers go through the handler configured above, in the same format
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, log_config=None)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_command(args: argparse.Namespace) -> int:
    from .transport.redis.worker import run_worker

    if not args.redis:
        raise SystemExit(f"mlipserve worker needs --redis URL (or ${REDIS_ENV})")
    configure_logging(args.log_level, args.log_format, model=args.model)
    settings = RedisWorkerSettings(
        redis_url=args.redis,
        model=args.model,
        device=args.device,
        batch=BatchPolicy(max_atoms=args.batch_atoms, max_wait=args.max_wait_ms / 1000),
        device_options=device_options(args),
        claim_idle=args.claim_idle,
        max_deliveries=args.max_deliveries,
        torch_threads=args.threads,
        drain_timeout=args.drain_timeout,
        metrics_port=args.metrics_port,
    )
    return run_worker(settings, ModelRegistry(args.model_dir))


def list_models(args: argparse.Namespace) -> None:
    registry = ModelRegistry(args.model_dir)
    rows = [registry.summary(card) for card in registry.cards()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = ("name", "family", "version", "installed", "elements", "cutoff", "dtype", "F1", "environment", "license")
    table = [header] + [
        (
            r["name"],
            r["family"],
            r["version"],
            "yes" if r["installed"] else "no",
            str(len(r["elements"])),
            f"{r['cutoff']:g}",
            r["dtype"],
            "-" if r["matbench_f1"] is None else f"{r['matbench_f1']:.3f}",
            r["environment"],
            r["license"],
        )
        for r in rows
    ]
    print(format_table(table))
    print("F1: matbench-discovery's stable-crystal F1, where its leaderboard publishes one for the model")
    for name, reason in registry.problems.items():
        print(f"warning: model card {name!r} could not be used: {reason}", file=sys.stderr)


def fleet_status(args: argparse.Namespace) -> int:
    from .fleet_status import status_command

    return status_command(args)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if status := args.handler(args):  # the client commands return an exit status
        raise SystemExit(status)


if __name__ == "__main__":
    main()
