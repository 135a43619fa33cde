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
from assim.cycling import CycleDiagnostics, Cycling, CyclingResult, StrongConstraint, WeakConstraint
from assim.observation_set import ObservationReport, ObservationSet
from assim.observations import (
    AbstractObservationOperator,
    AbstractStaticObservation,
    GriddedObservation,
    StationObservation,
    SwathObservation,
    steps_from_times,
)
from assim.parameter_control import (
    GaussianPrior,
    JointControl,
    LogNormalPrior,
    ParameterControl4DVar,
    ParameterPosterior,
    parameter_posterior,
)
from assim.problem import AbstractVariationalProblem
from assim.scaled_covariance import ScaledCovariance
from assim.twin import ObservationNetwork, TwinExperiment, twin_experiment
from assim.weak_constraint import EveryStep, SubWindows, WeakConstraint4DVar, WeakControl

__all__ = [
    "AbstractBackgroundCovariance",
    "AbstractDamping",
    "AbstractNormalisation",
    "AbstractObservationOperator",
    "AbstractStaticObservation",
    "AbstractVariationalProblem",
    "AssimError",
    "BlockCovariance",
    "ConfigError",
    "ConvergenceError",
    "CycleDiagnostics",
    "Cycling",
    "CyclingResult",
    "DiagonalCovariance",
    "DiagonalObservationError",
    "DiffusionCovariance",
    "EveryStep",
    "ExactNormalisation",
    "GaussianPrior",
    "GaussNewton",
    "GaussNewtonDiagnostics",
    "GaussNewtonResult",
    "GriddedObservation",
    "GridMismatchError",
    "JointControl",
    "LevenbergMarquardt",
    "LogNormalPrior",
    "NoDamping",
    "ObservationError",
    "ObservationNetwork",
    "ObservationReport",
    "ObservationSet",
    "parameter_posterior",
    "ParameterControl4DVar",
    "ParameterPosterior",
    "RandomisedNormalisation",
    "ScaledCovariance",
    "SpectralGaussianCovariance",
    "StationObservation",
    "steps_from_times",
    "StrongConstraint",
    "StrongConstraint4DVar",
    "SubWindows",
    "SwathObservation",
    "twin_experiment",
    "TwinExperiment",
    "WeakConstraint",
    "WeakConstraint4DVar",
    "WeakControl",
]
