"""assim: differentiable-physics data assimilation (implicit PDE models inside Gauss-Newton 4D-Var)."""

import models  # noqa: F401  (float64 enabled once, in models/__init__.py)
from assim.errors import AssimError, ConfigError, ObservationError

__all__ = ["AssimError", "ConfigError", "ObservationError"]
