"""Case-file [discover], [truth] and [weak_constraint] sections: priors, model error, Q and its timing."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from assim.case.schema.base import Strict as _Strict
from assim.case.schema.covariances import BackgroundConfig


class GaussianPriorConfig(_Strict):
    """θ ~ N(mean, std²)."""

    kind: Literal["gaussian"]
    mean: float
    std: float = Field(gt=0)

    def build(self):
        """The prior strategy of `assim.problems.parameter_control`."""
        from assim.problems.parameter_control import GaussianPrior

        return GaussianPrior(self.mean, self.std)

    def summary(self) -> dict:
        """Prior central value, std of θ and its 68 % interval."""
        return {"kind": "gaussian", "mean": self.mean, "std": self.std, "central": self.mean,
                "interval_68": [self.mean - self.std, self.mean + self.std]}  # fmt: skip


class LogNormalPriorConfig(_Strict):
    """log θ ~ N(log median, log_std²): θ stays positive (diffusivities, wind scales, viscosities)."""

    kind: Literal["lognormal"]
    median: float = Field(gt=0)
    log_std: float = Field(gt=0)

    def build(self):
        """The prior strategy of `assim.problems.parameter_control`."""
        from assim.problems.parameter_control import LogNormalPrior

        return LogNormalPrior(self.median, self.log_std)

    def summary(self) -> dict:
        """Prior median, std of θ and its exact 68 % interval."""
        import math

        m, s = self.median, self.log_std
        return {"kind": "lognormal", "median": m, "log_std": s, "central": m,
                "std": m * math.exp(s**2 / 2) * math.sqrt(math.expm1(s**2)),
                "interval_68": [m * math.exp(-s), m * math.exp(s)]}  # fmt: skip


PriorConfig = Annotated[Union[GaussianPriorConfig, LogNormalPriorConfig], Field(discriminator="kind")]


class DiscoverConfig(_Strict):
    """Physical parameters to discover (`assim discover`), by the model's field name, each with its prior.

    The truth of the twin runs with the model's own value of each parameter (from [model],
    or [truth.parameters]); the estimation starts from the prior's central value.
    """

    parameters: dict[str, PriorConfig] = Field(min_length=1)
    posterior_cg_tol: float = Field(1e-10, gt=0)
    posterior_cg_max_steps: int = Field(500, ge=1)

    def check(self, path: str, case, fail) -> None:
        """Parameter names are identifiers (checked against the built model later; values are finite by the schema)."""
        for name in self.parameters:
            if not name.isidentifier():
                fail(f"{path}.parameters.{name}", "is not a model field name; use e.g. kappa, wind_scale, nu, forcing")


class TruthConfig(_Strict):
    """The truth model differs from the assimilating model (model error): parameter values by model field name."""

    parameters: dict[str, float] = Field(min_length=1)


class EveryStepTiming(_Strict):
    """An independent model error at every model step."""

    kind: Literal["every_step"]

    def build(self):
        """The timing strategy of the model-error controls."""
        from assim.problems.weak_constraint import EveryStep

        return EveryStep()


class SubWindowTiming(_Strict):
    """One model-error forcing per sub-window of `length` steps."""

    kind: Literal["subwindows"]
    length: int = Field(ge=1)

    def check(self, path: str, case, fail) -> None:
        """A sub-window inside the window."""
        if self.length > case.time.n_steps:
            fail(f"{path}.length", f"must be ≤ time.n_steps = {case.time.n_steps} (got {self.length})")

    def build(self):
        """The timing strategy of the model-error controls."""
        from assim.problems.weak_constraint import SubWindows

        return SubWindows(self.length)


TimingConfig = Annotated[Union[EveryStepTiming, SubWindowTiming], Field(discriminator="kind")]


class WeakConstraintConfig(_Strict):
    """Weak-constraint 4D-Var: model-error covariance Q (per model step; a B-like kind) and timing of the controls."""

    q: BackgroundConfig
    timing: TimingConfig = EveryStepTiming(kind="every_step")
    compare_strong: bool = True

    def check(self, path: str, case, fail) -> None:
        """One window; Q and the timing of its controls checked as tables of their own."""
        if case.cycling is not None:
            fail(path, "weak-constraint 4D-Var runs one window here; remove [cycling] or [weak_constraint]")
        self.q.check(f"{path}.q", case, fail)
        self.timing.check(f"{path}.timing", case, fail)
