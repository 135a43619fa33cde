"""assim: differentiable-physics data assimilation (implicit PDE models inside Gauss-Newton 4D-Var)."""

import models  # noqa: F401  (float64 enabled once, in models/__init__.py)
from assim.covariance import (
    AbstractBackgroundCovariance,
    BlockCovariance,
    DiagonalCovariance,
    DiagonalObservationError,
    MaskedCovariance,
    SpectralGaussianCovariance,
)
from assim.component_covariance import ComponentCovariance
from assim.cost import StrongConstraint4DVar
from assim.diffusion_covariance import (
    AbstractNormalisation,
    DiffusionCovariance,
    ExactNormalisation,
    RandomisedNormalisation,
)
import assim.accessor  # noqa: F401,E402  (registers the ds.assim xarray accessor)
from assim.errors import AssimError, ConfigError, ConvergenceError, GridMismatchError, ObservationError
from assim.gauss_newton import (
    AbstractDamping,
    Affine,
    GaussNewton,
    GaussNewtonDiagnostics,
    GaussNewtonResult,
    LevenbergMarquardt,
    NoDamping,
    Nonlinear,
)
from assim.inner_model import InnerModel, SameModel
from assim.inner_preconditioner import NoPreconditioner, ProbedSpectral
from assim.innovation_preconditioner import InnovationSpectral
from assim.limited_memory_preconditioner import LimitedMemory
from assim.cycling import CycleDiagnostics, Cycling, CyclingResult, StrongConstraint, WeakConstraint
from assim.hypergradients import ExactHessian, GaussNewtonHessian, Implicit, OneStep, Truncated, Unrolled
from assim.losses import KKTResidual, LowerBound, MaskedMisfit, RandomSplit, SupervisedStateError, WeightedSum
from assim.networks import ConvNetwork, MLPNetwork
from assim.observation_set import ObservationReport, ObservationSet
from assim.observations import (
    AbstractObservationOperator,
    AbstractStaticObservation,
    GriddedObservation,
    StationObservation,
    SwathObservation,
    steps_from_times,
)
from assim.parallel import DataParallel, SingleDevice
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
from assim.training import Trainer, TrainResult, TrainState, adam, train
from assim.twin import ObservationNetwork, TwinExperiment, twin_experiment
from assim.unrolled import UnrolledGaussNewton, UnrolledResult
from assim.weak_constraint import EveryStep, SubWindows, WeakConstraint4DVar, WeakControl

__all__ = [
    "AbstractBackgroundCovariance",
    "AbstractDamping",
    "AbstractNormalisation",
    "AbstractObservationOperator",
    "AbstractStaticObservation",
    "AbstractVariationalProblem",
    "adam",
    "Affine",
    "AssimError",
    "BlockCovariance",
    "ComponentCovariance",
    "ConfigError",
    "ConvergenceError",
    "ConvNetwork",
    "CycleDiagnostics",
    "Cycling",
    "CyclingResult",
    "DataParallel",
    "DiagonalCovariance",
    "DiagonalObservationError",
    "DiffusionCovariance",
    "EveryStep",
    "ExactHessian",
    "ExactNormalisation",
    "GaussianPrior",
    "GaussNewton",
    "GaussNewtonDiagnostics",
    "GaussNewtonHessian",
    "GaussNewtonResult",
    "GriddedObservation",
    "GridMismatchError",
    "Implicit",
    "InnerModel",
    "InnovationSpectral",
    "JointControl",
    "KKTResidual",
    "LevenbergMarquardt",
    "LimitedMemory",
    "LogNormalPrior",
    "LowerBound",
    "MaskedCovariance",
    "MaskedMisfit",
    "MLPNetwork",
    "NoDamping",
    "Nonlinear",
    "NoPreconditioner",
    "ObservationError",
    "ObservationNetwork",
    "ObservationReport",
    "ObservationSet",
    "OneStep",
    "parameter_posterior",
    "ProbedSpectral",
    "ParameterControl4DVar",
    "ParameterPosterior",
    "RandomisedNormalisation",
    "RandomSplit",
    "SameModel",
    "ScaledCovariance",
    "SingleDevice",
    "SpectralGaussianCovariance",
    "StationObservation",
    "steps_from_times",
    "StrongConstraint",
    "StrongConstraint4DVar",
    "SubWindows",
    "SupervisedStateError",
    "SwathObservation",
    "train",
    "Trainer",
    "TrainResult",
    "TrainState",
    "Truncated",
    "twin_experiment",
    "TwinExperiment",
    "Unrolled",
    "UnrolledGaussNewton",
    "UnrolledResult",
    "WeakConstraint",
    "WeakConstraint4DVar",
    "WeakControl",
    "WeightedSum",
]
