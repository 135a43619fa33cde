"""Physics: grids, finite-volume operators and differentiable implicit time-steppers."""

import jax

# float64 everywhere by default: verification and classical solves need it (DESIGN.md).
jax.config.update("jax_enable_x64", True)

from models.errors import (  # noqa: E402
    AssimError,
    ConvergenceError,
    GridMismatchError,
    InputError,
    NonFiniteError,
    StabilityError,
)
from models.grid import (  # noqa: E402
    AbstractBoundary,
    AbstractGrid,
    CartesianGrid,
    ClosedPoles,
    Dirichlet,
    ExcludedPoles,
    LatLonGrid,
    Neumann,
    Open,
    Periodic,
)

__all__ = [
    "AbstractBoundary",
    "AbstractGrid",
    "AssimError",
    "CartesianGrid",
    "ClosedPoles",
    "ConvergenceError",
    "Dirichlet",
    "ExcludedPoles",
    "GridMismatchError",
    "InputError",
    "LatLonGrid",
    "Neumann",
    "NonFiniteError",
    "Open",
    "Periodic",
    "StabilityError",
]
