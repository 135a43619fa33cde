"""Case-file [solver] and [training] sections: Gauss-Newton, Levenberg-Marquardt, unrolled, hypergradients."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import ConfigDict, Field

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


class SameInnerModelConfig(_Strict):
    """The inner loop linearises the problem's own model (exact Gauss-Newton normal equations)."""

    kind: Literal["same"]

    def build(self, model_config, grid, dt: float, inflow=None, start=None):
        """The inner-model strategy."""
        from assim.solvers.inner_model import SameModel

        return SameModel()


class CheaperInnerModelConfig(_Strict):
    """A cheaper variant of the case's [model] for the inner loop, given as overrides of its keys.

    E.g. `{ kind = "model", advection = "upwind", scheme = "backward_euler", tolerance = 1e-4 }`: built on the
    same grid with the same field sources; the outer cost, gradient and stopping tests keep the case's model.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["model"]

    def variant(self, model_config, path: str = "solver.inner_model"):
        """The case's [model] table with the overrides, validated as a [model] table (ConfigError naming the key)."""
        from pydantic import ValidationError

        from assim.errors import ConfigError

        overrides = dict(self.model_extra or {})
        fields = type(model_config).model_fields
        for key in overrides:
            if key not in fields:
                raise ConfigError(f"{path}.{key}: model.kind {model_config.kind!r} has no key {key!r}; override "
                                  f"one of {sorted(k for k in fields if k != 'kind')}")  # fmt: skip
        try:
            return type(model_config).model_validate({**model_config.model_dump(exclude_unset=True), **overrides})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(k) for k in err["loc"])
            raise ConfigError(f"{path}.{key}: {err['msg'][0].lower() + err['msg'][1:]} (got {err['input']!r}); "
                              "fix the override") from None  # fmt: skip

    def check(self, path: str, case, fail) -> None:
        """Every override names a key of the case's [model] and gives it a valid value."""
        self.variant(case.model, path)

    def build(self, model_config, grid, dt: float, inflow=None, start=None):
        """`InnerModel` of the overridden [model] on `grid` (`inflow`, `start`: as the case's model is built)."""
        from assim.solvers.inner_model import InnerModel

        model, _ = self.variant(model_config).build(grid, dt, False, inflow=inflow, start=start)
        return InnerModel(model)


InnerModelConfig = Annotated[SameInnerModelConfig | CheaperInnerModelConfig, Field(discriminator="kind")]


class _GaussNewtonSettings(_Strict):
    """Outer and inner iterations, tolerances and the strategies of the Gauss-Newton loop.

    `preconditioner` of the inner CG (its probes seeded from observations.seed), `forcing` of the inner
    tolerance, `linearity = "affine"` to linearise a linear problem once, `inner_model` the model whose
    tangent-linear and adjoint the inner loop runs (the case's own, or a cheaper variant of it).
    """

    max_outer: int = Field(5, ge=1)
    cg_max_steps: int = Field(100, ge=1)
    cg_tol: float = Field(1e-6, ge=0)
    gtol: float = Field(1e-6, ge=0)
    ftol: float = Field(1e-12, ge=0)
    preconditioner: PreconditionerConfig = NoPreconditionerConfig(kind="none")
    forcing: ForcingConfig = ConstantForcingConfig(kind="constant")
    linearity: Literal["nonlinear", "affine"] = "nonlinear"
    inner_model: InnerModelConfig = SameInnerModelConfig(kind="same")

    def check(self, path: str, case, fail) -> None:
        """An inner model that is a valid variant of [model]; affine problems linearise with their own model."""
        if self.linearity == "affine" and self.inner_model.kind != "same":
            fail(f"{path}.inner_model", "linearity = 'affine' linearises once with the case's model; remove "
                 "[solver.inner_model] or set solver.linearity = 'nonlinear'")  # fmt: skip
        self.inner_model.check(f"{path}.inner_model", case, fail)

    def _damping(self):
        from assim.solvers.gauss_newton import NoDamping

        return NoDamping()

    def build(self, control=None, key=None, shape=None, *, model=None, grid=None, dt=None, inflow=None, start=None):
        """The Gauss-Newton solver; its preconditioner takes the shape of `control` (or `shape`, when validating).

        `model` (the case's [model] table), `grid`, `dt`, `inflow` and `start` build a cheaper inner model (not
        needed for the same model)."""
        import jax
        import numpy as np

        from assim.solvers.gauss_newton import Affine, GaussNewton, Nonlinear

        if control is not None:
            shape = tuple(np.shape(jax.tree_util.tree_leaves(control)[0]))
        key = key if key is not None else jax.random.PRNGKey(0)
        pre = self.preconditioner.build(tuple(shape or ()), key)
        inner = self.inner_model.build(model, grid, dt, inflow, start)
        return GaussNewton(self._damping(), self.max_outer, self.cg_max_steps, self.cg_tol, self.gtol, self.ftol,
                           forcing=self.forcing.build(), preconditioner=pre, inner_model=inner,
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

    def check(self, path: str, case, fail) -> None:
        """A trained solver runs strong-constraint twin windows (single or cycled), not inside a training case."""
        if case.weak_constraint is not None:
            fail(f"{path}.kind", "the unrolled solver is strong-constraint; remove [weak_constraint] or use gauss_newton")
        if case.training is not None:
            fail(f"{path}.kind", "in a training case [solver] is the classical comparison; use gauss_newton or "
                 "levenberg_marquardt (the trained solver runs from a case with kind = 'unrolled')")  # fmt: skip
        if case.observations.file is not None:
            fail(f"{path}.kind", "the trained solver runs on twin windows; use gauss_newton or levenberg_marquardt")

    def build(self, control=None, key=None, shape=None, *, model=None, grid=None, dt=None, inflow=None, start=None):
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

    def check(self, path: str, case, fail) -> None:
        """No more truncated layers than the solver has."""
        if self.layers > case.training.layers:
            fail(f"{path}.layers", f"must be ≤ training.layers = {case.training.layers} (got {self.layers})")

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

    def check(self, path: str, case, fail) -> None:
        """Refused for training: it gives the solver's own layer parameters zero gradient."""
        fail(f"{path}.kind", "implicit hypergradients give the solver's own layer parameters zero gradient "
             "(they serve outer parameters, see assim discover); use 'unrolled', 'truncated' or 'one_step'")  # fmt: skip

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

    def check(self, path: str, case, fail) -> None:
        """Single strong-constraint windows, something to learn, batches and truncation that fit."""
        if case.cycling is not None:
            fail(path, "training uses single windows of time.n_steps; remove [cycling] from the training case")
        if case.weak_constraint is not None:
            fail(path, "the unrolled solver is strong-constraint; remove [weak_constraint] from the training case")
        if self.masking_weight == 0 and self.kkt_weight == 0:
            fail(f"{path}.masking_weight", "masking_weight and kkt_weight are both 0: nothing to learn; make one > 0")
        if self.batch_size > self.train_windows:
            fail(f"{path}.batch_size", f"must be ≤ training.train_windows = {self.train_windows} "
                 f"(got {self.batch_size})")  # fmt: skip
        self.hypergradient.check(f"{path}.hypergradient", case, fail)


SolverConfig = Annotated[
    Union[GaussNewtonSolver, LevenbergMarquardtSolver, UnrolledSolver], Field(discriminator="kind")
]
