"""Case-file learned solvers: [solver] kind "unrolled" (a trained checkpoint, optionally certified), [training], the
learned prior and the hypergradient strategies."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from assim.case.schema.base import Strict as _Strict


# ---------------------------------------------------------------- learned solver (assim train; solver kind unrolled)
class LearnedPriorConfig(_Strict):
    """A learned background covariance L_θ = M G B^{1/2} on the case's B (identity when untrained): a spectral
    gain on `spectral_nodes` wavenumber nodes, then a standard-deviation gain, one number ("scalar") or one per
    cell ("field"), or none; `mean` adds a learned background-mean increment L_θ m_θ. Single-field states on a
    grid (diffusion, advection-diffusion, Burgers)."""

    spectral_nodes: int = Field(12, ge=2)
    variance: Literal["none", "scalar", "field"] = "field"
    mean: bool = False

    def build(self, grid, control=None):
        """The untrained prior on the grid (its domain mask: the gains act on the active cells) for `control`."""
        from assim.learned.prior import LearnedPrior, SpectralGain, VarianceGain

        shape = tuple(grid.shape)
        gains = [SpectralGain(shape, self.spectral_nodes)]
        gains += {"none": [], "scalar": [VarianceGain()], "field": [VarianceGain(shape)]}[self.variance]
        return LearnedPrior(gains, shape, grid.mask, control if self.mean else None)


class CertificateConfig(_Strict):
    """Every trained analysis reports its KKT residual ‖∇J‖/‖∇J(0)‖; above `threshold` classical Gauss-Newton
    (`max_outer` outer, `cg_max_steps` CG iterations, CG to `cg_tol`) continues on the same problem until met."""

    threshold: float = Field(1e-3, gt=0, lt=1)
    max_outer: int = Field(4, ge=1)
    cg_max_steps: int = Field(300, ge=1)
    cg_tol: float = Field(1e-8, gt=0)

    def build(self, learned):
        """The certified solver around a trained one."""
        from assim.learned.certificate import Certified
        from assim.solvers.gauss_newton import GaussNewton

        fallback = GaussNewton(max_outer=self.max_outer, cg_max_steps=self.cg_max_steps, cg_tol=self.cg_tol)
        return Certified(learned, fallback, self.threshold)


class _UnrolledSkeleton(_Strict):
    """Shape of an unrolled Gauss-Newton solver, enough to rebuild the module a checkpoint deserialises into.

    `layers` K, `cg_steps` CG iterations per layer; the per-layer damping μ_k and step α_k are always learned,
    `weight_schedule` adds the background-weight schedule λ_k, `correction` a learned increment correction and
    `first_guess` a learned first guess (conv nets on 1-D/2-D fields, MLPs on Lorenz-96 and shallow water),
    `preconditioner` a learned scaling of every layer's CG: "diagonal" (one weight per control element) or
    "spectral" (a gain per radial wavenumber; a control that is one 1-D/2-D periodic field); `prior` a learned
    background covariance (`[training.prior]` / `[solver.prior]`, see `LearnedPriorConfig`).
    """

    layers: int = Field(4, ge=1)
    cg_steps: int = Field(10, ge=1)
    weight_schedule: bool = True
    correction: bool = False
    first_guess: bool = False
    preconditioner: Literal["none", "diagonal", "spectral"] = "none"
    network_width: int = Field(8, ge=1)
    network_depth: int = Field(2, ge=1)
    prior: LearnedPriorConfig | None = None

    def check(self, path: str, case, fail) -> None:
        """A learned prior needs a single-field state on a grid."""
        if self.prior is not None and case.model.kind in ("shallow_water", "lorenz96"):
            fail(f"{path}.prior", f"a learned prior acts on one gridded field; the {case.model.kind} state is not "
                 "one (remove prior)")  # fmt: skip


class UnrolledSolver(_UnrolledSkeleton):
    """A trained unrolled Gauss-Newton solver loaded from the checkpoint `assim train` wrote."""

    kind: Literal["unrolled"]
    checkpoint: str = Field(min_length=1)
    certificate: CertificateConfig | None = None

    def check(self, path: str, case, fail) -> None:
        """A trained solver runs strong-constraint twin windows (single or cycled), not inside a training case."""
        super().check(path, case, fail)
        if case.weak_constraint is not None:
            fail(
                f"{path}.kind", "the unrolled solver is strong-constraint; remove [weak_constraint] or use gauss_newton"
            )
        if case.training is not None:
            fail(f"{path}.kind", "in a training case [solver] is the classical comparison; use gauss_newton or "
                 "levenberg_marquardt (the trained solver runs from a case with kind = 'unrolled')")  # fmt: skip
        if case.observations.file is not None:
            fail(f"{path}.kind", "the trained solver runs on twin windows; use gauss_newton or levenberg_marquardt")

    def build(self, control=None, key=None, shape=None, *, model=None, grid=None, dt=None, inflow=None, start=None):
        """The trained solver for controls shaped like `control` (None: only the checkpoint's header is checked)."""
        from assim.learned.trained_solver import load_trained

        trained = load_trained(self, control, grid)
        return trained if trained is None or self.certificate is None else self.certificate.build(trained)


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
        super().check(path, case, fail)
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
