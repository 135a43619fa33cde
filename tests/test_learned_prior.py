"""Learned priors that stay variational: B_θ = L_θ L_θᵀ is positive definite on the sea cells by construction, an
untrained prior gives classical Gauss-Newton exactly, the observation split never lets a held-out or an invalid
observation into the solver, the certificate's fallback runs exactly when the KKT residual is above its threshold,
and implicit hypergradients of the B hyperparameters agree with finite differences of the masking loss.
(The adjoint, transpose and parameter-gradient tests of the learned covariance are in the registry:
`learned-masked-latlon` in tests/test_contracts.py.)"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from assim.covariances.covariance import MaskedCovariance
from assim.covariances.diffusion import DiffusionCovariance, RandomisedNormalisation
from assim.errors import InputError
from assim.learned.certificate import Certified, kkt_residual
from assim.learned.hypergradients import Implicit
from assim.learned.losses import MaskedMisfit, RandomSplit, window_loss
from assim.learned.prior import (
    ConvergedGaussNewton,
    CovarianceHyperparameters,
    LearnedPrior,
    SpectralGain,
    VarianceGain,
)
from assim.learned.trained_solver import TrainedSolver
from assim.learned.unrolled import UnrolledGaussNewton
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation
from assim.problems.cost import StrongConstraint4DVar
from assim.solvers.cycling import Cycling
from assim.solvers.gauss_newton import GaussNewton
from models import LatLonGrid
from models.diffusion import Diffusion
from models.rollout import rollout
from models.time_schemes import CrankNicolson

SEA = np.ones((8, 12), bool)
SEA[3:5, 4:7] = False  # an island
SEA[:6, 9] = False  # a wall from the south coast
GRID = LatLonGrid(np.arange(-70.0, 71.0, 20.0), np.arange(0.0, 360.0, 30.0), radius=1.0, mask=SEA)
TIGHT = lx.CG(rtol=1e-13, atol=1e-13, max_steps=500)
STEPS = (2, 4, 6)
CLASSICAL = GaussNewton(max_outer=1, cg_max_steps=200, cg_tol=1e-12, gtol=1e-10)


def _random_prior(key):
    spectral, variance = SpectralGain(GRID.shape, 5), VarianceGain(GRID.shape)
    k1, k2 = jax.random.split(key)
    spectral = eqx.tree_at(lambda g: g.log_gain, spectral, 0.7 * jax.random.normal(k1, (5,)))
    variance = eqx.tree_at(lambda g: g.log_scale, variance, 0.3 * jax.random.normal(k2, GRID.shape))
    return LearnedPrior((spectral, variance), GRID.shape, SEA)


@pytest.fixture(scope="module")
def problem():
    """A masked lat-lon diffusion window observed on every sea cell, some observations NaN or on land."""
    model = Diffusion(GRID, 0.3, 0.1, CrankNicolson(), solver=TIGHT)
    lat, lon = (np.deg2rad(a) for a in np.meshgrid(*GRID.coords().values(), indexing="ij"))
    truth0 = jnp.asarray(np.where(SEA, np.exp(-((lat - 0.3) ** 2 + (lon - 2.0) ** 2) / 0.5), 0.0))
    truth = rollout(model, truth0, 6)
    cells = np.arange(GRID.size)  # every cell, land included: the land ones are invalid
    operator = GriddedObservation(GRID, cells)
    values = np.asarray(jnp.stack([operator.apply(truth[s]) for s in STEPS]))
    values = values + 0.05 * np.asarray(jax.random.normal(jax.random.PRNGKey(1), values.shape))
    values[:, ~SEA.ravel()] = np.nan  # land
    values[1, 5:9] = np.nan  # gaps in the record
    obs = ObservationSet(operator, STEPS, jnp.asarray(values), 0.05)
    base = DiffusionCovariance(GRID, 0.1, 0.5, 4, RandomisedNormalisation(jax.random.PRNGKey(0), 20), solver=TIGHT)
    return StrongConstraint4DVar(model, truth0 * 0.5, MaskedCovariance.on_grid(base), obs, n_steps=6)


def test_learned_covariance_is_symmetric_positive_definite_on_the_sea_cells(problem):
    posed = _random_prior(jax.random.PRNGKey(3)).pose(problem).prepared()
    n = int(SEA.sum())
    columns = jax.vmap(lambda e: posed.covariance.sqrt(e))(jnp.eye(n))  # L e_i, tiny grid: a test may materialise
    lower = np.asarray(columns).reshape(n, -1)[:, SEA.ravel()].T  # L restricted to the sea rows
    b = lower @ lower.T
    assert np.all(np.asarray(columns).reshape(n, -1)[:, ~SEA.ravel()] == 0.0)  # no increment on land
    np.testing.assert_allclose(b, b.T, atol=1e-14)
    assert np.linalg.eigvalsh(b).min() > 1e-10 * np.linalg.eigvalsh(b).max()


def test_an_untrained_prior_reproduces_classical_gauss_newton(problem):
    fresh = LearnedPrior((SpectralGain(GRID.shape, 6), VarianceGain()), GRID.shape, SEA, problem.zero_control())
    solve = eqx.filter_jit(lambda s, p: s.solve(s.posed(p)))
    with_prior = solve(UnrolledGaussNewton(2, 6, prior=fresh), problem)
    classical = GaussNewton(max_outer=2, cg_max_steps=6, cg_tol=0.0, gtol=0.0, ftol=0.0).solve(problem)
    np.testing.assert_allclose(with_prior.x0, classical.x0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(with_prior.diagnostics.cost, classical.diagnostics.cost, rtol=1e-10)
    # and a trained prior changes the analysis (the test above could not pass with a prior that is ignored)
    trained = solve(UnrolledGaussNewton(2, 6, prior=_random_prior(jax.random.PRNGKey(5))), problem)
    assert float(jnp.max(jnp.abs(trained.x0 - classical.x0))) > 1e-3


def test_a_learned_mean_shifts_the_background_by_the_learned_square_root_on_the_sea_only(problem):
    prior = _random_prior(jax.random.PRNGKey(6))
    prior = LearnedPrior(prior.gains, GRID.shape, SEA, problem.zero_control())
    m = jax.random.normal(jax.random.PRNGKey(8), problem.zero_control().shape)
    shifted = eqx.tree_at(lambda q: q.mean, prior, m).pose(problem)
    increment = np.asarray(shifted.background - problem.background)
    np.testing.assert_allclose(increment, prior.pose(problem).covariance.prepare().sqrt(m), rtol=0, atol=1e-13)
    assert np.all(increment[~SEA] == 0.0) and np.abs(increment[SEA]).max() > 1e-3


def test_split_keeps_invalid_observations_out_of_both_sets_and_held_out_ones_out_of_the_solver(problem):
    valid = np.asarray(problem.observations[0].error.mask)
    assert 0 < valid.sum() < valid.size  # the window has invalid observations (land, gaps)
    inputs, heldout = RandomSplit(0.3)(jax.random.PRNGKey(7), problem)
    seen = np.asarray(inputs.observations[0].error.mask)
    held = np.asarray(heldout.observations[0].error.mask)
    assert not np.any(seen & held) and np.array_equal(seen | held, valid) and held.sum() > 0
    for part in (inputs, heldout):  # nothing invalid reaches either set as y = 0, σ = 1
        values = np.asarray(part.observations[0].values)
        assert np.all(np.isfinite(values))
    # the analysis of the input set does not move when the held-out values change
    solver = UnrolledGaussNewton(2, 6)
    poisoned = eqx.tree_at(lambda p: p.observations[0].values, problem,
                           jnp.where(jnp.asarray(held), 1e6, problem.observations[0].values))  # fmt: skip
    a = eqx.filter_jit(lambda p: solver.solve(RandomSplit(0.3)(jax.random.PRNGKey(7), p)[0]).x0)
    np.testing.assert_array_equal(a(problem), a(poisoned))


def test_certificate_falls_back_exactly_when_the_residual_is_above_the_threshold(problem):
    learned = TrainedSolver(UnrolledGaussNewton(1, 3, prior=_random_prior(jax.random.PRNGKey(5))))
    residual = float(kkt_residual(learned.solver.posed(problem), learned.solve(problem).v))
    assert 1e-4 < residual < 1.0
    loose = Certified(learned, CLASSICAL, threshold=min(0.99, 2 * residual)).solve(problem)
    assert not bool(loose.used_fallback) and int(loose.fallback_runs) == 0 and bool(loose.converged)
    np.testing.assert_array_equal(loose.v, learned.solve(problem).v)
    tight = Certified(learned, CLASSICAL, threshold=1e-6).solve(problem)
    assert bool(tight.used_fallback) and int(tight.fallback_cg) > 0 and int(tight.fallback_runs) > 0
    assert float(tight.learned_residual) == pytest.approx(residual) and float(tight.residual) <= 1e-6
    # the fallback converges to the analysis of the same (learned-B) problem
    reference = CLASSICAL.solve(learned.solver.posed(problem))
    np.testing.assert_allclose(tight.x0, reference.x0, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(reference.x0))))
    split = Certified(learned, CLASSICAL, threshold=1e-6, split=RandomSplit(0.2)).solve(problem)
    assert np.isfinite(float(split.heldout_misfit)) and np.isnan(float(tight.heldout_misfit))
    with pytest.raises(InputError, match="threshold"):
        Certified(learned, CLASSICAL, threshold=0.0)


def test_certified_learned_solver_cycles_and_every_window_meets_the_certificate(problem):
    learned = TrainedSolver(UnrolledGaussNewton(1, 2, prior=_random_prior(jax.random.PRNGKey(5))))
    cycling = Cycling(window=2, shift=2, n_windows=3, solver=Certified(learned, CLASSICAL, threshold=1e-6))
    obs = problem.observations[0]
    result = eqx.filter_jit(lambda c: c.run(problem.model, problem.background, problem.covariance, obs))(cycling)
    d = result.diagnostics
    assert bool(jnp.all(d.converged)) and result.analyses.shape == (3,) + GRID.shape
    assert np.all(np.isfinite(np.asarray(result.analyses)))


def test_implicit_hypergradient_of_b_hyperparameters_matches_finite_differences_of_the_masking_loss(problem):
    key = jax.random.PRNGKey(11)

    def loss(log_var, log_len):
        prior = eqx.tree_at(lambda h: (h.log_variance_scale, h.log_length_scale), CovarianceHyperparameters(),
                            (log_var, log_len))  # fmt: skip
        solver = ConvergedGaussNewton(prior, CLASSICAL)
        analyse = lambda p: Implicit().analyse(solver, p)  # noqa: E731
        return window_loss(MaskedMisfit(), analyse, solver.posed(problem), key, RandomSplit(0.3))

    value_and_grad = eqx.filter_jit(jax.value_and_grad(loss, argnums=(0, 1)))
    point = (jnp.asarray(0.3), jnp.asarray(-0.2))
    _, grads = value_and_grad(*point)
    f = eqx.filter_jit(loss)
    h = 1e-4
    for i, g in enumerate(grads):
        plus = [p + h * (j == i) for j, p in enumerate(point)]
        minus = [p - h * (j == i) for j, p in enumerate(point)]
        fd = (float(f(*plus)) - float(f(*minus))) / (2 * h)
        assert abs(fd) > 1e-4  # the loss depends on both hyperparameters
        assert float(g) == pytest.approx(fd, rel=1e-4)


def test_bad_priors_are_refused():
    with pytest.raises(InputError, match="n_nodes"):
        SpectralGain(GRID.shape, 1)
    with pytest.raises(InputError, match="at least one gain"):
        LearnedPrior((), GRID.shape)
    with pytest.raises(InputError, match="mask"):
        LearnedPrior((VarianceGain(),), GRID.shape, np.ones((3, 3), bool))
    with pytest.raises(InputError, match="positive"):
        CovarianceHyperparameters(variance_scale=0.0)
    with pytest.raises(InputError, match="prior must be"):
        UnrolledGaussNewton(1, 2, prior=VarianceGain())
