"""Losses without ground truth: the random split partitions the valid observations afresh per key, held-out values
never reach the analysis but do move the masking loss, the KKT residual vanishes at a converged analysis (projected
form under a bound), supervised error and weighted sums, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from l96_window import SOLVE, N, window

from assim.covariances.covariance import SpectralGaussianCovariance
from assim.errors import InputError
from assim.learned.hypergradients import Unrolled
from assim.learned.losses import (
    KKTResidual,
    LossInputs,
    LowerBound,
    MaskedMisfit,
    NoSplit,
    RandomSplit,
    SupervisedStateError,
    WeightedSum,
    window_loss,
)
from assim.learned.unrolled import UnrolledGaussNewton
from assim.solvers.gauss_newton import GaussNewton

SOLVER = UnrolledGaussNewton(4, 2 * N, weight=1.0)
SPLIT = RandomSplit(0.3)


@pytest.fixture(scope="module")
def data():
    return window()


@pytest.fixture(scope="module")
def converged(data):
    return GaussNewton(max_outer=20, cg_max_steps=4 * N, cg_tol=1e-13, gtol=1e-9).solve(data[0], throw=True)


GRAD = eqx.filter_jit(lambda problem, v: jax.grad(problem.cost)(v))
EVALUATE = eqx.filter_jit(lambda loss, inputs: loss(inputs))


@eqx.filter_jit
def masking_loss(problem, key):
    return window_loss(MaskedMisfit(), lambda p: Unrolled().analyse(SOLVER, p), problem, key, SPLIT)


def test_random_split_partitions_the_valid_observations(data):
    problem = data[0]
    obs = problem.observations[0]
    masks = []
    for seed in (0, 1):
        inputs, heldout = SPLIT(jax.random.PRNGKey(seed), problem)
        a, b = inputs.observations[0].mask, heldout.observations[0].mask
        np.testing.assert_array_equal(a | b, obs.mask)
        assert not bool(jnp.any(a & b)) and 0 < int(b.sum()) < int(obs.mask.sum())
        assert int(heldout.observations[0].report.n_valid) == int(b.sum())
        masks.append(np.asarray(b))
    assert not np.array_equal(*masks)  # a fresh split per key


def test_heldout_values_leave_the_analysis_unchanged_but_move_the_loss(data):
    problem = data[0]
    key = jax.random.PRNGKey(7)
    _, heldout = SPLIT(key, problem)
    held = heldout.observations[0].mask
    obs = problem.observations[0]
    shifted = eqx.tree_at(lambda p: p.observations[0].values, problem, jnp.where(held, obs.values + 1.0, obs.values))
    analyses = [SOLVE(SOLVER, SPLIT(key, p)[0]).v for p in (problem, shifted)]
    np.testing.assert_array_equal(analyses[0], analyses[1])  # bitwise: the solver never sees Λ
    losses = [float(masking_loss(p, key)) for p in (problem, shifted)]
    assert abs(losses[1] - losses[0]) > 0.1 * losses[0]
    # the loss is the mean squared normalised held-out departure of the forward-modelled analysis
    traj = problem.trajectory(analyses[0])
    dep = (obs.values - obs.predict(traj)) / obs.error.sigma
    np.testing.assert_allclose(losses[0], float(jnp.sum(jnp.where(held, dep**2, 0.0)) / held.sum()), rtol=1e-12)
    # perturbing an input observation does change the analysis
    moved = eqx.tree_at(lambda p: p.observations[0].values, problem, jnp.where(held, obs.values, obs.values + 1.0))
    assert not np.allclose(SOLVE(SOLVER, SPLIT(key, moved)[0]).v, analyses[0])


def test_kkt_residual_vanishes_only_at_a_stationary_point(data, converged):
    problem = data[0]
    zero = jnp.zeros(N)
    kkt = lambda v, loss: EVALUATE(loss, LossInputs(problem, None, zero, v, None))  # noqa: E731
    assert float(kkt(converged.v, KKTResidual())) <= 1e-10
    np.testing.assert_allclose(float(kkt(zero, KKTResidual())), 1.0, rtol=1e-14)
    one_layer = 0.9 * converged.v  # not a stationary point
    assert float(kkt(one_layer, KKTResidual())) > 1e-4
    # an inactive bound leaves the residual unchanged
    far = KKTResidual(LowerBound(-1e3))
    np.testing.assert_allclose(float(kkt(one_layer, far)), float(kkt(one_layer, KKTResidual())), rtol=1e-14)
    # with x0 on the bound everywhere, only components whose descent direction is feasible (∂J/∂v < 0) count
    sigma = jnp.sqrt(problem.covariance.variance)
    bound = float(jnp.min(problem.background)) - 1.0
    on_bound = (bound - problem.background) / sigma
    g, g0 = GRAD(problem, on_bound), GRAD(problem, zero)
    assert bool(jnp.any(g > 0)) and bool(jnp.any(g < 0))
    pg0 = -jnp.maximum(-g0, on_bound)  # projected gradient at v_0 = 0: v − max(v − g, lower)
    expected = jnp.sum(jnp.minimum(g, 0.0) ** 2) / jnp.sum(pg0**2)
    np.testing.assert_allclose(float(kkt(on_bound, KKTResidual(LowerBound(bound)))), float(expected), rtol=1e-12)


def test_supervised_error_and_weighted_sum(data, converged):
    problem, truth = data
    zero = jnp.zeros(N)
    at = lambda v: LossInputs(problem, None, zero, v, truth)  # noqa: E731
    supervised = lambda v: float(EVALUATE(SupervisedStateError(), at(v)))  # noqa: E731
    np.testing.assert_allclose(supervised(zero), 1.0, rtol=1e-14)  # x0 = x_b
    assert supervised(converged.v) < 0.5  # the analysis beats the background
    both = WeightedSum([(2.0, SupervisedStateError()), (0.5, KKTResidual())])
    v = 0.5 * converged.v
    expected = 2.0 * supervised(v) + 0.5 * float(EVALUATE(KKTResidual(), at(v)))
    np.testing.assert_allclose(float(EVALUATE(both, at(v))), expected, rtol=1e-13)


def test_bad_loss_settings_raise(data):
    problem = data[0]
    zero = jnp.zeros(N)
    with pytest.raises(InputError, match="RandomSplit"):
        window_loss(MaskedMisfit(), lambda p: p.zero_control(), problem, jax.random.PRNGKey(0), NoSplit())
    with pytest.raises(InputError, match="heldout_fraction"):
        RandomSplit(1.0)
    with pytest.raises(InputError, match="twin experiments only"):
        SupervisedStateError()(LossInputs(problem, None, zero, zero, None))
    spectral_b = SpectralGaussianCovariance(problem.covariance.grid, 0.5, 1.0)
    spectral = eqx.tree_at(lambda p: p.covariance, problem, spectral_b)
    with pytest.raises(InputError, match="DiagonalCovariance"):
        KKTResidual(LowerBound(0.0))(LossInputs(spectral, None, zero, zero, None))
    with pytest.raises(InputError, match="weight ≥ 0"):
        WeightedSum([(-1.0, KKTResidual())])
