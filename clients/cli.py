"""``mlipserve predict``, ``relax``, ``select``, ``md`` and ``neb``: structures from files, through a server, to
extended XYZ.

Exit status: 0 when results were written (structures that failed are named on stderr), 1 when nothing could be
written (nothing readable, every structure failed, the server refused the request), 3 when the server could not
be reached (argparse uses 2 for bad usage).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, get_args

from ..protocol import IntegratorName, Interpolation, MDOptions, NEBOptions, OptimizerName, RelaxOptions
from .client import Client
from .errors import RequestFailed
from .files import Frame, Problem, read_all, result_atoms, structure_error, write_extxyz
from .md import MDResult
from .options import DEFAULT_URL
from .relaxing import RELAX_DIRECT_LIMIT
from .results import RelaxResult, Result

EXIT_NOTHING_WRITTEN = 1
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

Send = Callable[[Client, list[Any], argparse.Namespace], Sequence[Result]]


def add_file_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``predict`` and ``relax`` to the ``mlipserve`` command line."""
    predict = commands.add_parser(
        "predict",
        help="energies, forces and stresses of structure files, written as extxyz",
        description="Send every frame of the files to a server; write energy, forces and stress as extxyz.",
    )
    _add_common_options(predict)
    predict.set_defaults(handler=predict_command)

    relax = commands.add_parser(
        "relax",
        help="relax structure files on a server (FIRE + FrechetCellFilter), written as extxyz",
        description="Relax every frame of the files on a server (matbench-discovery defaults); write the relaxed "
        "structures with energy, forces, stress, steps, converged and stop_reason as extxyz.",
    )
    _add_common_options(relax)
    _add_relax_options(relax)
    relax.set_defaults(handler=relax_command)

    select = commands.add_parser(
        "select",
        help="grade structure files with a model's active set and pick those to compute with DFT, as extxyz",
        description="Grade every frame of the files (MTP grade or ACE gamma, on the server) and write the D-optimal "
        "subset of at most --max-count frames (MaxVol against the active set) as extxyz with their grades; "
        "with --above, also every frame graded above --threshold.",
    )
    select.add_argument("files", nargs="*", metavar="FILE", help="candidate structure files (e.g. relax output)")
    select.add_argument("--job", default=None, metavar="ID", help="also the final geometries of a relaxation job")
    select.add_argument("-o", "--output", required=True, metavar="OUT.extxyz", help="the selected frames")
    select.add_argument("--model", default=None, help="a model with an active set (default: the server's first)")
    select.add_argument("--server", default=DEFAULT_URL, metavar="URL", help="server (default %(default)s)")
    select.add_argument("--format", default=None, help="ase format of the input files (default: guessed per file)")
    select.add_argument("--max-count", type=int, default=10, metavar="N", help="at most N (default %(default)s)")
    select.add_argument("--threshold", type=float, default=1.0, help="grade above which a frame is flagged (1.0)")
    select.add_argument("--above", default=None, metavar="ABOVE.extxyz", help="also write every flagged frame")
    select.set_defaults(handler=select_command)
    _add_md_command(commands)
    _add_neb_command(commands)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="structure files (any format ase reads) or folders")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.extxyz", help="extxyz file to write")
    parser.add_argument("--model", default=None, help="model to use (default: the server's first)")
    parser.add_argument("--server", default=DEFAULT_URL, metavar="URL", help="server (default %(default)s)")
    parser.add_argument("--format", default=None, help="ase format of the input files (default: guessed per file)")
    parser.add_argument(
        "--job-above",
        type=int,
        default=RELAX_DIRECT_LIMIT,
        metavar="N",
        help="send more than N structures as one server-side job (default %(default)s; relax: also any set over 256)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")


def _add_relax_options(parser: argparse.ArgumentParser) -> None:
    defaults = RelaxOptions()
    parser.add_argument(
        "--optimizer", choices=get_args(OptimizerName), default=defaults.optimizer, help="default %(default)s"
    )
    parser.add_argument("--fmax", type=float, default=defaults.fmax, help="eV/Å (default %(default)s)")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="default %(default)s")
    parser.add_argument("--no-relax-cell", action="store_true", help="keep the cell fixed")
    parser.add_argument("--hydrostatic-strain", action="store_true", help="let the cell only scale uniformly")
    parser.add_argument(
        "--scalar-pressure",
        type=float,
        default=defaults.scalar_pressure,
        help="eV/Å³; 1 GPa = 0.006241509 eV/Å³ (default %(default)s)",
    )
    parser.add_argument(
        "--max-grade",
        type=float,
        default=defaults.max_grade,
        help="stop where the model's uncertainty (MTP grade, ACE gamma, committee spread) goes above this",
    )


def predict_command(args: argparse.Namespace) -> int:
    """``mlipserve predict``: the exit status."""
    return run(args, "predict", send_predict)


def relax_command(args: argparse.Namespace) -> int:
    """``mlipserve relax``: the exit status."""
    return run(args, "relax", send_relax)


def send_predict(client: Client, structures: list[Any], args: argparse.Namespace) -> Sequence[Result]:
    """Single points; through a job (progress followed on the server) for large sets."""
    if len(structures) > args.job_above:
        return client.run_job(structures, errors="return")
    return client.predict(structures, errors="return")  # type: ignore[return-value]  # a list given, a list back


def send_relax(client: Client, structures: list[Any], args: argparse.Namespace) -> Sequence[Result]:
    """Relaxations with the command's options; through a job for large sets."""
    options = RelaxOptions(
        optimizer=args.optimizer,
        fmax=args.fmax,
        max_steps=args.max_steps,
        relax_cell=not args.no_relax_cell,
        hydrostatic_strain=args.hydrostatic_strain,
        scalar_pressure=args.scalar_pressure,
        max_grade=args.max_grade,
    )
    if len(structures) > args.job_above:
        return client.run_job(structures, relax=options, errors="return")
    return client.relax(structures, errors="return", **options.request())


def select_command(args: argparse.Namespace) -> int:
    """``mlipserve select``: the exit status."""
    name = "mlipserve select"
    if not args.files and args.job is None:
        return fail(name, "give candidate files or --job ID (a relaxation job); nothing written", EXIT_NOTHING_WRITTEN)
    frames, problems = read_all(args.files, args.format)
    report(name, problems)
    if not reachable(args.server):
        return fail(name, f"cannot reach the server at {args.server}; nothing written", EXIT_UNREACHABLE)
    try:
        with Client(args.server, model=args.model, progress=False) as client:
            if args.job is not None:
                frames += job_frames(client, args.job)
            if not frames:
                return fail(name, "no structure could be read; nothing written", EXIT_NOTHING_WRITTEN)
            selection = client.select([f.atoms for f in frames], args.max_count, args.threshold)
    except RequestFailed as error:
        return fail(name, f"the server refused the request: {error}; nothing written", EXIT_NOTHING_WRITTEN)
    except ValueError as error:
        return fail(name, f"{error}; nothing written", EXIT_NOTHING_WRITTEN)
    report(name, [Problem(frames[e.index].source, frames[e.index].index, e.message) for e in selection.errors])
    picked = [_graded(frames[i], selection, i) for i in selection.selected]
    write_extxyz(args.output, picked)
    if args.above is not None:
        write_extxyz(args.above, [_graded(frames[i], selection, i) for i in selection.above])
    usable = len(frames) - len(selection.errors)
    print(
        f"{name}: graded {usable} structures with {selection.model.get('name')}: {len(selection.above)} above "
        f"{args.threshold:g}; wrote {len(picked)} selected for DFT to {args.output}",
        file=sys.stderr,
    )
    return 0


def job_frames(client: Client, job_id: str) -> list[Frame]:
    """The final geometry of every finished relaxation of job ``job_id``, as frames named ``job:ID``.

    A prediction job's results hold no structures (the caller has them: select from the file it submitted); a
    relaxation that failed has none either and is left out.
    """
    results = list(client.job_results(job_id))
    frames = [
        Frame(result.atoms, f"job:{job_id}", index)
        for index, result in enumerate(results)
        if isinstance(result, RelaxResult) and result.atoms is not None
    ]
    if results and not any(isinstance(result, RelaxResult) for result in results):
        raise ValueError(f"job {job_id} is a prediction job: its results hold no structures; select from its input")
    return frames


def _graded(frame: Frame, selection: Any, index: int) -> Any:
    """The frame's geometry (no results: it is for DFT) with its grade, source and place among the candidates."""
    from ase import Atoms

    atoms = Atoms(frame.atoms.numbers, frame.atoms.positions, cell=frame.atoms.cell, pbc=frame.atoms.pbc)
    atoms.info.update(grade=float(selection.grades[index]), candidate=index, source=frame.source, frame=frame.index)
    atoms.info.update(above_threshold=index in selection.above, model=selection.model.get("name"))
    return atoms


def run(args: argparse.Namespace, command: str, send: Send) -> int:
    """Read the files, send their frames with ``send``, write what came back; the exit status."""
    name = f"mlipserve {command}"
    frames, problems = read_all(args.files, args.format)
    report(name, problems)
    if not frames:
        return fail(name, "no structure could be read; nothing written", EXIT_NOTHING_WRITTEN)
    if not reachable(args.server):
        message = f"cannot reach the server at {args.server} (is `mlipserve serve` running?); nothing written"
        return fail(name, message, EXIT_UNREACHABLE)
    try:
        with Client(args.server, model=args.model, progress=False if args.no_progress else None) as client:
            results = send(client, [frame.atoms for frame in frames], args)
    except RequestFailed as error:
        unreachable = error.status is None
        what = "lost the server" if unreachable else "the server refused the request"
        return fail(
            name, f"{what}: {error}; nothing written", EXIT_UNREACHABLE if unreachable else EXIT_NOTHING_WRITTEN
        )
    except KeyboardInterrupt:
        return fail(name, "interrupted; nothing written", EXIT_INTERRUPTED)
    written, failed = split(frames, results)
    report(name, failed)
    if not written:
        return fail(name, f"all {len(frames)} structures failed; nothing written", EXIT_NOTHING_WRITTEN)
    write_extxyz(args.output, written)
    print(f"{name}: {summary(written, len(failed), args.output)}", file=sys.stderr)
    return 0


def split(frames: Sequence[Frame], results: Sequence[Result]) -> tuple[list[Any], list[Problem]]:
    """The frames with their results attached, and the errors of those that failed."""
    written, failed = [], []
    for frame, result in zip(frames, results, strict=True):
        if result.ok:
            written.append(result_atoms(frame, result))
        else:
            failed.append(structure_error(frame, result))
    return written, failed


def summary(written: Sequence[Any], failed: int, output: str) -> str:
    """One line: how many structures were written where, with which model, how relaxations ended, and failures."""
    info = written[0].info
    line = f"wrote {len(written)} structures to {output} (model {info['model']} {info.get('model_version', '')})"
    if "stop_reason" in info:
        reasons = Counter(atoms.info["stop_reason"] for atoms in written)
        line += ": " + ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return line + (f"; {failed} failed (above)" if failed else "")


def report(name: str, problems: Sequence[Problem]) -> None:
    for problem in problems:
        print(f"{name}: {problem}", file=sys.stderr)


def fail(name: str, message: str, status: int) -> int:
    print(f"{name}: {message}", file=sys.stderr)
    return status


def reachable(url: str, timeout: float = 10.0) -> bool:
    """Whether anything answers HTTP at ``url`` (``/healthz``); the client then retries a server still loading."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/healthz", timeout=timeout)
    except httpx.TransportError:
        return False
    return True


# -- md and neb ---------------------------------------------------------------------------------------------------

#: Frames the ``md`` command records by default: it is there to write trajectories.
MD_TRAJECTORY_EVERY = 10


def _add_md_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    md = commands.add_parser(
        "md",
        help="molecular dynamics of structure files on a server, trajectories written as extxyz",
        description="Run MD on every frame of the files on a server; write each structure's recorded frames and its "
        "final state (velocities as momenta; info structure, source, frame, step, time_fs, temperature; the final "
        "one also stop_reason, seed and final=True) to one extxyz file. Frames whose atoms carry momenta start "
        "from those velocities, the others from a Maxwell-Boltzmann distribution at --temperature-k.",
    )
    md.add_argument("files", nargs="+", metavar="FILE", help="structure files (any format ase reads) or folders")
    md.add_argument("-o", "--output", required=True, metavar="OUT.extxyz", help="extxyz file to write")
    _add_server_options(md)
    defaults = MDOptions()
    md.add_argument("--integrator", choices=get_args(IntegratorName), default=defaults.integrator)
    md.add_argument("--steps", type=int, default=defaults.steps, metavar="N", help="time steps (default %(default)s)")
    md.add_argument("--timestep-fs", type=float, default=defaults.timestep_fs, help="fs (default %(default)s)")
    md.add_argument(
        "--temperature-k",
        dest="temperature_K",
        type=float,
        default=None,
        help="thermostat target and initial Maxwell-Boltzmann temperature, K (needed by langevin, csvr, npt_crescale)",
    )
    md.add_argument(
        "--pressure", type=float, default=defaults.pressure, help="npt_crescale: eV/Å³; 1 GPa = 0.006241509"
    )
    md.add_argument(
        "--trajectory-every",
        type=int,
        default=MD_TRAJECTORY_EVERY,
        metavar="K",
        help="record a frame every K steps and the last one; 0: only the final state (default %(default)s)",
    )
    md.add_argument("--seed", type=int, default=None, help="structure i runs with seed S+i (default: drawn)")
    md.add_argument("--friction-per-fs", type=float, default=defaults.friction_per_fs, help="langevin: 1/fs")
    md.add_argument("--thermostat-time-fs", type=float, default=defaults.thermostat_time_fs, help="csvr, npt: fs")
    md.add_argument("--barostat-time-fs", type=float, default=defaults.barostat_time_fs, help="npt_crescale: fs")
    md.add_argument("--barostat", choices=("isotropic", "anisotropic"), default=defaults.barostat)
    md.add_argument("--max-grade", type=float, default=None, help="stop where the model's uncertainty goes above")
    md.set_defaults(handler=md_command)


def _add_neb_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    neb = commands.add_parser(
        "neb",
        help="the minimum-energy path between two structure files on a server (climbing-image NEB); the barrier",
        description="Find the minimum-energy path from INITIAL to FINAL (one structure each, same atoms in the same "
        "order) with a climbing-image nudged elastic band on a server; print the barrier, optionally write the "
        "images as extxyz and the energy profile as an image.",
    )
    neb.add_argument("initial", metavar="INITIAL", help="the initial end point (one structure)")
    neb.add_argument("final", metavar="FINAL", help="the final end point (one structure)")
    neb.add_argument("-o", "--output", default=None, metavar="PATH.extxyz", help="write the images here")
    neb.add_argument("--plot", default=None, metavar="PROFILE.png", help="write the energy profile here")
    _add_server_options(neb)
    defaults = NEBOptions()
    neb.add_argument("--images", type=int, default=defaults.images, help="images between the ends (%(default)s)")
    neb.add_argument("--interpolation", choices=get_args(Interpolation), default=defaults.interpolation)
    neb.add_argument("--no-climb", action="store_true", help="no climbing image")
    neb.add_argument("--fmax", type=float, default=defaults.fmax, help="eV/Å (default %(default)s)")
    neb.add_argument("--max-steps", type=int, default=defaults.max_steps, help="default %(default)s")
    neb.add_argument("--spring-constant", type=float, default=defaults.spring_constant, help="eV/Å² (%(default)s)")
    neb.set_defaults(handler=neb_command)


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model to use (default: the server's first)")
    parser.add_argument(
        "--server", "--url", dest="server", default=DEFAULT_URL, metavar="URL", help="server (default %(default)s)"
    )
    parser.add_argument("--format", default=None, help="ase format of the input files (default: guessed per file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")


def md_command(args: argparse.Namespace) -> int:
    """``mlipserve md``: the exit status."""
    name = "mlipserve md"
    frames, problems = read_all(args.files, args.format)
    report(name, problems)
    if not frames:
        return fail(name, "no structure could be read; nothing written", EXIT_NOTHING_WRITTEN)
    options = {
        key: getattr(args, key)
        for key in ("integrator", "steps", "timestep_fs", "temperature_K", "pressure", "trajectory_every", "seed")
    }
    options |= {key: getattr(args, key) for key in ("friction_per_fs", "thermostat_time_fs", "barostat_time_fs")}
    options |= {"barostat": args.barostat, "max_grade": args.max_grade}
    structures = [frame.atoms for frame in frames]
    results, status = _ask(name, args, lambda client: client.md(structures, errors="return", **options))
    if results is None:
        return status
    written: list[Any] = []
    failed: list[Problem] = []
    for index, (frame, result) in enumerate(zip(frames, results, strict=True)):
        if not result.ok:
            failed.append(structure_error(frame, result))
            continue
        for atoms in result.frames():
            atoms.info.update(structure=index, source=frame.source, frame=frame.index, model=result.model.get("name"))
            written.append(atoms)
    report(name, failed)
    if not written:
        return fail(name, f"all {len(frames)} structures failed; nothing written", EXIT_NOTHING_WRITTEN)
    write_extxyz(args.output, written)
    ran = [result for result in results if isinstance(result, MDResult) and result.ok]
    reasons = Counter(result.stop_reason for result in ran)
    ended = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    line = f"wrote {len(written)} frames of {len(ran)} structures to {args.output} (model {ran[0].model.get('name')})"
    print(f"{name}: {line}: {ended}" + (f"; {len(failed)} failed (above)" if failed else ""), file=sys.stderr)
    return 0


def neb_command(args: argparse.Namespace) -> int:
    """``mlipserve neb``: the exit status."""
    name = "mlipserve neb"
    ends: list[Any] = []
    for path in (args.initial, args.final):
        frames, problems = read_all([path], args.format)
        report(name, problems)
        if len(frames) != 1:
            found = f"{len(frames)} structures" if frames else "no structure"
            return fail(name, f"{path}: {found}; give one structure per end point", EXIT_NOTHING_WRITTEN)
        ends.append(frames[0].atoms)
    options = {
        "images": args.images,
        "interpolation": args.interpolation,
        "climb": not args.no_climb,
        "fmax": args.fmax,
        "max_steps": args.max_steps,
        "spring_constant": args.spring_constant,
    }
    found, status = _ask(name, args, lambda client: [client.neb(*ends, errors="return", **options)])
    if found is None:
        return status
    result = found[0]
    if not result.ok:
        assert result.error is not None
        return fail(name, f"{result.error.message} [{result.error.code}]", EXIT_NOTHING_WRITTEN)
    if args.output is not None:
        for image in result.images:
            image.info["model"] = result.model.get("name")
        result.write(args.output)
    if args.plot is not None:
        try:
            result.plot(args.plot)
        except ImportError as error:
            return fail(name, f"{error}; no plot written", EXIT_NOTHING_WRITTEN)
    ended = f"converged in {result.steps} steps" if result.converged else f"{result.stop_reason} after {result.steps}"
    print(
        f"barrier {result.barrier:.4f} eV (backward {result.barrier_backward:.4f} eV), saddle at image "
        f"{result.saddle_index} of 0-{len(result.images) - 1}; {ended} (fmax {result.fmax:.3g} eV/Å, model "
        f"{result.model.get('name')})"
    )
    return 0


def _ask(name: str, args: argparse.Namespace, send: Callable[[Client], Sequence[Any]]) -> tuple[Any, int]:
    """What ``send`` got from the server at ``args.server``, or None and the exit status (the problem said)."""
    if not reachable(args.server):
        message = f"cannot reach the server at {args.server} (is `mlipserve serve` running?); nothing written"
        return None, fail(name, message, EXIT_UNREACHABLE)
    try:
        with Client(args.server, model=args.model, progress=False if args.no_progress else None) as client:
            return send(client), 0
    except RequestFailed as error:
        unreachable = error.status is None
        what = "lost the server" if unreachable else "the server refused the request"
        status = EXIT_UNREACHABLE if unreachable else EXIT_NOTHING_WRITTEN
        return None, fail(name, f"{what}: {error}; nothing written", status)
    except KeyboardInterrupt:
        return None, fail(name, "interrupted; nothing written", EXIT_INTERRUPTED)
