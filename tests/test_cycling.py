"""Cycled 4D-Var on Lorenz-96 (N = 40, RK4, dt = 0.05, every other variable observed every step, σ = 1):
analysis error well below the observation and free-run errors, the J_min χ² test near 1 for a tuned B and far
from it for a mistuned one, window slicing and background hand-over checked against direct computations,
overlapping windows, jit of the whole cycle, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from assim.covariances.covariance import DiagonalCovariance, SpectralGaussianCovariance
from assim.errors import InputError, ObservationError
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation
from assim.problems.twin import ObservationNetwork, twin_experiment
from assim.problems.weak_constraint import SubWindows, WeakConstraint4DVar
from assim.solvers.cycling import Cycling, StrongConstraint, WeakConstraint
from assim.solvers.gauss_newton import GaussNewton, LevenbergMarquardt
from models import CartesianGrid, Periodic
from models.lorenz96 import Lorenz96
from models.rollout import integrate, rollout

N = 40
RING = CartesianGrid((N,), (float(N),), Periodic())
MODEL = Lorenz96(N, 8.0, 0.05)
H = GriddedObservation(RING, np.arange(0, N, 2))
B = SpectralGaussianCovariance(RING, 0.2, 0.5)  # σ_b² ≈ the cycled background error variance (tuned)
SOLVER = GaussNewton(damping=LevenbergMarquardt(), max_outer=10, cg_max_steps=40, cg_tol=1e-6, gtol=1e-5, ftol=1e-8)
CYCLING = Cycling(window=8, shift=8, n_windows=20, solver=SOLVER)
OVERLAPPING = Cycling(window=6, shift=3, n_windows=20, solver=SOLVER)
SPIN_UP = 5  # windows left out of time averages
X0 = integrate(MODEL, 8.0 + 0.01 * jax.random.normal(jax.random.PRNGKey(0), (N,)), 1000)  # on the attractor
TWIN = twin_experiment(jax.random.PRNGKey(1), MODEL, X0, CYCLING.n_steps, ObservationNetwork.every(H, 1, 160, 1.0), B)
RECORD = TWIN.observations[0]  # observations at steps 0 … 160


def run_cycle(cycling, scale):
    return cycling.run(MODEL, TWIN.background, B, RECORD, TWIN.truth, background_scale=scale)


# the Python API under jit: the background-error scale is a traced argument, one compilation serves every scale
RUN = eqx.filter_jit(run_cycle)


@pytest.fixture(scope="module")
def tuned():
    return RUN(CYCLING, jnp.asarray(1.0))


def test_cycled_analysis_beats_observations_background_and_free_run(tuned):
    d = tuned.diagnostics
    s = tuned.summary(SPIN_UP)
    assert d.analysis_rmse.shape == (20,) and tuned.analyses.shape == (20, N)
    assert s["analysis_rmse"] < 0.5  # σ_o = 1: the analysis is far better than any single observation
    assert s["analysis_rmse"] < 0.9 * s["background_rmse"]
    assert s["background_rmse"] < 0.2 * s["free_run_rmse"]  # the free run has lost the truth (chaos)
    assert s["free_run_rmse"] > 3.0
    assert bool(jnp.all(d.converged)) and int(jnp.max(d.n_outer)) < SOLVER.max_outer
    assert bool(jnp.all(d.cg_iterations > 0))
    np.testing.assert_array_equal(d.n_observations, 8 * 20)  # steps 1 … 8 of each window, 20 variables
    # RMSEs as reported, recomputed from the stacked states
    starts = np.arange(20) * 8
    np.testing.assert_allclose(d.analysis_rmse, np.sqrt(np.mean((tuned.analyses - TWIN.truth[starts]) ** 2, 1)))
    np.testing.assert_allclose(d.background_rmse, np.sqrt(np.mean((tuned.backgrounds - TWIN.truth[starts]) ** 2, 1)))


def test_chi2_is_near_one_for_a_tuned_b_and_far_from_it_for_a_mistuned_one(tuned):
    s = tuned.summary(SPIN_UP)
    assert 0.8 < s["analysis_chi2"] < 1.25  # E[2 J_min / p] = 1 with the right B and R
    assert 1.0 < s["innovation_chi2"] < 2.0  # E[‖R^{-1/2} d‖²/p] = 1 + tr(H B Hᵀ R⁻¹)/p
    assert abs(s["innovation_mean"]) < 0.15  # unbiased innovations
    mistuned = RUN(CYCLING, jnp.asarray(0.01))  # B 100× too small: the cycle loses the truth
    m = mistuned.summary(SPIN_UP)
    assert m["analysis_chi2"] > 3.0 and m["innovation_chi2"] > 3.0
    assert m["analysis_rmse"] > 2.0 * s["analysis_rmse"]


def test_each_background_is_the_forecast_of_the_previous_analysis(tuned):
    forecasts = jax.jit(jax.vmap(lambda x: integrate(MODEL, x, 8)))(tuned.analyses[:-1])
    np.testing.assert_allclose(tuned.backgrounds[1:], forecasts, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(tuned.backgrounds[0], TWIN.background)


def test_window_observations_are_sliced_from_the_record(tuned):
    """Innovation statistics recomputed from the record's steps (8w, 8w + 8] (the window's end used, its start
    not) and the background forecast."""
    for w in (0, 13, 19):
        traj = rollout(MODEL, tuned.backgrounds[w], 8)[1:]
        d = np.asarray(RECORD.values[8 * w + 1 : 8 * w + 9]) - np.asarray(jax.vmap(H.apply)(traj))
        np.testing.assert_allclose(tuned.diagnostics.innovation_mean[w], d.mean(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(tuned.diagnostics.innovation_chi2[w], np.mean(d**2), rtol=1e-10)
        np.testing.assert_allclose(tuned.diagnostics.innovation_variance[w], d.var(), rtol=1e-9)


def test_overlapping_windows():
    result = RUN(OVERLAPPING, jnp.asarray(1.0))
    s = result.summary(SPIN_UP)
    assert OVERLAPPING.n_steps == 63
    assert s["analysis_rmse"] < 0.5 and s["analysis_rmse"] < s["background_rmse"]
    assert bool(jnp.all(result.diagnostics.converged))
    np.testing.assert_array_equal(result.diagnostics.n_observations, 6 * 20)
    forecasts = jax.jit(jax.vmap(lambda x: integrate(MODEL, x, 3)))(result.analyses[:-1])
    np.testing.assert_allclose(result.backgrounds[1:], forecasts, rtol=1e-10, atol=1e-10)


def test_formulations_build_their_window_problems():
    q = DiagonalCovariance(RING, 0.01)
    window = (ObservationSet(H, (0, 1), RECORD.values[:2], 1.0),)
    weak = WeakConstraint(q, SubWindows(2)).problem(MODEL, X0, B, window, 4, 0.0, CYCLING.checkpointing)
    assert isinstance(weak, WeakConstraint4DVar) and weak.n_model_errors == 2 and weak.n_steps == 4
    strong = StrongConstraint().problem(MODEL, X0, B, window, 4, 0.2, CYCLING.checkpointing)
    assert strong.n_steps == 4 and float(strong.t0) == 0.2


def test_bad_input_raises():
    with pytest.raises(InputError, match="1 ≤ shift ≤ window"):
        Cycling(window=4, shift=5, n_windows=3)
    with pytest.raises(InputError, match="at least one model step"):
        Cycling(window=0, shift=0, n_windows=3)
    every_second = ObservationSet(H, range(0, 161, 2), RECORD.values[::2], 1.0)
    with pytest.raises(ObservationError, match="make the shift a multiple of 2"):
        Cycling(window=6, shift=3, n_windows=4).run(MODEL, X0, B, every_second)
    late = ObservationSet(H, range(5, 161, 2), RECORD.values[5::2], 1.0)
    with pytest.raises(ObservationError, match="starts at step 5"):
        Cycling(window=6, shift=4, n_windows=4).run(MODEL, X0, B, late)
    with pytest.raises(ObservationError, match="use fewer windows or a longer record"):
        Cycling(window=8, shift=8, n_windows=21).run(MODEL, X0, B, RECORD)
    with pytest.raises(ObservationError, match="regularly spaced"):
        Cycling(window=8, shift=8, n_windows=2).run(MODEL, X0, B, ObservationSet(H, (0, 1, 3), RECORD.values[:3], 1.0))
    with pytest.raises(InputError, match="give a longer truth run"):
        CYCLING.run(MODEL, X0, B, RECORD, TWIN.truth[:100])
