"""Cycling as practitioners run it, on a tiny Lorenz-96 (N = 12, every other variable observed every 2 steps):
the half-open window (s, s + window] (end used, start not; a record may start one interval late), both analysis
conventions, observation-use schemes (all, once, multiple-data-assimilation weights), non-converged windows
counted, a horizon that does not recompile, and the unrolled learned solver inside the cycle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from assim.covariances.covariance import SpectralGaussianCovariance
from assim.learned.trained_solver import TrainedSolver
from assim.learned.unrolled import UnrolledGaussNewton
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.twin import ObservationNetwork, twin_experiment
from assim.solvers import cycling as cycling_module
from assim.solvers.cycling import Cycling
from assim.solvers.gauss_newton import MAX_OUTER, GaussNewton, LevenbergMarquardt
from assim.solvers.observation_use import (
    AllObservations,
    MultipleDataAssimilation,
    UseOnce,
    plan_record,
    windows_using,
)
from models import CartesianGrid, Periodic
from models.lorenz96 import Lorenz96
from models.rollout import integrate, rollout

N, K = 12, 2  # state size, observation interval (steps)
RING = CartesianGrid((N,), (float(N),), Periodic())
MODEL = Lorenz96(N, 8.0, 0.05)
H = GriddedObservation(RING, np.arange(0, N, 2))
B = SpectralGaussianCovariance(RING, 0.3, 0.5)
SOLVER = GaussNewton(damping=LevenbergMarquardt(), max_outer=8, cg_max_steps=20, cg_tol=1e-8, gtol=1e-6, ftol=1e-10)
X0 = integrate(MODEL, 8.0 + 0.01 * jax.random.normal(jax.random.PRNGKey(0), (N,)), 500)
STEPS = 40
TWIN = twin_experiment(jax.random.PRNGKey(1), MODEL, X0, STEPS, ObservationNetwork.every(H, K, STEPS, 1.0), B)
RECORD = TWIN.observations[0]  # steps 0, 2, …, 40


def run(cycling, record=RECORD, **kw):
    return cycling.run(MODEL, TWIN.background, B, record, TWIN.truth, **kw)


def test_a_record_starting_one_interval_late_is_used_and_the_step_0_observation_belongs_to_no_window():
    assert RECORD.steps[:2] == (0, 2)
    late = ObservationSet(H, RECORD.steps[1:], RECORD.values[1:], 1.0)  # first observation at step k = 2
    cycling = Cycling(window=4, shift=4, n_windows=5, solver=SOLVER)
    a, b = run(cycling), run(cycling, late)
    np.testing.assert_allclose(b.analyses, a.analyses, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(b.diagnostics.n_observations, 2 * 6)  # steps 2 and 4 of each window, 6 variables
    plan = plan_record(late, 0, 4, 4, 5)
    assert plan.steps == (2, 4) and plan.offset == 0
    assert plan_record(RECORD, 0, 4, 4, 5).offset == 1


def test_the_observation_at_the_window_end_is_used():
    cycling = Cycling(window=4, shift=4, n_windows=2, solver=SOLVER)
    base = run(cycling)
    end = RECORD.values.at[2].add(3.0)  # step 4: the end of window 0 (and outside window 1, which holds (4, 8])
    moved = run(cycling, ObservationSet(H, RECORD.steps, end, 1.0))
    assert float(jnp.max(jnp.abs(moved.analyses[0] - base.analyses[0]))) > 1e-3
    start = RECORD.values.at[0].add(3.0)  # step 0: the first window's start, used by no window
    same = run(cycling, ObservationSet(H, RECORD.steps, start, 1.0))
    np.testing.assert_array_equal(same.analyses, base.analyses)


def test_both_analysis_conventions_and_their_trajectories():
    cycling = Cycling(window=6, shift=4, n_windows=4, solver=SOLVER, save_trajectories=True)
    r = run(cycling)
    np.testing.assert_array_equal(r.starts, [0, 4, 8, 12])
    np.testing.assert_array_equal(r.filter_steps, [6, 10, 14, 18])  # the latest observation is the window end
    assert r.trajectories.shape == (4, 7, N)
    np.testing.assert_allclose(r.trajectories[:, 0], r.analyses, rtol=0, atol=1e-14)
    np.testing.assert_allclose(r.trajectories[:, 6], r.filter_analyses, rtol=0, atol=1e-14)
    forecast = jax.vmap(lambda x: integrate(MODEL, x, 6))
    np.testing.assert_allclose(r.filter_analyses, forecast(r.analyses), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(r.filter_backgrounds, forecast(r.backgrounds), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(r.backgrounds[1:], r.trajectories[:-1, 4], rtol=0, atol=1e-14)  # hand-over at shift
    d = r.diagnostics
    at = np.asarray(r.filter_steps)
    np.testing.assert_allclose(d.filter_analysis_rmse, np.sqrt(np.mean((r.filter_analyses - TWIN.truth[at]) ** 2, 1)))
    np.testing.assert_allclose(d.filter_background_rmse,
                               np.sqrt(np.mean((r.filter_backgrounds - TWIN.truth[at]) ** 2, 1)))  # fmt: skip
    s = r.summary()
    assert {"analysis_rmse", "filter_analysis_rmse", "background_rmse", "filter_background_rmse"} <= set(s)
    assert s["filter_analysis_rmse"] < s["filter_background_rmse"]


def test_use_once_equals_all_without_overlap():
    a = run(Cycling(window=4, shift=4, n_windows=6, solver=SOLVER, observation_use=AllObservations()))
    once = run(Cycling(window=4, shift=4, n_windows=6, solver=SOLVER, observation_use=UseOnce()))
    np.testing.assert_allclose(once.analyses, a.analyses, rtol=0, atol=1e-10)
    np.testing.assert_allclose(once.filter_analyses, a.filter_analyses, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(once.diagnostics.n_observations, a.diagnostics.n_observations)


def _tally(use, n_windows, window, shift, steps):
    """Per experiment step: how many windows use it, and the sum of their weights 1/inflation."""
    count, weight = np.zeros(STEPS + 1), np.zeros(STEPS + 1)
    for w in range(n_windows):
        used, inflation = use.weights(jnp.asarray(steps), w, n_windows, window, shift)
        at = w * shift + np.asarray(steps)
        np.add.at(count, at, np.asarray(used, float))
        np.add.at(weight, at, np.asarray(used) / np.asarray(inflation))
    return count, weight


@pytest.mark.parametrize("window, shift", [(8, 2), (8, 4), (6, 2), (4, 4)])
def test_use_once_uses_every_observation_exactly_once_and_mda_weights_sum_to_one(window, shift):
    n_windows = (STEPS - window) // shift + 1
    steps = np.arange(K, window + 1, K)
    covered = np.zeros(STEPS + 1, bool)
    covered[K : (n_windows - 1) * shift + window + 1 : K] = True  # observation steps in (0, last window end]
    count, _ = _tally(UseOnce(), n_windows, window, shift, steps)
    np.testing.assert_array_equal(count[covered], 1)
    assert not count[~covered].any()
    count, weight = _tally(MultipleDataAssimilation(), n_windows, window, shift, steps)
    np.testing.assert_allclose(weight[covered], 1.0, rtol=1e-14)
    all_count, _ = _tally(AllObservations(), n_windows, window, shift, steps)
    np.testing.assert_array_equal(count, all_count)  # MDA uses an observation in every window that holds it
    np.testing.assert_array_equal(windows_using(np.flatnonzero(covered), n_windows, window, shift),
                                  all_count[covered])  # fmt: skip
    if shift < window:
        assert all_count[covered].max() > 1


def test_schemes_inside_the_cycle_with_overlapping_windows():
    n_windows, distinct = 8, 11 * 6  # observation steps 2, 4, …, 22 (the last window ends at 22), 6 variables
    results = {
        type(use).__name__: run(Cycling(window=8, shift=2, n_windows=n_windows, solver=SOLVER, observation_use=use))
        for use in (AllObservations(), UseOnce(), MultipleDataAssimilation())
    }
    once, mda, every = results["UseOnce"].diagnostics, results["MultipleDataAssimilation"].diagnostics, results[
        "AllObservations"].diagnostics  # fmt: skip
    np.testing.assert_array_equal(once.n_observations, [4 * 6] + [6] * (n_windows - 1))
    assert int(jnp.sum(once.n_observations)) == distinct
    assert int(jnp.sum(every.n_observations)) == n_windows * 4 * 6 > distinct
    np.testing.assert_allclose(jnp.sum(mda.observation_weight), distinct, rtol=1e-12)
    np.testing.assert_array_equal(mda.n_observations, every.n_observations)
    for r in results.values():
        s = r.summary(2)
        assert s["filter_analysis_rmse"] < s["filter_background_rmse"]


def test_non_converged_windows_are_counted_and_flagged():
    tight = GaussNewton(damping=LevenbergMarquardt(), max_outer=1, cg_max_steps=2, cg_tol=1e-12, gtol=1e-14, ftol=0.0)
    r = run(Cycling(window=4, shift=4, n_windows=5, solver=tight))
    d = r.diagnostics
    assert r.summary()["n_not_converged"] == 5 == d.n_not_converged
    np.testing.assert_array_equal(d.not_converged(), np.arange(5))
    np.testing.assert_array_equal(d.reason, MAX_OUTER)
    assert all(m.startswith("not converged: max_outer") for m in d.messages())
    assert r.summary(spin_up=2)["n_not_converged"] == 3
    ok = run(Cycling(window=4, shift=4, n_windows=5, solver=SOLVER))
    assert ok.summary()["n_not_converged"] == 0 and ok.summary()["converged_fraction"] == 1.0


def test_a_new_horizon_does_not_recompile():
    cycling = Cycling(window=4, shift=2, n_windows=3, solver=SOLVER)
    short = run(cycling)
    traces = cycling_module._traces[0]
    longer = run(cycling, n_windows=7)
    other = run(Cycling(window=4, shift=2, n_windows=5, solver=SOLVER))
    assert cycling_module._traces[0] == traces  # no new trace, hence no new compilation
    assert longer.analyses.shape == (7, N) and other.analyses.shape == (5, N)
    np.testing.assert_array_equal(longer.analyses[:3], short.analyses)  # the first windows do not see the horizon
    np.testing.assert_array_equal(other.diagnostics.free_run_rmse, longer.diagnostics.free_run_rmse[:5])
    run(Cycling(window=6, shift=2, n_windows=3, solver=SOLVER))
    assert cycling_module._traces[0] == traces + 1  # the counter does count: a new window length is a new program
    free = rollout(MODEL, TWIN.background, 12)[::2]
    np.testing.assert_allclose(longer.diagnostics.free_run_rmse,
                               np.sqrt(np.mean((free - TWIN.truth[:13:2]) ** 2, 1)), rtol=1e-10)  # fmt: skip


@pytest.mark.parametrize("trained", [False, True], ids=["unrolled", "trained"])
def test_the_unrolled_learned_solver_cycles(trained):
    learned = UnrolledGaussNewton(n_layers=2, cg_steps=5)
    r = run(Cycling(window=4, shift=4, n_windows=4, solver=TrainedSolver(learned) if trained else learned))
    d = r.diagnostics
    first = StrongConstraint4DVar(MODEL, TWIN.background, B, ObservationSet(H, (2, 4), RECORD.values[1:3], 1.0), 4)
    np.testing.assert_allclose(r.analyses[0], learned.solve(first).x0, rtol=0, atol=1e-12)  # window 0, by hand
    assert bool(jnp.all(jnp.isfinite(r.analyses)))
    np.testing.assert_array_equal(d.n_outer, 2)
    np.testing.assert_array_equal(d.converged, False)  # no convergence test: flagged as such
    assert d.n_not_converged == 4
    s = r.summary(1)
    assert s["analysis_rmse"] < s["background_rmse"] and s["filter_analysis_rmse"] < s["filter_background_rmse"]


def test_each_window_starts_from_the_previous_analysis_trajectory():
    r = run(Cycling(window=6, shift=4, n_windows=3, solver=SOLVER, save_trajectories=True))
    for w in (1, 2):  # background = previous analysis trajectory at the shift; the solve starts there (v = 0)
        first_guess = r.trajectories[w - 1, 4]
        obs = ObservationSet(H, (2, 4, 6), RECORD.values[2 * w + 1 : 2 * w + 4], 1.0)
        alone = SOLVER.solve(StrongConstraint4DVar(MODEL, first_guess, B, obs, 6))
        np.testing.assert_allclose(r.backgrounds[w], first_guess, rtol=0, atol=1e-14)
        np.testing.assert_allclose(r.analyses[w], alone.x0, rtol=0, atol=1e-10)
        assert int(r.diagnostics.n_outer[w]) == int(alone.diagnostics.n_outer)
