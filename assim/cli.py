"""The `assim` command line: one line of error and a non-zero exit on bad input."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from assim.errors import AssimError

MODELS = {
    "diffusion": "models.diffusion:Diffusion — ∂u/∂t = ∇·(κ∇u), implicit θ-scheme, preconditioned CG",
    "advection_diffusion": "models.advection_diffusion:AdvectionDiffusion — ∂c/∂t + ∇·(vc) = ∇·(κ∇c), implicit or IMEX",
    "burgers": "models.burgers:Burgers — ∂u/∂t + (u·∇)u = νΔu, implicit, Newton–Krylov",
    "shallow_water": "models.shallow_water:ShallowWater — rotating shallow water, semi-implicit (Helmholtz CG)",
    "lorenz96": "models.lorenz96:Lorenz96 — dx_i/dt = (x_{i+1} − x_{i−2})x_{i−1} − x_i + F",
}


OBSERVATIONS = {
    "random_fraction": "a random fraction of the grid cells (GriddedObservation)",
    "stations": "stations at random or given points, bilinear interpolation (StationObservation)",
    "regular": "every k-th cell along each axis (GriddedObservation)",
}
COVARIANCES = {
    "spectral_gaussian": "homogeneous Gaussian correlations by FFT (periodic grids)",
    "diffusion": "correlations by implicit diffusion steps (any boundary)",
    "diagonal": "uncorrelated errors",
}
SOLVERS = {
    "gauss_newton": "incremental 4D-Var, matrix-free CG inner loop, undamped",
    "levenberg_marquardt": "Gauss-Newton with Levenberg-Marquardt damping (nonlinear models)",
}


def _list(args: argparse.Namespace) -> int:
    print("models:")
    for name, text in MODELS.items():
        print(f"  {name:20s} {text}")
    print("grids:  CartesianGrid (1-D/2-D; Periodic, Neumann, Dirichlet), LatLonGrid (ClosedPoles, ExcludedPoles)")
    for title, table in (("observation networks", OBSERVATIONS), ("background covariances", COVARIANCES),
                         ("solvers", SOLVERS)):  # fmt: skip
        print(f"{title} (case-file kinds):")
        for name, text in table.items():
            print(f"  {name:20s} {text}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from assim.case import check
    from assim.config import load_case

    case, _ = load_case(args.case, args.set)
    check(case)
    mode = (f"cycling {case.cycling.n_windows} windows of {case.cycling.window} steps" if case.cycling
            else f"one window of {case.time.n_steps} steps")  # fmt: skip
    print(f"{args.case}: valid ({case.model.kind}, grid n={case.grid.n}, {mode})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from assim.run import run_case

    return run_case(args.case, args.set, args.out, quiet=args.quiet)


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
    run = sub.add_parser("run", help="run a case: twin experiment, 4D-Var, netCDF + metrics + figures")
    run.add_argument("case", help="case file (TOML), e.g. cases/quickstart.toml")
    run.add_argument("--out", help="output directory (default: outputs.directory of the case)")
    run.add_argument("--set", **overrides)
    run.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    run.set_defaults(func=_run)
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
