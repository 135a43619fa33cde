"""assim: differentiable-physics data assimilation (implicit PDE models inside Gauss-Newton 4D-Var)."""

import models  # noqa: F401  (float64 enabled once, in models/__init__.py)
from assim.covariance import (
    AbstractBackgroundCovariance,
    BlockCovariance,
    DiagonalCovariance,
    DiagonalObservationError,
    SpectralGaussianCovariance,
)
from assim.cost import StrongConstraint4DVar
from assim.diffusion_covariance import (
    AbstractNormalisation,
    DiffusionCovariance,
    ExactNormalisation,
    RandomisedNormalisation,
)
from assim.errors import AssimError, ConfigError, ConvergenceError, GridMismatchError, ObservationError
from assim.gauss_newton import (
    AbstractDamping,
    GaussNewton,
    GaussNewtonDiagnostics,
    GaussNewtonResult,
    LevenbergMarquardt,
    NoDamping,
)
from assim.observation_set import ObservationReport, ObservationSet
from assim.observations import (
    AbstractObservationOperator,
    AbstractStaticObservation,
    GriddedObservation,
    StationObservation,
    SwathObservation,
    steps_from_times,
)

__all__ = [
    "AbstractBackgroundCovariance",
    "AbstractDamping",
    "AbstractNormalisation",
    "AbstractObservationOperator",
    "AbstractStaticObservation",
    "AssimError",
    "BlockCovariance",
    "ConfigError",
    "ConvergenceError",
    "DiagonalCovariance",
    "DiagonalObservationError",
    "DiffusionCovariance",
    "ExactNormalisation",
    "GaussNewton",
    "GaussNewtonDiagnostics",
    "GaussNewtonResult",
    "GridMismatchError",
    "LevenbergMarquardt",
    "NoDamping",
    "ObservationError",
    "ObservationReport",
    "ObservationSet",
    "RandomisedNormalisation",
    "SpectralGaussianCovariance",
    "StationObservation",
    "StrongConstraint4DVar",
    "SwathObservation",
    "GriddedObservation",
    "steps_from_times",
]
