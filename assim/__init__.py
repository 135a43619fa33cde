"""assim: differentiable-physics data assimilation (implicit PDE models inside Gauss-Newton 4D-Var).

Every public name loads on first use (`_EXPORTS`: module → names), so `import assim`, and with it the
`assim` command, reads a case file and reports a configuration error before JAX is imported.
"""

import importlib

import assim.io.accessor  # noqa: F401  (registers the ds.assim xarray accessor)
import models  # noqa: F401  (float64 enabled once, in models/__init__.py)

_EXPORTS: dict[str, tuple[str, ...]] = {
    "assim.covariances.component": ("ComponentCovariance",),
    "assim.covariances.covariance": (
        "AbstractBackgroundCovariance",
        "BlockCovariance",
        "DiagonalCovariance",
        "DiagonalObservationError",
        "MaskedCovariance",
        "SpectralGaussianCovariance",
    ),
    "assim.covariances.diffusion": (
        "AbstractNormalisation",
        "DiffusionCovariance",
        "ExactNormalisation",
        "RandomisedNormalisation",
    ),
    "assim.covariances.scaled": ("ScaledCovariance",),
    "assim.covariances.frozen": ("FrozenCovariance",),
    "assim.errors": (
        "AssimError",
        "ConfigError",
        "ConvergenceError",
        "GridMismatchError",
        "ObservationError",
    ),
    "assim.learned.hypergradients": (
        "ExactHessian",
        "GaussNewtonHessian",
        "Implicit",
        "OneStep",
        "Truncated",
        "Unrolled",
        "AbstractHessian",
        "AbstractHypergradient",
    ),
    "assim.learned.losses": (
        "KKTResidual",
        "LowerBound",
        "MaskedMisfit",
        "RandomSplit",
        "SupervisedStateError",
        "WeightedSum",
        "AbstractBound",
        "AbstractLoss",
        "AbstractSplit",
    ),
    "assim.learned.networks": (
        "ConvNetwork",
        "MLPNetwork",
        "AbstractControlNetwork",
    ),
    "assim.learned.parallel": (
        "DataParallel",
        "SingleDevice",
        "AbstractParallelism",
    ),
    "assim.learned.training": (
        "Trainer",
        "TrainResult",
        "TrainState",
        "adam",
        "train",
    ),
    "assim.learned.unrolled": (
        "UnrolledGaussNewton",
        "UnrolledResult",
    ),
    "assim.learned.prior": (
        "LearnedPrior",
        "LearnedCovariance",
        "SpectralGain",
        "VarianceGain",
        "CovarianceHyperparameters",
        "ConvergedGaussNewton",
        "AbstractGain",
        "AbstractLearnedPrior",
    ),
    "assim.learned.certificate": (
        "Certified",
        "CertifiedAnalysis",
        "kkt_residual",
        "heldout_misfit",
    ),
    "assim.observations.observation_set": (
        "ObservationReport",
        "ObservationSet",
    ),
    "assim.observations.operators": (
        "AbstractObservationOperator",
        "AbstractStaticObservation",
        "GriddedObservation",
        "StationObservation",
        "SwathObservation",
        "steps_from_times",
    ),
    "assim.problems.cost": ("StrongConstraint4DVar",),
    "assim.problems.identifiability": ("Identifiability", "identifiability"),
    "assim.problems.parameter_control": (
        "GaussianPrior",
        "JointControl",
        "LogNormalPrior",
        "ParameterControl4DVar",
        "ParameterPosterior",
        "parameter_posterior",
        "AbstractParameterPrior",
    ),
    "assim.problems.problem": ("AbstractVariationalProblem",),
    "assim.problems.twin": (
        "ObservationNetwork",
        "TwinExperiment",
        "twin_experiment",
    ),
    "assim.problems.weak_constraint": (
        "EveryStep",
        "SubWindows",
        "WeakConstraint4DVar",
        "WeakControl",
        "AbstractModelErrorTiming",
    ),
    "assim.solvers.observation_use": (
        "AbstractObservationUse",
        "AllObservations",
        "MultipleDataAssimilation",
        "UseOnce",
    ),
    "assim.solvers.cycling": (
        "CycleDiagnostics",
        "Cycling",
        "CyclingResult",
        "StrongConstraint",
        "WeakConstraint",
        "AbstractFormulation",
    ),
    "assim.solvers.gauss_newton": (
        "AbstractDamping",
        "Affine",
        "GaussNewton",
        "GaussNewtonDiagnostics",
        "GaussNewtonResult",
        "LevenbergMarquardt",
        "NoDamping",
        "Nonlinear",
        "AbstractForcing",
        "AbstractLinearity",
    ),
    "assim.solvers.inner_model": (
        "InnerModel",
        "SameModel",
        "AbstractInnerModel",
    ),
    "assim.solvers.innovation_preconditioner": ("InnovationSpectral",),
    "assim.solvers.limited_memory_preconditioner": ("LimitedMemory",),
    "assim.solvers.preconditioner": (
        "NoPreconditioner",
        "ProbedSpectral",
        "AbstractInnerPreconditioner",
    ),
    "assim.learned.preconditioner": ("AbstractLearnedPreconditioner",),
    "assim.case.build": ("AbstractCaseForm",),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)  # pyright: ignore[reportUnsupportedDunderAll]  (every name of _EXPORTS: one list; lazy)
_SUBPACKAGES = ("case", "covariances", "io", "learned", "observations", "problems", "solvers")


def __getattr__(name: str):
    """A public name on first use, imported from its module (then cached in the package namespace)."""
    module = _HOME.get(name)
    if module is None and name in _SUBPACKAGES:  # `assim.solvers` etc. without importing them by name
        return importlib.import_module(f"assim.{name}")
    if module is None:
        raise AttributeError(f"module 'assim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
