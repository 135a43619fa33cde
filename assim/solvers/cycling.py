"""Cycled 4D-Var: consecutive windows, each background the forecast of the previous analysis, as one `lax.scan`.

Window w covers model steps [w·shift, w·shift + window] of the experiment and assimilates
the observations at steps in [w·shift, w·shift + window) (half-open, so that with
shift = window each observation is used once; with shift < window the windows overlap and
observations are used again). The next background is the analysis trajectory advanced by
`shift` steps (shift ≤ window). Observations come as long records (`ObservationSet`s
whose steps count from the experiment start, observed every k steps, e.g. from
`assim.problems.twin`); each window's sets are sliced from them inside the scan, so the whole cycle
jit-compiles once. B is multiplied by a tunable background-error scale.

Per window: background and analysis RMSE against the truth (when given) and the free-run
RMSE; innovation statistics of the normalised background departures d = R^{-1/2}(y − H M(x_b))
(mean, variance, χ²/n = ‖d‖²/n); the J_min test 2 J(x_a)/n, whose expectation is 1 when B
(and Q) and R are right (Talagrand 1999); Gauss-Newton convergence flags and counts.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.covariances.scaled import ScaledCovariance
from assim.errors import InputError, ObservationError
from assim.observations.observation_set import ObservationSet
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.weak_constraint import (
    AbstractModelErrorTiming,
    EveryStep,
    WeakConstraint4DVar,
)
from assim.solvers.gauss_newton import GaussNewton
from models.base import AbstractModel
from models.rollout import AbstractCheckpointing, NoCheckpointing, rollout


class AbstractFormulation(eqx.Module):
    """Which 4D-Var problem each window solves."""

    @abc.abstractmethod
    def problem(
        self,
        model: AbstractModel,
        background: PyTree[Array],
        covariance: AbstractBackgroundCovariance,
        observations: tuple[ObservationSet, ...],
        n_steps: int,
        t0: Float[ArrayLike, ""],
        checkpointing: AbstractCheckpointing,
    ):
        """The window's variational problem (anything `GaussNewton.solve` accepts)."""


class StrongConstraint(AbstractFormulation):
    """Perfect-model windows: `StrongConstraint4DVar`."""

    def problem(self, model, background, covariance, observations, n_steps, t0, checkpointing):
        return StrongConstraint4DVar(model, background, covariance, observations, n_steps, t0, checkpointing)


class WeakConstraint(AbstractFormulation):
    """Imperfect-model windows: `WeakConstraint4DVar` with model-error covariance Q and its timing."""

    model_error_covariance: AbstractBackgroundCovariance
    timing: AbstractModelErrorTiming = eqx.field(static=True, default=EveryStep())

    def problem(self, model, background, covariance, observations, n_steps, t0, checkpointing):
        return WeakConstraint4DVar(
            model, background, covariance, self.model_error_covariance, observations, n_steps, self.timing, t0,
            checkpointing,
        )  # fmt: skip


class _Slice(NamedTuple):
    """How one long observation record is cut into windows: steps within a window, record times per shift."""

    steps: tuple[int, ...]
    stride: int


def _plan(record: ObservationSet, which: int, window: int, shift: int, n_windows: int) -> _Slice | None:
    steps = np.asarray(record.steps)
    if steps.size < 2 or np.any(np.diff(steps) != steps[1] - steps[0]) or steps[1] <= steps[0]:
        raise ObservationError(
            f"observation record {which} must observe at regularly spaced, increasing steps (every k steps, at "
            f"least twice) to be sliced into windows; got steps {tuple(record.steps)[:6]}…"
        )
    k = int(steps[1] - steps[0])
    s0 = int(steps[0])
    if shift % k:
        raise ObservationError(
            f"windows shift by {shift} steps but record {which} observes every {k} steps: make the shift a multiple "
            f"of {k}, so that every window sees the same observation steps."
        )
    if s0 >= k:
        raise ObservationError(
            f"record {which} starts at step {s0}, more than one observation interval ({k}) after the first window "
            "starts (step 0); start the record earlier or drop its first window."
        )
    relative = tuple(range(s0, window, k))
    if not relative:
        return None
    stride = shift // k
    needed = (n_windows - 1) * stride + len(relative)
    if needed > steps.size:
        raise ObservationError(
            f"{n_windows} windows need {needed} observation times of record {which} but it holds {steps.size} "
            f"(up to step {int(steps[-1])}); use fewer windows or a longer record."
        )
    return _Slice(relative, stride)


def _window_set(record: ObservationSet, plan: _Slice, w: Int[Array, ""]) -> ObservationSet:
    """The observations of window w, with steps counted from the window start."""
    start = w * plan.stride  # the record starts within the first observation interval
    m = len(plan.steps)

    def cut(a):
        return jax.lax.dynamic_slice_in_dim(a, start, m, axis=0)

    operator = record.operator
    if operator.n_times is not None:  # time-dependent operator (swaths): its arrays carry the time axis too
        operator = jax.tree_util.tree_map(cut, operator)
    return ObservationSet(operator, plan.steps, cut(record.values), cut(record.error.sigma), cut(record.error.mask))


def _rmse(a: PyTree[Array], b: PyTree[Array]) -> Float[Array, ""]:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: (x - y) ** 2, a, b))
    return jnp.sqrt(sum(jnp.sum(x) for x in leaves) / sum(x.size for x in leaves))


class CycleDiagnostics(eqx.Module):
    """Per-window statistics (leading axis: window). RMSE fields are None without a truth."""

    background_rmse: Float[Array, " window"] | None
    analysis_rmse: Float[Array, " window"] | None
    free_run_rmse: Float[Array, " window"] | None
    innovation_mean: Float[Array, " window"]
    innovation_variance: Float[Array, " window"]
    innovation_chi2: Float[Array, " window"]
    analysis_chi2: Float[Array, " window"]
    n_observations: Int[Array, " window"]
    converged: Bool[Array, " window"]
    reason: Int[Array, " window"]
    n_outer: Int[Array, " window"]
    cg_iterations: Int[Array, " window"]


class CyclingResult(eqx.Module):
    """Backgrounds and analyses at each window start (stacked along the window axis) and per-window diagnostics."""

    backgrounds: PyTree[Array]
    analyses: PyTree[Array]
    diagnostics: CycleDiagnostics

    def summary(self, spin_up: int = 0) -> dict[str, float]:
        """Window-averaged diagnostics after dropping the first `spin_up` windows (concrete results only)."""
        d = self.diagnostics
        out = {}
        for name in ("background_rmse", "analysis_rmse", "free_run_rmse", "innovation_mean", "innovation_variance",
                     "innovation_chi2", "analysis_chi2"):  # fmt: skip
            value = getattr(d, name)
            if value is not None:
                out[name] = float(jnp.mean(value[spin_up:]))
        out["converged_fraction"] = float(jnp.mean(d.converged[spin_up:]))
        out["mean_outer_iterations"] = float(jnp.mean(d.n_outer[spin_up:]))
        return out


class Cycling(eqx.Module):
    """Cycled assimilation settings: window length, shift between windows, number of windows, solver, formulation.

    - `window`: model steps per window (N); `shift`: steps between window starts (1 ≤ shift ≤ window).
    - `solver`: the `GaussNewton` settings used in every window.
    - `formulation`: `StrongConstraint()` or `WeakConstraint(Q, timing)`.
    """

    window: int = eqx.field(static=True)
    shift: int = eqx.field(static=True)
    n_windows: int = eqx.field(static=True)
    solver: GaussNewton = GaussNewton()
    formulation: AbstractFormulation = StrongConstraint()
    checkpointing: AbstractCheckpointing = eqx.field(static=True, default=NoCheckpointing())

    def __check_init__(self):
        if int(self.window) != self.window or self.window < 1:
            raise InputError(f"the window must be at least one model step; got {self.window}.")
        if int(self.shift) != self.shift or not 1 <= self.shift <= self.window:
            raise InputError(
                f"the shift between windows must satisfy 1 ≤ shift ≤ window = {self.window}; got {self.shift} "
                "(the next background is the analysis trajectory advanced by `shift` steps, inside the window)."
            )
        if int(self.n_windows) != self.n_windows or self.n_windows < 1:
            raise InputError(f"n_windows must be at least 1; got {self.n_windows}.")

    @property
    def n_steps(self) -> int:
        """Model steps from the first window's start to the last window's end."""
        return (self.n_windows - 1) * self.shift + self.window

    def run(
        self,
        model: AbstractModel,
        background: PyTree[ArrayLike],
        covariance: AbstractBackgroundCovariance,
        observations: ObservationSet | Sequence[ObservationSet],
        truth: PyTree[ArrayLike] | None = None,
        background_scale: Float[ArrayLike, ""] = 1.0,
        t0: Float[ArrayLike, ""] = 0.0,
    ) -> CyclingResult:
        """Cycle from the first window's background state; observations and truth count steps from the first window."""
        observations = (observations,) if isinstance(observations, ObservationSet) else tuple(observations)
        if not observations:
            raise ObservationError("cycling needs at least one observation record.")
        plans = [_plan(o, i, self.window, self.shift, self.n_windows) for i, o in enumerate(observations)]
        if all(p is None for p in plans):
            raise ObservationError(
                f"no observation falls inside a {self.window}-step window; lengthen the window or observe more often."
            )
        kept = tuple((o, p) for o, p in zip(observations, plans) if p is not None)
        background = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), background)
        model.check_state(background)
        if truth is not None:
            truth = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), truth)
            model.check_state(jax.tree_util.tree_map(lambda x: x[0], truth))
            length = jax.tree_util.tree_leaves(truth)[0].shape[0]
            if length < self.n_steps + 1:
                raise InputError(
                    f"the truth trajectory holds {length} states but {self.n_windows} windows span "
                    f"{self.n_steps + 1}; give a longer truth run or fewer windows."
                )
        covariance = ScaledCovariance(covariance, background_scale)
        return _cycle(self, model, background, covariance, kept, truth, jnp.asarray(t0, dtype=float))


@eqx.filter_jit
def _cycle(cycling: Cycling, model, background, covariance, records, truth, t0) -> CyclingResult:
    window, shift = cycling.window, cycling.shift

    def body(xb, w):
        start = w * shift
        sets = tuple(_window_set(o, plan, w) for o, plan in records)
        problem = cycling.formulation.problem(
            model, xb, covariance, sets, window, t0 + start * model.dt, cycling.checkpointing
        )
        innovations = problem.departures(problem.zero_control())
        masks = [o.mask for o in sets]
        n_obs = sum(jnp.sum(m) for m in masks)
        n = jnp.maximum(n_obs, 1).astype(float)
        total = sum(jnp.sum(d) for d in innovations)
        squares = sum(jnp.sum(d**2) for d in innovations)
        result = cycling.solver.solve(problem)
        d = result.diagnostics
        trajectory = problem.trajectory(result.v)
        out = {
            "background": xb,
            "analysis": result.x0,
            "innovation_mean": total / n,
            "innovation_variance": squares / n - (total / n) ** 2,
            "innovation_chi2": squares / n,
            "analysis_chi2": 2.0 * jnp.take(d.cost, d.n_outer) / n,
            "n_observations": n_obs.astype(jnp.int32),
            "converged": result.converged,
            "reason": result.reason,
            "n_outer": d.n_outer,
            "cg_iterations": jnp.sum(d.cg_iterations).astype(jnp.int32),
        }
        if truth is not None:
            at_start = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, start, 0, False), truth)
            out["background_rmse"] = _rmse(xb, at_start)
            out["analysis_rmse"] = _rmse(result.x0, at_start)
        return jax.tree_util.tree_map(lambda x: x[shift], trajectory), out

    _, out = jax.lax.scan(body, background, jnp.arange(cycling.n_windows))
    free = None
    if truth is not None:
        starts = np.arange(cycling.n_windows) * shift
        run = rollout(model, background, int(starts[-1]), t0, cycling.checkpointing)
        free = jax.vmap(_rmse)(
            jax.tree_util.tree_map(lambda x: x[starts], run), jax.tree_util.tree_map(lambda x: x[starts], truth)
        )
    diagnostics = CycleDiagnostics(
        background_rmse=out.get("background_rmse"),
        analysis_rmse=out.get("analysis_rmse"),
        free_run_rmse=free,
        **{k: out[k] for k in ("innovation_mean", "innovation_variance", "innovation_chi2", "analysis_chi2",
                               "n_observations", "converged", "reason", "n_outer", "cg_iterations")},
    )  # fmt: skip
    return CyclingResult(backgrounds=out["background"], analyses=out["analysis"], diagnostics=diagnostics)
