"""The `assim` command line: one line of error and a non-zero exit on bad input."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

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

    print("grids:  [grid] (CartesianGrid 1-D/2-D: periodic, neumann) or the coordinates of a [data] field "
          "(LatLonGrid or CartesianGrid from CF attributes; periodic | closed | open sides; NaN → domain mask)")
    for title, union in (("models", config.ModelConfig), ("observation networks", config.NetworkConfig),
                         ("background covariances", config.BackgroundConfig), ("solvers", config.SolverConfig),
                         ("hypergradients ([training])", config.HypergradientConfig)):  # fmt: skip
        table = kinds(union)
        print(f"{title} (case-file kinds):")
        for name, text in table.items():
            print(f"  {name:20s} {text}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from assim.case.build import check
    from assim.case.config import load_case

    case, _ = load_case(args.case, args.set)
    check(case)
    mode = (f"cycling {case.cycling.n_windows} windows of {case.cycling.window} steps" if case.cycling
            else f"one window of {case.time.n_steps} steps")  # fmt: skip
    if case.weak_constraint is not None:
        mode += f", weak constraint ({case.weak_constraint.timing.kind} model errors)"
    if case.discover is not None:
        mode += f", discover {', '.join(case.discover.parameters)}"
    grid = f"grid n={case.grid.n}" if case.grid is not None else f"grid from {case.data.field.variable!r} in {case.data.field.file}"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assim", description="Differentiable-physics data assimilation.")
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
    validate.set_defaults(func=_validate)

    def case_command(name: str, func, case_help: str, quiet_help: str = "print nothing on success", **kwargs):
        """A subcommand that runs a case: CASE, --out, --set and --quiet."""
        command = sub.add_parser(name, **kwargs)
        command.add_argument("case", help=case_help)
        command.add_argument("--out", help="output directory (default: outputs.directory of the case)")
        command.add_argument("--set", **overrides)
        command.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `assim` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AssimError as err:
        print(f"assim: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
