"""assim: differentiable-physics data assimilation (implicit PDE models inside Gauss-Newton 4D-Var)."""

import assim.io.accessor  # noqa: F401,E402  (registers the ds.assim xarray accessor)
import models  # noqa: F401  (float64 enabled once, in models/__init__.py)
from assim.covariances.component import ComponentCovariance
from assim.covariances.covariance import (
    AbstractBackgroundCovariance,
    BlockCovariance,
    DiagonalCovariance,
    DiagonalObservationError,
    MaskedCovariance,
    SpectralGaussianCovariance,
)
from assim.covariances.diffusion import (
    AbstractNormalisation,
    DiffusionCovariance,
    ExactNormalisation,
    RandomisedNormalisation,
)
from assim.covariances.scaled import ScaledCovariance
from assim.errors import (
    AssimError,
    ConfigError,
    ConvergenceError,
    GridMismatchError,
    ObservationError,
)
from assim.learned.hypergradients import (
    ExactHessian,
    GaussNewtonHessian,
    Implicit,
    OneStep,
    Truncated,
    Unrolled,
)
from assim.learned.losses import (
    KKTResidual,
    LowerBound,
    MaskedMisfit,
    RandomSplit,
    SupervisedStateError,
    WeightedSum,
)
from assim.learned.networks import ConvNetwork, MLPNetwork
from assim.learned.parallel import DataParallel, SingleDevice
from assim.learned.training import Trainer, TrainResult, TrainState, adam, train
from assim.learned.unrolled import UnrolledGaussNewton, UnrolledResult
from assim.observations.observation_set import ObservationReport, ObservationSet
from assim.observations.operators import (
    AbstractObservationOperator,
    AbstractStaticObservation,
    GriddedObservation,
    StationObservation,
    SwathObservation,
    steps_from_times,
)
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.parameter_control import (
    GaussianPrior,
    JointControl,
    LogNormalPrior,
    ParameterControl4DVar,
    ParameterPosterior,
    parameter_posterior,
)
from assim.problems.problem import AbstractVariationalProblem
from assim.problems.twin import ObservationNetwork, TwinExperiment, twin_experiment
from assim.problems.weak_constraint import (
    EveryStep,
    SubWindows,
    WeakConstraint4DVar,
    WeakControl,
)
from assim.solvers.cycling import (
    CycleDiagnostics,
    Cycling,
    CyclingResult,
    StrongConstraint,
    WeakConstraint,
)
from assim.solvers.gauss_newton import (
    AbstractDamping,
    Affine,
    GaussNewton,
    GaussNewtonDiagnostics,
    GaussNewtonResult,
    LevenbergMarquardt,
    NoDamping,
    Nonlinear,
)
from assim.solvers.inner_model import InnerModel, SameModel
from assim.solvers.innovation_preconditioner import InnovationSpectral
from assim.solvers.limited_memory_preconditioner import LimitedMemory
from assim.solvers.preconditioner import NoPreconditioner, ProbedSpectral

# Extension points: every abstract strategy a user can subclass
from assim.learned.hypergradients import AbstractHessian as AbstractHessian
from assim.learned.hypergradients import AbstractHypergradient as AbstractHypergradient
from assim.learned.losses import AbstractBound as AbstractBound
from assim.learned.losses import AbstractLoss as AbstractLoss
from assim.learned.losses import AbstractSplit as AbstractSplit
from assim.learned.networks import AbstractControlNetwork as AbstractControlNetwork
from assim.learned.parallel import AbstractParallelism as AbstractParallelism
from assim.learned.preconditioner import AbstractLearnedPreconditioner as AbstractLearnedPreconditioner
from assim.problems.parameter_control import AbstractParameterPrior as AbstractParameterPrior
from assim.problems.weak_constraint import AbstractModelErrorTiming as AbstractModelErrorTiming
from assim.solvers.cycling import AbstractFormulation as AbstractFormulation
from assim.solvers.gauss_newton import AbstractForcing as AbstractForcing
from assim.solvers.gauss_newton import AbstractLinearity as AbstractLinearity
from assim.solvers.inner_model import AbstractInnerModel as AbstractInnerModel
from assim.solvers.preconditioner import AbstractInnerPreconditioner as AbstractInnerPreconditioner

__all__ = ["AbstractBound", "AbstractCaseForm", "AbstractControlNetwork", "AbstractForcing", "AbstractFormulation", "AbstractHessian", "AbstractHypergradient", "AbstractInnerModel", "AbstractInnerPreconditioner", "AbstractLearnedPreconditioner", "AbstractLinearity", "AbstractLoss", "AbstractModelErrorTiming", "AbstractParallelism", "AbstractParameterPrior", "AbstractSplit", 
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


def __getattr__(name: str):
    """`AbstractCaseForm` on first use: the case layer (pydantic schema, xarray sources) loads only when asked for."""
    if name == "AbstractCaseForm":
        from assim.case.build import AbstractCaseForm

        return AbstractCaseForm
    raise AttributeError(f"module 'assim' has no attribute {name!r}")
