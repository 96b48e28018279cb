"""``mlipserve eval``: ``metrics`` scores existing predictions; ``discovery`` runs the whole evaluation through a
server. :func:`add_eval_parser` adds both to the ``mlipserve`` command line; each sets ``handler`` to its function
of the parsed arguments. Heavy imports wait until a handler runs, so ``mlipserve --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from mlipserve.protocol import RelaxOptions

from ..options import DEFAULT_URL

PROG = "mlipserve eval"


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` with its sub-commands ``metrics`` and ``discovery`` to ``subparsers`` (of ``add_subparsers``)."""
    parser = subparsers.add_parser("eval", help="matbench-discovery-style evaluation: metrics, or the whole pipeline")
    commands = parser.add_subparsers(dest="eval_command", required=True, metavar="{metrics,discovery}")
    _add_metrics(commands)
    _add_discovery(commands)
    return parser


def _add_metrics(commands: Any) -> None:
    metrics = commands.add_parser("metrics", help="matbench-discovery metrics of existing formation-energy predictions")
    metrics.add_argument("--truth", type=Path, required=True, help="CSV with matbench's WBM-summary columns")
    metrics.add_argument("--pred", type=Path, required=True, help="CSV with material_id and a formation energy")
    metrics.add_argument("--pred-col", help="the prediction column (default: PRED's only other column)")
    metrics.add_argument("--out", type=Path, required=True, help="metrics.json to write")
    metrics.set_defaults(handler=metrics_handler)


def _add_discovery(commands: Any) -> None:
    discovery = commands.add_parser(
        "discovery",
        help="relax candidates through a server, score stability predictions, write metrics, plots and a report",
        description="Relax each structure with each --model through the server's jobs API (FIRE + FrechetCellFilter), "
        "turn energies into formation energies and hull distances, and score them as matbench-discovery does. "
        "Results are appended to OUT/results/ as they arrive: an interrupted run is resumed by running it again.",
    )
    discovery.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        metavar="NAME",
        help="model to evaluate; repeat for several",
    )
    discovery.add_argument("--server", default=DEFAULT_URL, metavar="URL", help="the server (default %(default)s)")
    discovery.add_argument("--out", type=Path, required=True, help="output folder (created; reused to resume)")
    mb = discovery.add_argument_group("matbench-discovery's files")
    mb.add_argument(
        "--matbench-data",
        type=Path,
        metavar="DIR",
        help="folder holding matbench's files (or their wbm/ and mp/ subfolders, as its cache does)",
    )
    for option, what, pattern in (
        ("--wbm-atoms", "WBM initial atoms", "*wbm-initial-atoms*.extxyz.zip"),
        ("--wbm-summary", "WBM summary", "*wbm-summary*.csv.gz"),
        ("--wbm-cses", "WBM computed structure entries", "*wbm-computed-structure-entries*.json.bz2"),
        ("--mp-refs", "MP elemental reference entries", "*mp-elemental-reference-entries*.json.gz"),
    ):
        mb.add_argument(option, type=Path, metavar="FILE", help=f"{what} ({pattern})")
    mb.add_argument(
        "--subset",
        choices=("unique_prototypes", "full"),
        default="unique_prototypes",
        help="WBM subset (default %(default)s, matbench's headline)",
    )
    generic = discovery.add_argument_group("a generic set")
    generic.add_argument(
        "--structures",
        type=Path,
        metavar="PATH",
        help="extxyz (frames with info id and a total energy) or a folder of CIF/POSCAR files",
    )
    generic.add_argument("--relaxed", type=Path, metavar="PATH", help="reference-relaxed structures, same ids")
    generic.add_argument("--energies", type=Path, metavar="CSV", help="reference total energies: columns id, energy")
    generic.add_argument(
        "--reference-model",
        metavar="NAME",
        help="score against this model's relaxed energies instead (labelled: not DFT)",
    )
    run = discovery.add_argument_group("the run")
    run.add_argument("--sample", type=int, metavar="N", help="evaluate N structures drawn at random")
    run.add_argument("--seed", type=int, default=0, help="seed of --sample (default %(default)s)")
    run.add_argument("--fmax", type=float, default=RelaxOptions.fmax, help="eV/Å (default %(default)s)")
    run.add_argument("--max-steps", type=int, default=RelaxOptions.max_steps, help="(default %(default)s)")
    run.add_argument("--fixed-cell", action="store_true", help="relax positions only (no FrechetCellFilter)")
    run.add_argument("--job-size", type=int, default=1000, help="structures per server job (default %(default)s)")
    run.add_argument("--report-only", action="store_true", help="relax nothing: score what OUT/results/ holds")
    run.add_argument("--no-geometry", action="store_true", help="skip RMSD and symmetry (slow on large sets)")
    run.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
    discovery.set_defaults(handler=discovery_handler)


def metrics_handler(args: argparse.Namespace) -> None:
    """``mlipserve eval metrics``."""
    from .metrics import MetricsInputError, metrics_command

    try:
        metrics = metrics_command(args.truth, args.pred, args.pred_col, args.out)
    except (MetricsInputError, ValueError, OSError) as error:
        _fail(str(error))
    for subset, values in metrics.items():
        print(f"{subset}: F1 {values['F1']:.3f}  DAF {values['DAF']:.3f}  MAE {values['MAE']:.3f}")
    print(f"wrote {args.out}")


def discovery_handler(args: argparse.Namespace) -> None:
    """``mlipserve eval discovery``."""
    from ..errors import MLIPServeError
    from .discovery import DiscoveryConfig, run_discovery
    from .errors import EvalError
    from .matbench_files import MatbenchPaths

    try:
        config = DiscoveryConfig(
            models=tuple(args.models),
            out=args.out,
            server=args.server,
            matbench=_matbench_paths(args, MatbenchPaths),
            subset=args.subset,
            structures=args.structures,
            relaxed=args.relaxed,
            energies=args.energies,
            reference_model=args.reference_model,
            sample=args.sample,
            seed=args.seed,
            relax=RelaxOptions(fmax=args.fmax, max_steps=args.max_steps, relax_cell=not args.fixed_cell),
            job_size=args.job_size,
            report_only=args.report_only,
            geometry=not args.no_geometry,
            progress=args.progress,
        )
        metrics = run_discovery(config)
    except KeyboardInterrupt:
        print(
            f"\n{PROG}: interrupted; the results so far are in {args.out}/results/: run the same command again "
            "to finish",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except (EvalError, MLIPServeError, OSError, ValueError) as error:
        _fail(str(error))
    for model, subsets in metrics.items():
        shown = "  ".join(f"{s} F1 {v['F1']:.3f}" for s, v in subsets.items() if v.get("F1") == v.get("F1"))
        print(f"{model}: {shown or 'F1 undefined'}")
    print(f"wrote {args.out}/report.html, metrics.json, predictions.csv and the plots")


def _matbench_paths(args: argparse.Namespace, paths: Any) -> Any:
    given = {key: getattr(args, key) for key in ("wbm_atoms", "wbm_summary", "wbm_cses", "mp_refs")}
    if args.matbench_data is None and not any(given.values()):
        return None
    return paths.find(args.matbench_data, **given)


def _fail(message: str) -> NoReturn:
    raise SystemExit(f"{PROG}: {message}")


def main(argv: list[str] | None = None) -> None:
    """``python -m mlipserve.clients.eval.cli eval ...``: the same commands without the rest of ``mlipserve``."""
    parser = argparse.ArgumentParser(prog="mlipserve")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
