"""Case-file [solver] section: Gauss-Newton and Levenberg-Marquardt (the unrolled solver: `schema.learned`)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import ConfigDict, Field

from assim.case.schema.base import Strict as _Strict
from assim.case.schema.learned import HypergradientConfig as HypergradientConfig
from assim.case.schema.learned import ImplicitHypergradientConfig as ImplicitHypergradientConfig
from assim.case.schema.learned import OneStepHypergradientConfig as OneStepHypergradientConfig
from assim.case.schema.learned import TrainingConfig as TrainingConfig
from assim.case.schema.learned import TruncatedHypergradientConfig as TruncatedHypergradientConfig
from assim.case.schema.learned import UnrolledHypergradientConfig as UnrolledHypergradientConfig
from assim.case.schema.learned import UnrolledSolver


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

    def build(self, model_config, grid, dt: float | None, inflow=None, start=None):
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

    def build(self, model_config, grid, dt: float | None, inflow=None, start=None):
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

    max_outer: int = Field(default=5, ge=1)  # `default=` by keyword: the defaults type checkers see
    cg_max_steps: int = Field(default=100, ge=1)
    cg_tol: float = Field(default=1e-6, ge=0)
    gtol: float = Field(default=1e-6, ge=0)
    ftol: float = Field(default=1e-12, ge=0)
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


SolverConfig = Annotated[
    Union[GaussNewtonSolver, LevenbergMarquardtSolver, UnrolledSolver], Field(discriminator="kind")
]
