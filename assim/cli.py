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


def _list(args: argparse.Namespace) -> int:
    print("models:")
    for name, text in MODELS.items():
        print(f"  {name:20s} {text}")
    print("grids:  CartesianGrid (1-D/2-D; Periodic, Neumann, Dirichlet), LatLonGrid (ClosedPoles, ExcludedPoles)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assim", description="Differentiable-physics data assimilation.")
    parser.add_argument("--version", action="version", version=f"assim {metadata.version('assim')}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list models and grids").set_defaults(func=_list)
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
