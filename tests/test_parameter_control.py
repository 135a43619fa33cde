"""Joint state–parameter 4D-Var: prior transforms, Taylor test of the joint cost, the matrix-free posterior against
the dense Gauss-Newton Hessian, recovery of a diffusivity in a twin experiment with a posterior that shrinks with
better observations, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from assim.covariances.covariance import SpectralGaussianCovariance
from assim.errors import InputError
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation
from assim.problems.parameter_control import (
    GaussianPrior,
    JointControl,
    LogNormalPrior,
    ParameterControl4DVar,
    parameter_posterior,
)
from assim.solvers.gauss_newton import GaussNewton, LevenbergMarquardt
from assim.solvers.inner_model import InnerModel
from models import CartesianGrid, Periodic
from models.diffusion import Diffusion
from models.lorenz96 import Lorenz96
from models.rollout import rollout
from models.verification import taylor_orders

GRID = CartesianGrid((16,), (1.0,), Periodic())
TIGHT = lx.CG(rtol=1e-13, atol=1e-13, max_steps=100)
KAPPA_TRUE = 0.02
MODEL = Diffusion(GRID, 0.01, 0.05, solver=TIGHT)  # its κ is the unknown
X = GRID.coords()["x"]
X0 = jnp.asarray(np.sin(2 * np.pi * X) + 0.5 * np.cos(6 * np.pi * X))
N_STEPS = 10
TRUTH = rollout(eqx.tree_at(lambda m: m.kappa, MODEL, jnp.asarray(KAPPA_TRUE)), X0, N_STEPS)
B = SpectralGaussianCovariance(GRID, 0.1, 0.1)
BACKGROUND = X0 + B.sqrt(jax.random.normal(jax.random.PRNGKey(3), GRID.shape))
WHERE = lambda m: m.kappa  # noqa: E731  (one selector for every problem: jit caches on it)
PRIOR = LogNormalPrior(0.01, 1.0)  # κ_true = 2 × the prior median: p_true = ln 2
GN = GaussNewton(damping=LevenbergMarquardt(), max_outer=20, cg_max_steps=60, cg_tol=1e-12, gtol=1e-8)
EPSILONS = 0.1 * 2.0 ** -np.arange(0, 14, 1.5)


STEPS = (2, 4, 6, 8, 10)
OPERATOR = GriddedObservation(GRID, np.arange(16))
CLEAN = jnp.stack([OPERATOR.apply(TRUTH[s]) for s in STEPS])
NOISE = jax.random.normal(jax.random.PRNGKey(5), CLEAN.shape)


def twin_problem(sigma, every=2, steps=STEPS):
    """Noisy observations of every `every`-th cell of the truth at `steps` (one structure for all: masks select)."""
    mask = (np.arange(16)[None, :] % every == 0) & np.isin(STEPS, steps)[:, None]
    obs = ObservationSet(OPERATOR, STEPS, CLEAN + sigma * NOISE, jnp.full(CLEAN.shape, sigma), mask)
    return ParameterControl4DVar(MODEL, WHERE, PRIOR, BACKGROUND, B, obs, n_steps=N_STEPS)


@pytest.fixture(scope="module")
def solve():
    @eqx.filter_jit
    def run(problem):
        result = GN.solve(problem)
        return result, parameter_posterior(problem, result.v)

    return run


def test_prior_transforms():
    gaussian = GaussianPrior(jnp.array([1.0, 2.0]), 0.5)
    np.testing.assert_allclose(gaussian.parameter(jnp.array([2.0, -1.0])), [2.0, 1.5])
    np.testing.assert_allclose(gaussian.control(gaussian.parameter(jnp.array([0.3, 0.7]))), [0.3, 0.7], rtol=1e-14)
    np.testing.assert_allclose(PRIOR.parameter(jnp.log(2.0)), 0.02, rtol=1e-14)
    np.testing.assert_allclose(PRIOR.control(PRIOR.parameter(-1.3)), -1.3, rtol=1e-14)
    assert float(PRIOR.parameter(-40.0)) > 0  # a log-normal parameter stays positive
    problem = twin_problem(0.05)
    control = problem.control_from(KAPPA_TRUE)
    np.testing.assert_allclose(problem.parameters(control)[0], KAPPA_TRUE, rtol=1e-14)
    np.testing.assert_allclose(problem.model_at(control).kappa, KAPPA_TRUE, rtol=1e-14)
    assert problem.n_parameters == 1


def test_joint_cost_taylor_test():
    """J(v, p) along a joint direction (state and log-diffusivity): remainder O(ε²) with the adjoint gradient."""
    problem = twin_problem(0.05)
    c = JointControl(0.3 * jax.random.normal(jax.random.PRNGKey(1), GRID.shape), (jnp.asarray(0.4),))
    dc = JointControl(jax.random.normal(jax.random.PRNGKey(2), GRID.shape), (jnp.asarray(1.0),))
    cost = eqx.filter_jit(lambda p, x: p.cost(x))
    j0, grad = eqx.filter_jit(lambda p, x: jax.value_and_grad(p.cost)(x))(problem, c)
    slope = float(jnp.vdot(grad.v, dc.v) + grad.p[0] * dc.p[0])
    remainders = []
    for e in EPSILONS:
        shifted = jax.tree_util.tree_map(lambda a, d: a + e * d, c, dc)
        remainders.append(abs(float(cost(problem, shifted) - j0) - e * slope))
    np.testing.assert_allclose(taylor_orders(np.array(remainders), EPSILONS), 2.0, atol=0.2)
    # the parameter part of the gradient against a central difference in p alone
    h = 1e-5
    dp = lambda s: JointControl(c.v, (c.p[0] + s,))  # noqa: E731
    fd = (float(cost(problem, dp(h))) - float(cost(problem, dp(-h)))) / (2 * h)
    np.testing.assert_allclose(float(grad.p[0]), fd, rtol=1e-7)


def test_posterior_matches_the_dense_gauss_newton_hessian(solve):
    """CG solves H z = e_p in the full control space give the parameter block of H⁻¹ (dense check, 17 controls)."""
    problem = twin_problem(0.03)
    result, post = solve(problem)
    assert bool(result.converged), result.message()

    def flat_residual(z):
        r = problem.residual(JointControl(z[:16], (z[16],)))
        return jnp.concatenate([x.reshape(-1) for x in jax.tree_util.tree_leaves(r)])

    z = jnp.concatenate([result.v.v, result.v.p[0][None]])
    jac = np.asarray(jax.jit(jax.jacfwd(flat_residual))(z))  # tiny problem, test only
    inverse = np.linalg.inv(jac.T @ jac)
    np.testing.assert_allclose(float(post.control_covariance[0, 0]), inverse[16, 16], rtol=1e-8)
    kappa = float(post.value[0])
    np.testing.assert_allclose(float(post.std[0]), kappa * 1.0 * np.sqrt(inverse[16, 16]), rtol=1e-8)  # delta method
    assert inverse[16, 16] < 1.0  # the data are informative: the posterior is tighter than the N(0, 1) prior on p
    assert 0 < int(post.cg_iterations[0]) <= 17


def test_diffusivity_recovered_and_posterior_shrinks_with_better_observations(solve):
    estimates = {}
    for label, kwargs in {
        "sparse, noisy": dict(sigma=0.1, every=4, steps=(5, 10)),
        "noisy": dict(sigma=0.1),
        "less noisy": dict(sigma=0.03),
        "dense, precise": dict(sigma=0.01, every=1, steps=(2, 4, 6, 8, 10)),
    }.items():
        result, post = solve(twin_problem(**kwargs))
        assert bool(result.converged), (label, result.message())
        estimates[label] = (float(post.value[0]), float(post.std[0]))
        # in the control (log κ) space, where the Gauss-Newton posterior is Gaussian
        p_true = float(PRIOR.control(KAPPA_TRUE))
        assert abs(float(result.v.p[0]) - p_true) <= 3.0 * float(jnp.sqrt(post.control_covariance[0, 0])), label
    for label, (kappa, std) in estimates.items():
        assert abs(kappa - KAPPA_TRUE) <= 3.0 * std, (label, kappa, std)
    stds = [std for _, std in estimates.values()]
    assert all(b < 0.8 * a for a, b in zip(stds, stds[1:])), stds  # more / less noisy observations: tighter
    assert stds[-1] < 0.1 * KAPPA_TRUE and stds[0] > stds[-1] * 5


def test_inner_model_reaches_the_same_joint_analysis():
    """Joint state–parameter control with a looser inner-loop model: the same analysis and the same κ estimate."""
    problem = twin_problem(sigma=0.03)
    loose = Diffusion(GRID, 0.01, 0.05, solver=lx.CG(rtol=1e-4, atol=1e-4, max_steps=100))
    exact = GN.solve(problem)
    inner = eqx.tree_at(lambda s: s.inner_model, GN, InnerModel(loose)).solve(problem)
    assert bool(inner.converged), inner.message()
    np.testing.assert_allclose(inner.v.p[0], exact.v.p[0], rtol=1e-6)
    np.testing.assert_allclose(inner.v.v, exact.v.v, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(exact.v.v))))
    n, m = int(inner.diagnostics.n_outer), int(exact.diagnostics.n_outer)
    assert int(inner.diagnostics.forward_evaluations[n]) > int(exact.diagnostics.forward_evaluations[m])  # its runs
    no_kappa = Lorenz96(16, 8.0, 0.05)  # same state and dt, but no diffusivity to control
    with pytest.raises(InputError, match="parameter fields"):
        eqx.tree_at(lambda s: s.inner_model, GN, InnerModel(no_kappa)).solve(problem)


def test_bad_input_raises():
    obs = twin_problem(0.05).observations
    with pytest.raises(InputError, match="one prior per field"):
        ParameterControl4DVar(MODEL, WHERE, (PRIOR, PRIOR), BACKGROUND, B, obs)
    with pytest.raises(InputError, match="not an array"):
        ParameterControl4DVar(MODEL, lambda m: m.dt, PRIOR, BACKGROUND, B, obs)
    with pytest.raises(InputError, match="does not select a field"):
        ParameterControl4DVar(MODEL, lambda m: m.wind_scale, PRIOR, BACKGROUND, B, obs)
    with pytest.raises(InputError, match="has shape \\(\\) but its prior has shape \\(16,\\)"):
        ParameterControl4DVar(MODEL, WHERE, LogNormalPrior(0.01 * jnp.ones(16), 1.0), BACKGROUND, B, obs)
    with pytest.raises(InputError, match="positive"):
        LogNormalPrior(-0.01, 1.0)
    with pytest.raises(InputError, match="prior std"):
        GaussianPrior(0.0, 0.0)
    wide = CartesianGrid((72,), (1.0,), Periodic())
    field_model = Diffusion(wide, 0.01 * jnp.ones(72), 0.05)
    field_obs = ObservationSet(GriddedObservation(wide, [0, 5]), (1,), [[0.0, 0.0]], 0.1)
    field_problem = ParameterControl4DVar(
        field_model, WHERE, LogNormalPrior(0.01 * jnp.ones(72), 1.0), jnp.zeros(72),
        SpectralGaussianCovariance(wide, 0.1, 0.1), field_obs,
    )  # fmt: skip
    with pytest.raises(InputError, match="meant for a few scalars"):
        parameter_posterior(field_problem, field_problem.zero_control())
