"""Case-file [solver] and [training] sections: Gauss-Newton, Levenberg-Marquardt, unrolled, hypergradients."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from assim.case.schema.base import Strict as _Strict


class NoPreconditionerConfig(_Strict):
    """CG on the Hessian in control space as it is (B^{1/2} is the only preconditioning)."""

    kind: Literal["none"]

    def build(self, shape, key):
        """The inner-loop preconditioner for controls of grid shape `shape`."""
        from assim.solvers.preconditioner import NoPreconditioner

        return NoPreconditioner()


class ProbedSpectralConfig(_Strict):
    """The Hessian's Fourier symbol per radial wavenumber, fitted from random probes (periodic grids)."""

    kind: Literal["probed_spectral"]
    n_bins: int = Field(8, ge=2)
    n_probes: int = Field(1, ge=1)
    node_exponent: float = Field(2.0, gt=0)

    def build(self, shape, key):
        """The inner-loop preconditioner for controls of grid shape `shape` (probes seeded by `key`)."""
        from assim.solvers.preconditioner import ProbedSpectral

        return ProbedSpectral(shape, self.n_bins, self.n_probes, self.node_exponent, key=key)


class InnovationSpectralConfig(_Strict):
    """The Hessian's symbol from the background gradient's power spectrum, at no model run (periodic grids)."""

    kind: Literal["innovation_spectral"]
    n_bins: int = Field(8, ge=2)
    node_exponent: float = Field(2.0, gt=0)

    def build(self, shape, key):
        """The inner-loop preconditioner for controls of grid shape `shape`."""
        from assim.solvers.innovation_preconditioner import InnovationSpectral

        return InnovationSpectral(shape, self.n_bins, self.node_exponent)


BasePreconditionerConfig = Annotated[
    Union[NoPreconditionerConfig, ProbedSpectralConfig, InnovationSpectralConfig], Field(discriminator="kind")
]


class LimitedMemoryConfig(_Strict):
    """A base preconditioner updated with the previous inner loop's CG curvature pairs (quasi-Newton)."""

    kind: Literal["limited_memory"]
    memory: int = Field(8, ge=1)
    base: BasePreconditionerConfig = NoPreconditionerConfig(kind="none")

    def build(self, shape, key):
        """The inner-loop preconditioner for controls of grid shape `shape`."""
        from assim.solvers.limited_memory_preconditioner import LimitedMemory

        return LimitedMemory(self.base.build(shape, key), self.memory)


PreconditionerConfig = Annotated[
    Union[NoPreconditionerConfig, ProbedSpectralConfig, InnovationSpectralConfig, LimitedMemoryConfig],
    Field(discriminator="kind"),
]


class ConstantForcingConfig(_Strict):
    """Every inner solve to the relative tolerance `cg_tol`."""

    kind: Literal["constant"]

    def build(self):
        """The forcing strategy."""
        from assim.solvers.gauss_newton import ConstantForcing

        return ConstantForcing()


class EisenstatWalkerConfig(_Strict):
    """Inexact-Newton forcing η_k = γ (‖g_k‖/‖g_{k−1}‖)^α, loose far from the analysis, `cg_tol` its floor."""

    kind: Literal["eisenstat_walker"]
    initial: float = Field(0.1, gt=0, lt=1)
    gamma: float = Field(0.9, gt=0, le=1)
    exponent: float = Field(2.0, gt=1, le=2)
    maximum: float = Field(0.5, gt=0, lt=1)

    def build(self):
        """The forcing strategy."""
        from assim.solvers.gauss_newton import EisenstatWalker

        return EisenstatWalker(self.initial, self.gamma, self.exponent, self.maximum)


ForcingConfig = Annotated[Union[ConstantForcingConfig, EisenstatWalkerConfig], Field(discriminator="kind")]


class _GaussNewtonSettings(_Strict):
    """Outer and inner iterations, tolerances and the strategies of the Gauss-Newton loop.

    `preconditioner` of the inner CG (its probes seeded from observations.seed), `forcing` of the inner
    tolerance, `linearity = "affine"` to linearise a linear problem once.
    """

    max_outer: int = Field(5, ge=1)
    cg_max_steps: int = Field(100, ge=1)
    cg_tol: float = Field(1e-6, ge=0)
    gtol: float = Field(1e-6, ge=0)
    ftol: float = Field(1e-12, ge=0)
    preconditioner: PreconditionerConfig = NoPreconditionerConfig(kind="none")
    forcing: ForcingConfig = ConstantForcingConfig(kind="constant")
    linearity: Literal["nonlinear", "affine"] = "nonlinear"

    def _damping(self):
        from assim.solvers.gauss_newton import NoDamping

        return NoDamping()

    def build(self, control=None, key=None, shape=None):
        """The Gauss-Newton solver; its preconditioner takes the shape of `control` (or `shape`, when validating)."""
        import jax
        import numpy as np

        from assim.solvers.gauss_newton import Affine, GaussNewton, Nonlinear

        if control is not None:
            shape = tuple(np.shape(jax.tree_util.tree_leaves(control)[0]))
        key = key if key is not None else jax.random.PRNGKey(0)
        pre = self.preconditioner.build(tuple(shape or ()), key)
        return GaussNewton(self._damping(), self.max_outer, self.cg_max_steps, self.cg_tol, self.gtol, self.ftol,
                           forcing=self.forcing.build(), preconditioner=pre,
                           linearity=Affine() if self.linearity == "affine" else Nonlinear())  # fmt: skip


class GaussNewtonSolver(_GaussNewtonSettings):
    """Undamped Gauss-Newton (incremental 4D-Var)."""

    kind: Literal["gauss_newton"]


class LevenbergMarquardtSolver(_GaussNewtonSettings):
    """Gauss-Newton with Levenberg-Marquardt damping μ (for nonlinear models)."""

    kind: Literal["levenberg_marquardt"]
    initial: float = Field(1e-3, ge=0)
    acceptance: float = Field(1e-4, ge=0, lt=1)
    max_damping: float = Field(1e10, gt=0)

    def _damping(self):
        from assim.solvers.gauss_newton import LevenbergMarquardt

        return LevenbergMarquardt(self.initial, self.acceptance, self.max_damping)


# ---------------------------------------------------------------- learned solver (assim train; solver kind unrolled)
class _UnrolledSkeleton(_Strict):
    """Shape of an unrolled Gauss-Newton solver, enough to rebuild the module a checkpoint deserialises into.

    `layers` K, `cg_steps` CG iterations per layer; the per-layer damping μ_k and step α_k are always learned,
    `weight_schedule` adds the background-weight schedule λ_k, `correction` a learned increment correction and
    `first_guess` a learned first guess (conv nets on 1-D/2-D fields, MLPs on Lorenz-96 and shallow water),
    `preconditioner` a learned scaling of every layer's CG: "diagonal" (one weight per control element) or
    "spectral" (a gain per radial wavenumber; a control that is one 1-D/2-D periodic field).
    """

    layers: int = Field(4, ge=1)
    cg_steps: int = Field(10, ge=1)
    weight_schedule: bool = True
    correction: bool = False
    first_guess: bool = False
    preconditioner: Literal["none", "diagonal", "spectral"] = "none"
    network_width: int = Field(8, ge=1)
    network_depth: int = Field(2, ge=1)


class UnrolledSolver(_UnrolledSkeleton):
    """A trained unrolled Gauss-Newton solver loaded from the checkpoint `assim train` wrote."""

    kind: Literal["unrolled"]
    checkpoint: str = Field(min_length=1)

    def build(self, control=None, key=None, shape=None):
        """The trained solver for controls shaped like `control` (None: only the checkpoint's header is checked)."""
        from assim.learned.trained_solver import load_trained

        return load_trained(self, control)


class UnrolledHypergradientConfig(_Strict):
    """Backpropagation through every (checkpointed) layer."""

    kind: Literal["unrolled"]

    def build(self):
        """The hypergradient strategy."""
        from assim.learned.hypergradients import Unrolled

        return Unrolled()


class TruncatedHypergradientConfig(_Strict):
    """Backpropagation through the last `layers` layers only."""

    kind: Literal["truncated"]
    layers: int = Field(ge=1)

    def build(self):
        """The hypergradient strategy."""
        from assim.learned.hypergradients import Truncated

        return Truncated(self.layers)


class OneStepHypergradientConfig(_Strict):
    """Gradient of one more last layer applied at the analysis."""

    kind: Literal["one_step"]

    def build(self):
        """The hypergradient strategy."""
        from assim.learned.hypergradients import OneStep

        return OneStep()


class ImplicitHypergradientConfig(_Strict):
    """Implicit differentiation at a converged analysis (outer parameters only: rejected for training layers)."""

    kind: Literal["implicit"]

    def build(self):
        """The hypergradient strategy."""
        from assim.learned.hypergradients import Implicit

        return Implicit()


HypergradientConfig = Annotated[
    Union[UnrolledHypergradientConfig, TruncatedHypergradientConfig, OneStepHypergradientConfig,
          ImplicitHypergradientConfig],
    Field(discriminator="kind"),
]  # fmt: skip


class TrainingConfig(_UnrolledSkeleton):
    """`assim train`: learn an unrolled solver from observations only (masking + KKT losses, no truth).

    Windows are samples of the case (`assim.case.build.build(case, sample)`): training uses samples
    1 … train_windows, validation the next `validation_windows`, the test the next `test_windows`
    (sample 0, the case's own window, is never trained on). `checkpoint` is relative to outputs.directory.
    """

    masking_weight: float = Field(1.0, ge=0)
    kkt_weight: float = Field(0.1, ge=0)
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    train_windows: int = Field(16, ge=1)
    validation_windows: int = Field(4, ge=1)
    test_windows: int = Field(4, ge=1)
    batch_size: int = Field(4, ge=1)
    steps: int = Field(100, ge=1)
    learning_rate: float = Field(1e-2, gt=0)
    clip_norm: float = Field(1.0, gt=0)
    validate_every: int = Field(5, ge=1)
    patience: int = Field(5, ge=1)
    hypergradient: HypergradientConfig = UnrolledHypergradientConfig(kind="unrolled")
    initial_step: float = Field(1.0, gt=0, lt=2)
    initial_damping: float = Field(0.01, ge=0)  # μ_k = 0 exactly is not learnable (softplus flat there)
    seed: int = 0
    checkpoint: str = Field("solver.eqx", min_length=1)


SolverConfig = Annotated[
    Union[GaussNewtonSolver, LevenbergMarquardtSolver, UnrolledSolver], Field(discriminator="kind")
]
