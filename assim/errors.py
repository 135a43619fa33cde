"""Errors a user can cause in assimilation: one hierarchy with the models', rooted at AssimError."""

from models.errors import (  # noqa: F401  (re-exported: one hierarchy for the whole package)
    AssimError,
    ConvergenceError,
    GridMismatchError,
    InputError,
    NonFiniteError,
    StabilityError,
)


class ConfigError(AssimError, ValueError):
    """A case file or command-line override is invalid; the message names the key and the fix."""


class ObservationError(InputError):
    """Observations are unusable: wrong grid, no valid values, or inconsistent errors."""
