"""Cycled 4D-Var: consecutive windows, each background the forecast of the previous analysis, in one jitted loop.

Window w starts at step s_w = w·shift of the experiment, covers model steps [s_w, s_w + window] and
assimilates the observations at steps in (s_w, s_w + window]: half-open, the window's end is used and
its start is not (an observation at the first window's start belongs to no window), so that with
shift = window each observation is used once; with shift < window the windows overlap and the
observation-use scheme (`assim.solvers.observation_use`) decides how observations are shared. A record
may start at most one observation interval after step 0. Observations come as long records
(`ObservationSet`s whose steps count from the experiment start, observed every k steps, e.g. from
`assim.problems.twin`); each window's sets are sliced from them inside the loop. B is multiplied by a
tunable background-error scale.

Hand-over: the background of window w + 1 is the analysis trajectory of window w at step `shift`
(the analysis propagated to the new start; weak constraint: along the forced trajectory), and every
window's solver starts from that background (control v = 0; with `preconditioner_carry=CarriedPairs()` its
limited-memory preconditioner starts from the previous window's last CG pairs). Two analysis conventions are
returned: at the window start (the smoother analysis x_a(s_w)) and at the window's latest observation time
(the filter analysis, which comparisons with ensemble filters use), each beside its background.

The horizon is data: the loop runs `n_windows` times with a traced bound over outputs buffered for as
many windows as the records (and the truth) hold, so a new number of windows does not recompile.

Per window: background and analysis RMSE against the truth (when given) in both conventions and the
free-run RMSE; innovation statistics of the normalised background departures d = R^{-1/2}(y − H M(x_b))
(mean, variance, χ²/n = ‖d‖²/n, with the scheme's weights); the J_min test 2 J(x_a)/n, whose expectation
is 1 when B (and Q) and R are right (Talagrand 1999); the solver's convergence flag, stop reason and counts.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.covariances.scaled import ScaledCovariance
from assim.errors import InputError, ObservationError
from assim.observations.observation_set import ObservationSet
from assim.problems.analysis import result_problem
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.weak_constraint import (
    AbstractModelErrorTiming,
    EveryStep,
    WeakConstraint4DVar,
)
from assim.solvers.gauss_newton import GaussNewton
from assim.solvers.limited_memory_preconditioner import AbstractPreconditionerCarry, FreshPreconditioner
from assim.solvers.observation_use import (
    AbstractObservationUse,
    AllObservations,
    plan_record,
    window_set,
)
from assim.solvers.strategies import REASONS
from models.base import AbstractModel
from models.rollout import AbstractCheckpointing, NoCheckpointing, integrate

_traces = [0]  # how often the cycle body was traced (= compiled): a new horizon must not add to it


class WindowSolver(Protocol):
    """What Cycling needs of a solver: `solve(problem)` giving v, x0, converged, reason and Gauss-Newton diagnostics
    (and, for a solver with a learned prior, `result_problem(problem)`: the problem its control v belongs to)."""

    def solve(self, problem) -> Any: ...


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
        # t0: a (traced) scalar, which the 4D-Var problems take for their float t0
        return StrongConstraint4DVar(
            model, background, covariance, observations, n_steps, cast(float, t0), checkpointing
        )


class WeakConstraint(AbstractFormulation):
    """Imperfect-model windows: `WeakConstraint4DVar` with model-error covariance Q and its timing."""

    model_error_covariance: AbstractBackgroundCovariance
    timing: AbstractModelErrorTiming = eqx.field(static=True, default=EveryStep())

    def problem(self, model, background, covariance, observations, n_steps, t0, checkpointing):
        return WeakConstraint4DVar(
            model, background, covariance, self.model_error_covariance, observations, n_steps, self.timing,
            cast(float, t0),  # a (traced) scalar, which the 4D-Var problems take for their float t0
            checkpointing,
        )  # fmt: skip


def _rmse(a: PyTree[Array], b: PyTree[Array]) -> Float[Array, ""]:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: (x - y) ** 2, a, b))
    return jnp.sqrt(sum(jnp.sum(x) for x in leaves) / sum(x.size for x in leaves))


def _at(tree: PyTree[Array], i) -> PyTree[Array]:
    return jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, False), tree)


class CycleDiagnostics(eqx.Module):
    """Per-window statistics (leading axis: window). RMSE fields are None without a truth; `filter_*` at the
    window's latest observation time, the others at its start."""

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
    filter_background_rmse: Float[Array, " window"] | None = None
    filter_analysis_rmse: Float[Array, " window"] | None = None
    observation_weight: Float[Array, " window"] | None = None  # Σ 1/inflation over the observations used

    @property
    def n_not_converged(self) -> int:
        """How many windows stopped without converging (concrete results only)."""
        return int(np.sum(~np.asarray(self.converged)))

    def not_converged(self) -> np.ndarray:
        """Indices of the windows that stopped without converging."""
        return np.flatnonzero(~np.asarray(self.converged))

    def messages(self) -> tuple[str, ...]:
        """Why each window's solver stopped."""
        return tuple(REASONS[int(r)] for r in np.asarray(self.reason))


class CyclingResult(eqx.Module):
    """Backgrounds and analyses of every window (stacked along the window axis) at its start and at its latest
    observation time, optionally the analysis trajectories, and per-window diagnostics."""

    backgrounds: PyTree[Array]
    analyses: PyTree[Array]
    diagnostics: CycleDiagnostics
    filter_backgrounds: PyTree[Array] = None
    filter_analyses: PyTree[Array] = None
    starts: Int[Array, " window"] | None = None  # experiment steps of the window starts
    filter_steps: Int[Array, " window"] | None = None  # and of the windows' latest observation times
    trajectories: PyTree[Array] | None = None  # analysis x_0 … x_window per window (save_trajectories=True)

    def summary(self, spin_up: int = 0) -> dict[str, float]:
        """Window-averaged diagnostics after dropping the first `spin_up` windows (concrete results only)."""
        d = self.diagnostics
        out = {}
        for name in ("background_rmse", "analysis_rmse", "filter_background_rmse", "filter_analysis_rmse",
                     "free_run_rmse", "innovation_mean", "innovation_variance", "innovation_chi2",
                     "analysis_chi2"):  # fmt: skip
            value = getattr(d, name)
            if value is not None:
                out[name] = float(jnp.mean(value[spin_up:]))
        out["converged_fraction"] = float(jnp.mean(d.converged[spin_up:]))
        out["n_not_converged"] = int(np.sum(~np.asarray(d.converged[spin_up:])))
        out["n_windows"] = int(np.shape(d.converged)[0])
        out["mean_outer_iterations"] = float(jnp.mean(d.n_outer[spin_up:]))
        return out


class _Layout(NamedTuple):
    """The compile-time shape of a cycle: window, shift, latest observation step, buffered windows, trajectories."""

    window: int
    shift: int
    latest: int
    capacity: int
    save_trajectories: bool


class Cycling(eqx.Module):
    """Cycled assimilation settings: window length, shift between windows, number of windows, solver, formulation.

    - `window`: model steps per window (N); `shift`: steps between window starts (1 ≤ shift ≤ window).
    - `n_windows`: the default horizon (`run(..., n_windows=...)` overrides it without recompiling).
    - `solver`: anything with `solve(problem)` returning v, x0, converged, reason and Gauss-Newton diagnostics
      (`GaussNewton`, `assim.learned.TrainedSolver`, `UnrolledGaussNewton`), used in every window.
    - `formulation`: `StrongConstraint()` or `WeakConstraint(Q, timing)`.
    - `observation_use`: `AllObservations()`, `UseOnce()` or `MultipleDataAssimilation()` (overlapping windows).
    - `save_trajectories`: also return each window's analysis trajectory.
    - `preconditioner_carry`: `FreshPreconditioner()` (every solve starts from its base preconditioner) or
      `CarriedPairs()` (a `LimitedMemory` Gauss-Newton: each window's last CG pairs precondition the next window).
    """

    window: int = eqx.field(static=True)
    shift: int = eqx.field(static=True)
    n_windows: int = eqx.field(static=True)
    solver: WindowSolver = GaussNewton()
    formulation: AbstractFormulation = StrongConstraint()
    checkpointing: AbstractCheckpointing = eqx.field(static=True, default=NoCheckpointing())
    observation_use: AbstractObservationUse = AllObservations()
    save_trajectories: bool = eqx.field(static=True, default=False)
    preconditioner_carry: AbstractPreconditionerCarry = FreshPreconditioner()

    def __check_init__(self):
        self.preconditioner_carry.check(self.solver)
        if int(self.window) != self.window or self.window < 1:
            raise InputError(f"the window must be at least one model step; got {self.window}.")
        if int(self.shift) != self.shift or not 1 <= self.shift <= self.window:
            raise InputError(
                f"the shift between windows must satisfy 1 ≤ shift ≤ window = {self.window}; got {self.shift} "
                "(the next background is the analysis trajectory advanced by `shift` steps, inside the window)."
            )
        _check_horizon(self.n_windows)

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
        n_windows: int | None = None,
    ) -> CyclingResult:
        """Cycle from the first window's background state; observations and truth count steps from the first window."""
        n_windows = self.n_windows if n_windows is None else _check_horizon(n_windows)
        n_steps = (n_windows - 1) * self.shift + self.window
        observations = (observations,) if isinstance(observations, ObservationSet) else tuple(observations)
        if not observations:
            raise ObservationError("cycling needs at least one observation record.")
        plans = [plan_record(o, i, self.window, self.shift, n_windows) for i, o in enumerate(observations)]
        if all(p is None for p in plans):
            raise ObservationError(
                f"no observation falls inside a {self.window}-step window; lengthen the window or observe more often."
            )
        kept = tuple((o, p) for o, p in zip(observations, plans) if p is not None)
        capacity = min(p.capacity for _, p in kept)
        background = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), background)
        model.check_state(background)
        if truth is not None:
            truth = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), truth)
            model.check_state(jax.tree_util.tree_map(lambda x: x[0], truth))
            length = jax.tree_util.tree_leaves(truth)[0].shape[0]
            if length < n_steps + 1:
                raise InputError(
                    f"the truth trajectory holds {length} states but {n_windows} windows span "
                    f"{n_steps + 1}; give a longer truth run or fewer windows."
                )
            capacity = min(capacity, (length - 1 - self.window) // self.shift + 1)
        layout = _Layout(self.window, self.shift, max(p.steps[-1] for _, p in kept), capacity, self.save_trajectories)
        covariance = ScaledCovariance(covariance, background_scale)
        settings = (self.solver, self.formulation, self.checkpointing, self.observation_use, self.preconditioner_carry)
        out = _cycle(layout, settings, model, background, covariance, kept, truth, jnp.asarray(t0, dtype=float),
                     jnp.asarray(n_windows, dtype=jnp.int32))  # fmt: skip
        out = jax.tree_util.tree_map(lambda x: x[:n_windows], out)
        starts = jnp.arange(n_windows, dtype=jnp.int32) * self.shift
        diagnostics = CycleDiagnostics(**{k: out.get(k) for k in _DIAGNOSTICS})
        return CyclingResult(
            backgrounds=out["background"], analyses=out["analysis"], diagnostics=diagnostics,
            filter_backgrounds=out["filter_background"], filter_analyses=out["filter_analysis"], starts=starts,
            filter_steps=starts + layout.latest, trajectories=out.get("trajectory"),
        )  # fmt: skip


_DIAGNOSTICS = ("background_rmse", "analysis_rmse", "free_run_rmse", "innovation_mean", "innovation_variance",
                "innovation_chi2", "analysis_chi2", "n_observations", "converged", "reason", "n_outer",
                "cg_iterations", "filter_background_rmse", "filter_analysis_rmse", "observation_weight")  # fmt: skip


def _check_horizon(n_windows) -> int:
    if int(n_windows) != n_windows or n_windows < 1:
        raise InputError(f"n_windows must be at least 1; got {n_windows}.")
    return int(n_windows)


@eqx.filter_jit
def _cycle(layout: _Layout, settings, model, background, covariance, records, truth, t0, n_windows) -> dict:
    _traces[0] += 1
    solver, formulation, checkpointing, use, hand_over = settings
    window, shift, latest = layout.window, layout.shift, layout.latest

    def window_problem(w, xb):
        cut = [window_set(o, plan, use, w, n_windows, window, shift) for o, plan in records]
        sets = tuple(o for o, _ in cut)
        problem = formulation.problem(model, xb, covariance, sets, window, t0 + w * shift * model.dt, checkpointing)
        return problem, sets, cut

    def one_window(w, xb, xf, carry):
        start = w * shift
        problem, sets, cut = window_problem(w, xb)
        background_run = problem.trajectory(problem.zero_control())
        innovations = tuple(o.normalised_departures(background_run) for o in problem.observations)
        n_obs = sum(jnp.sum(o.mask) for o in sets)
        weight = sum(jnp.sum(o.mask / inflation[:, None]) for o, inflation in cut)
        n = jnp.maximum(n_obs, 1).astype(float)
        total = sum(jnp.sum(d) for d in innovations)
        squares = sum(jnp.sum(d**2) for d in innovations)
        result, carry = hand_over.solve(solver, problem, carry)
        d = result.diagnostics
        trajectory = result_problem(solver, problem).trajectory(result.v)  # a learned prior: its own control
        out = {
            "background": xb,
            "analysis": result.x0,
            "filter_background": _at(background_run, latest),
            "filter_analysis": _at(trajectory, latest),
            "innovation_mean": total / n,
            "innovation_variance": squares / n - (total / n) ** 2,
            "innovation_chi2": squares / n,
            "analysis_chi2": 2.0 * jnp.take(d.cost, d.n_outer) / n,
            "n_observations": n_obs,
            "observation_weight": weight,
            "converged": result.converged,
            "reason": result.reason,
            "n_outer": d.n_outer,
            "cg_iterations": jnp.sum(d.cg_iterations),
        }
        if layout.save_trajectories:
            out["trajectory"] = trajectory
        if truth is not None:
            out["background_rmse"] = _rmse(xb, _at(truth, start))
            out["analysis_rmse"] = _rmse(result.x0, _at(truth, start))
            out["filter_background_rmse"] = _rmse(out["filter_background"], _at(truth, start + latest))
            out["filter_analysis_rmse"] = _rmse(out["filter_analysis"], _at(truth, start + latest))
            out["free_run_rmse"] = _rmse(xf, _at(truth, start))
            xf = integrate(model, xf, shift, t0 + start * model.dt, checkpointing)
        return _at(trajectory, shift), xf, carry, out

    buffers = _buffers(layout, background, truth is not None)
    control = jax.eval_shape(lambda: window_problem(jnp.asarray(0, jnp.int32), background)[0].zero_control())

    def body(w, state):
        xb, xf, carry, buffers = state
        xb, xf, carry, out = one_window(w, xb, xf, carry)
        buffers = {k: jax.tree_util.tree_map(lambda b, o: b.at[w].set(jnp.asarray(o, b.dtype)), buffers[k], out[k])
                   for k in buffers}  # fmt: skip
        return xb, xf, carry, buffers

    state0 = (background, background, hand_over.initial(solver, control), buffers)
    return jax.lax.fori_loop(0, n_windows, body, state0)[-1]


def _buffers(layout: _Layout, background: PyTree[Array], with_truth: bool) -> dict:
    """Zero outputs for `layout.capacity` windows, written in place by the loop."""
    c = layout.capacity

    def states(extra=()):
        return jax.tree_util.tree_map(lambda x: jnp.zeros((c, *extra, *x.shape), x.dtype), background)

    out = {name: states() for name in ("background", "analysis", "filter_background", "filter_analysis")}
    if layout.save_trajectories:
        out["trajectory"] = states((layout.window + 1,))
    names = ["innovation_mean", "innovation_variance", "innovation_chi2", "analysis_chi2", "observation_weight"]
    if with_truth:
        names += ["background_rmse", "analysis_rmse", "filter_background_rmse", "filter_analysis_rmse", "free_run_rmse"]
    out.update({name: jnp.zeros(c) for name in names})
    out.update({name: jnp.zeros(c, jnp.int32) for name in ("n_observations", "reason", "n_outer", "cg_iterations")})
    out["converged"] = jnp.zeros(c, bool)
    return out
