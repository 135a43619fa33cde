"""Physics: grids, finite-volume operators and differentiable implicit time-steppers."""

import os
import sys
from typing import TYPE_CHECKING

# float64 everywhere by default: verification and classical solves need it (DESIGN.md). JAX is not imported
# here, so `import models` (and the `assim` command's case checks) stays light: JAX reads the variable when
# it is first imported; one imported already is switched now.
if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_enable_x64", True)
else:
    os.environ["JAX_ENABLE_X64"] = "True"

from models.errors import (
    AssimError,
    ConvergenceError,
    GridMismatchError,
    InputError,
    NonFiniteError,
    StabilityError,
)

_GRID = ("AbstractBoundary", "AbstractGrid", "CartesianGrid", "ClosedPoles", "Dirichlet", "ExcludedPoles",
         "LatLonGrid", "Neumann", "Open", "Periodic")  # fmt: skip

if TYPE_CHECKING:  # the names __getattr__ gives, for type checkers (importing models.grid here would import JAX)
    from models.grid import (
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


def __getattr__(name: str):
    """The grid classes on first use (models.grid imports JAX)."""
    if name not in _GRID:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    import models.grid

    return getattr(models.grid, name)


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
