"""The `assim` command line: one line of error and a non-zero exit on bad input."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from importlib import metadata
from typing import Any

from assim.errors import AssimError


def kinds(union) -> dict[str, str]:
    """`kind` → first docstring line of each member of a case-file union (the union is the registry)."""
    import typing

    members = typing.get_args(typing.get_args(union)[0]) if typing.get_origin(union) is typing.Annotated else ()
    out = {}
    for member in members or typing.get_args(union):
        tag = typing.get_args(member.model_fields["kind"].annotation)[0]
        out[tag] = (member.__doc__ or "").strip().splitlines()[0]
    return out


def _list(args: argparse.Namespace) -> int:
    from assim.case import schema as config

    print(
        "grids:  [grid] (CartesianGrid 1-D/2-D: periodic, neumann) or the coordinates of a [data] field "
        "(LatLonGrid or CartesianGrid from CF attributes; periodic | closed | open sides; NaN → domain mask)"
    )
    for title, union in (("models", config.ModelConfig), ("observation networks", config.NetworkConfig),
                         ("background covariances", config.BackgroundConfig), ("solvers", config.SolverConfig),
                         ("hypergradients ([training])", config.HypergradientConfig)):  # fmt: skip
        table = kinds(union)
        print(f"{title} (case-file kinds):")
        for name, text in table.items():
            print(f"  {name:20s} {text}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from assim.case.config import load_case

    case, _ = load_case(args.case, args.set)  # the schema (pydantic only): a configuration error comes before JAX
    from assim.case.memory import preflight

    preflight(case)  # a case too big for the machine (or --max-memory): refused before any object is built
    from assim import compile_cache
    from assim.case.build import check

    compile_cache.configure()  # the check's few programs (the network's sampling): loaded on a repeated validate
    check(case)
    mode = (f"cycling {case.cycling.n_windows} windows of {case.cycling.window} steps" if case.cycling
            else f"one window of {case.time.n_steps} steps")  # fmt: skip
    if case.weak_constraint is not None:
        mode += f", weak constraint ({case.weak_constraint.timing.kind} model errors)"
    if case.discover is not None:
        mode += f", discover {', '.join(case.discover.parameters)}"
    if case.grid is not None:
        grid = f"grid n={case.grid.n}"
    else:
        assert case.data is not None  # the schema requires [grid] or [data]
        grid = f"grid from {case.data.field.variable!r} in {case.data.field.file}"
    if case.grid is not None and case.grid.file is not None:
        grid = f"grid from {case.grid.file}"
    if case.observations.file is not None:
        mode += f", observations from {case.observations.file}"
    print(f"{args.case}: valid ({case.model.kind}, {grid}, {mode})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from assim.case.run import run_case

    return run_case(args.case, args.set, args.out, quiet=args.quiet)


def _sweep(args: argparse.Namespace) -> int:
    from assim.case.sweep import COMMANDS, Cluster, sweep

    if args.command not in COMMANDS:
        raise AssimError(f"--command {args.command!r}: unknown; use one of {sorted(COMMANDS)}")
    if args.workers < 1:
        raise AssimError(f"--workers must be ≥ 1 (got {args.workers})")
    cluster = Cluster(args.scheduler, args.workers, processes=not args.threads)
    sweep(args.case, args.vary, args.set, args.out, cluster, COMMANDS[args.command], quiet=args.quiet)
    return 0


def _discover(args: argparse.Namespace) -> int:
    from assim.case.discover import discover_case

    return discover_case(args.case, args.set, args.out, quiet=args.quiet)


def _train(args: argparse.Namespace) -> int:
    from assim.case.train import train_case

    return train_case(args.case, args.set, args.out, quiet=args.quiet)


EXIT_STATUSES = ("exit status: 0 success; 2 invalid input (one line on stderr, nothing written); 3 run, discover: "
                 "outputs written but the solver did not converge (\"converged\": false in metrics.json / "
                 "discovery.json); 130 interrupted (Ctrl-C; nothing written). A second run on the same --out "
                 "while one is running is refused (lock file OUT/.assim.lock; a stale lock, whose process has "
                 "ended, is replaced).")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assim", description="Differentiable-physics data assimilation.",
                                     epilog=EXIT_STATUSES)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"assim {metadata.version('assim')}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list models, grids, observation networks, covariances and solvers").set_defaults(
        func=_list
    )
    overrides = {"action": "append", "default": [], "metavar": "KEY.SUB=VALUE",
                 "help": "override a case entry (value parsed as TOML), e.g. --set grid.n=16; repeatable"}  # fmt: skip
    validate = sub.add_parser("validate", help="check a case file without running it")
    validate.add_argument("case", help="case file (TOML), e.g. cases/quickstart.toml")
    validate.add_argument("--set", **overrides)
    memory: dict[str, Any] = {"metavar": "SIZE", "help": "refuse a case whose memory estimate exceeds SIZE, e.g. 2GB, 500MB "
              "(default: the memory the machine has available)"}  # fmt: skip
    validate.add_argument("--max-memory", **memory)
    cache: dict[str, Any] = {"metavar": "DIR", "help": "JAX's persistent compilation cache (default: $ASSIM_CACHE_DIR, "
             "else $XDG_CACHE_HOME/assim/jax, i.e. ~/.cache/assim/jax)"}  # fmt: skip
    no_cache: dict[str, Any] = {"action": "store_true", "help": "compile everything again; write no cache"}
    validate.add_argument("--cache-dir", **cache)  # the check builds the network: its programs are cached too
    validate.add_argument("--no-cache", **no_cache)
    validate.set_defaults(func=_validate)

    def case_command(name: str, func, case_help: str, quiet_help: str = "print nothing on success", **kwargs):
        """A subcommand that runs a case: CASE, --out, --set and --quiet."""
        command = sub.add_parser(name, epilog=EXIT_STATUSES, **kwargs)
        command.add_argument("case", help=case_help)
        command.add_argument("--out", help="output directory (default: outputs.directory of the case)")
        command.add_argument("--set", **overrides)
        command.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
        command.add_argument("--max-memory", **memory)
        command.add_argument("--cache-dir", **cache)
        command.add_argument("--no-cache", **no_cache)
        command.set_defaults(func=func)
        return command

    case_command("run", _run, "case file (TOML), e.g. cases/quickstart.toml",
                 help="run a case: twin experiment, 4D-Var, netCDF + metrics + figures")  # fmt: skip
    case_command("train", _train, "case file (TOML) with a [training] table, e.g. cases/training.toml",
                 "print nothing on success (no progress bar)",
                 help="learn an unrolled solver (masking + KKT, no truth); test it against GN",
                 description="Trains the unrolled Gauss-Newton solver of the case's [training] table on "
                 "window samples of the case, validates with early stopping, and compares it on unseen "
                 "test windows with classical Gauss-Newton. Writes the checkpoint, training.json, "
                 "losses.png and summary.md.")  # fmt: skip
    case_command("discover", _discover, "case file (TOML) with a [discover] table, e.g. cases/discovery.toml",
                 help="estimate unknown physical parameters with their posterior std")  # fmt: skip
    sweep = case_command("sweep", _sweep, "case file (TOML), e.g. cases/quickstart.toml", "no progress display",
                         help="run many variants of a case through Dask; one xarray Dataset + figure",
                         description="The cartesian product of --vary values, each a variant of the case, run on "
                         "a Dask cluster. Writes sweep.nc, sweep.json, sweep.png. Failed variants are recorded "
                         "(NaN metrics + error); exit status 0 unless every variant failed.")  # fmt: skip
    sweep.add_argument("--vary", action="append", default=[], metavar="KEY.SUB=V1,V2,...",
                       help="values of one case entry (TOML values, commas between), e.g. --vary "
                       "observations.noise=0.01,0.05; repeatable: the variants are the cartesian product")  # fmt: skip
    sweep.add_argument("--command", default="run", help="what each variant runs (default and, for now, only: run)")
    sweep.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786 "
                       "(default: a local cluster)")  # fmt: skip
    sweep.add_argument("--workers", type=int, default=2, help="local cluster: worker processes (default 2)")
    sweep.add_argument("--threads", action="store_true", help="local cluster: threads in one process, not processes")
    return parser


INTERRUPTED = 130


def _interrupted() -> int:
    """Remove every output in progress (temporary files, locks, created directories) and say so: status 130."""
    from assim.io.outputs import abandon_all

    abandon_all()
    print("assim: interrupted; nothing written", file=sys.stderr, flush=True)
    return INTERRUPTED


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C handled by a watcher thread, at once, even inside a JAX computation.

    Python raises KeyboardInterrupt only between bytecodes of the main thread, where JAX may swallow it
    (a garbage-collection callback: "Exception ignored"); the signal's wakeup fd reaches the thread instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = os.pipe()
    os.set_blocking(write, False)

    def watch():
        while signum := os.read(read, 1):  # one byte per signal with a Python handler; empty: the command ended
            if signum[0] == signal.SIGINT:
                os._exit(_interrupted())  # the main thread may be inside JAX: end the process from here

    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="assim-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, previous)
        os.close(write)
        watcher.join()
        os.close(read)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `assim` console script; the exit statuses are those of EXIT_STATUSES."""
    args = build_parser().parse_args(argv)
    try:
        from assim.case.memory import set_bound

        set_bound(getattr(args, "max_memory", None))  # --max-memory: the bound of every command's preflight
        if hasattr(args, "no_cache"):  # a case command: the compilation cache its build will use (no JAX yet)
            from assim.compile_cache import select

            select(args.cache_dir, args.no_cache)
        with _interruptible():
            return args.func(args)
    except AssimError as err:
        print(f"assim: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # raised by the command itself, or a Ctrl-C with no watcher (not the main thread)
        return _interrupted()
    finally:
        from assim.compile_cache import select

        select()  # the next command in this process (an API call, a test) starts from the default again


if __name__ == "__main__":
    sys.exit(main())
