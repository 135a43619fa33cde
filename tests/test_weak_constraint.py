"""Weak-constraint 4D-Var: forced-trajectory recursion, cost Taylor test, the Q → 0 limit (strong constraint), a
model-error twin where it beats the strong constraint, bad input (the residual map's Taylor and adjoint tests run
over tests/registry.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from assim.covariances.covariance import DiagonalCovariance, SpectralGaussianCovariance
from assim.covariances.scaled import ScaledCovariance
from assim.errors import InputError, ObservationError
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.weak_constraint import (
    EveryStep,
    SubWindows,
    WeakConstraint4DVar,
    WeakControl,
)
from assim.solvers.gauss_newton import GaussNewton, LevenbergMarquardt
from models import CartesianGrid, Periodic
from models.lorenz96 import Lorenz96
from models.rollout import integrate, rollout
from models.verification import taylor_orders

N = 12
STEPS = (0, 2, 4, 6)
RING = CartesianGrid((N,), (float(N),), Periodic())  # Lorenz-96's ring of variables, for B and Q
MODEL = Lorenz96(N, 8.0, 0.05)
H = GriddedObservation(RING, np.arange(0, N, 2))
B = SpectralGaussianCovariance(RING, 0.5, 1.0)
Q0 = DiagonalCovariance(RING, 1.0)
EPSILONS = 0.1 * 2.0 ** -np.arange(0, 14, 1.5)
GN = GaussNewton(damping=LevenbergMarquardt(), max_outer=25, cg_max_steps=120, cg_tol=1e-13, gtol=1e-10)
COST = eqx.filter_jit(lambda problem, c: problem.cost(c))
GRAD = eqx.filter_jit(lambda problem, c: jax.grad(problem.cost)(c))

X0 = integrate(MODEL, 8.0 + jax.random.normal(jax.random.PRNGKey(0), (N,)), 200)  # on the attractor
TRUTH = rollout(MODEL, X0, max(STEPS))
VALUES = jnp.stack([H.apply(TRUTH[s]) for s in STEPS]) + 0.5 * jax.random.normal(jax.random.PRNGKey(1), (4, N // 2))
OBS = ObservationSet(H, STEPS, VALUES, 0.5)
BACKGROUND = X0 + B.sqrt(jax.random.normal(jax.random.PRNGKey(2), (N,)))


def weak(scale, timing=SubWindows(2), obs=OBS, model=MODEL):
    return WeakConstraint4DVar(model, BACKGROUND, B, ScaledCovariance(Q0, scale), obs, timing=timing)


def random_control(problem, seed, scale=0.3):
    zero = problem.zero_control()
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return WeakControl(scale * jax.random.normal(k1, zero.v.shape), scale * jax.random.normal(k2, zero.w.shape))


@pytest.fixture(scope="module")
def solve():
    return eqx.filter_jit(lambda problem: GN.solve(problem))


@pytest.fixture(scope="module")
def strong_analysis(solve):
    result = solve(StrongConstraint4DVar(MODEL, BACKGROUND, B, OBS))
    assert bool(result.converged), result.message()
    return result


def test_forced_trajectory_follows_the_recursion():
    problem = weak(0.3, SubWindows(4))
    assert problem.n_model_errors == 2 and problem.zero_control().w.shape == (2, N)
    assert weak(0.3, EveryStep()).n_model_errors == 6
    control = random_control(problem, 3)
    zero = eqx.tree_at(lambda c: c.w, control, jnp.zeros_like(control.w))

    @eqx.filter_jit
    def evaluate(problem, control, zero):
        traj = problem.trajectory(control)
        stepped = jax.vmap(MODEL.step)(traj[:-1])
        return traj, problem.model_errors(control), stepped, problem.trajectory(zero), problem.cost_terms(control)

    traj, eta, stepped, unforced, (jb, jq, jo) = evaluate(problem, control, zero)
    np.testing.assert_allclose(traj[0], BACKGROUND + B.sqrt(control.v), rtol=1e-13)
    np.testing.assert_allclose(eta, np.sqrt(0.3) * control.w, rtol=1e-13)  # Q^{1/2} = √0.3 I
    segment = np.arange(6) // 4
    np.testing.assert_allclose(traj[1:], stepped + eta[segment], rtol=1e-12, atol=1e-12)
    # zero model-error control: the strong-constraint trajectory
    np.testing.assert_allclose(unforced, rollout(MODEL, traj[0], 6), rtol=1e-12)
    np.testing.assert_allclose(jb + jq + jo, COST(problem, control), rtol=1e-13)
    np.testing.assert_allclose(jq, 0.5 * float(jnp.sum(control.w**2)), rtol=1e-13)


def test_cost_and_gradient_taylor_test():
    """|J(c+εδ) − J(c) − ε⟨∇J(c), δ⟩| falls as ε² along a joint (v, w) direction, ∇J from the adjoint."""
    problem = weak(0.1)
    c, dc = random_control(problem, 4), random_control(problem, 5, scale=1.0)
    j0 = COST(problem, c)
    slope = float(jax.tree_util.tree_reduce(jnp.add, jax.tree_util.tree_map(jnp.vdot, GRAD(problem, c), dc)))
    remainders = []
    for e in EPSILONS:
        shifted = jax.tree_util.tree_map(lambda a, d: a + e * d, c, dc)
        remainders.append(abs(float(COST(problem, shifted) - j0) - e * slope))
    np.testing.assert_allclose(taylor_orders(np.array(remainders), EPSILONS), 2.0, atol=0.2)


def test_small_model_error_tends_to_the_strong_constraint(solve, strong_analysis):
    """‖x_a(weak, Q = sQ₀) − x_a(strong)‖ falls monotonically (~ s) as s → 0, and vanishes at s = 0."""
    gaps = []
    for s in (1e-2, 1e-4, 1e-6, 0.0):
        result = solve(weak(jnp.asarray(s)))
        assert bool(result.converged), result.message()
        gaps.append(float(jnp.linalg.norm(result.x0 - strong_analysis.x0)))
    gaps = np.array(gaps)
    assert gaps[0] > 1e-3  # the model-error term matters at s = 1e-2
    assert np.all(gaps[1:3] < 0.03 * gaps[:2])  # ~100× smaller per 100× smaller Q, monotone
    assert gaps[3] <= 1e-10 * float(jnp.linalg.norm(strong_analysis.x0))


def test_model_error_twin_weak_beats_strong(solve):
    """Observations of a truth with forcing F = 8 assimilated by a model with F = 10: the weak constraint absorbs
    the model error and tracks the truth over the window better than the strong constraint."""
    biased = Lorenz96(N, 10.0, 0.05)
    values = jnp.stack([H.apply(TRUTH[s]) for s in STEPS]) + 0.1 * jax.random.normal(jax.random.PRNGKey(9), (4, N // 2))
    obs = ObservationSet(H, STEPS, values, 0.1)
    strong_problem = StrongConstraint4DVar(biased, BACKGROUND, B, obs)
    weak_problem = weak(jnp.asarray(0.03), SubWindows(2), obs, biased)
    strong, weak_result = solve(strong_problem), solve(weak_problem)  # compiled once, in the other tests
    assert bool(strong.converged) and bool(weak_result.converged), weak_result.message()
    rmse = lambda traj: float(jnp.sqrt(jnp.mean((traj - TRUTH) ** 2)))  # noqa: E731
    error_strong = rmse(strong_problem.trajectory(strong.v))
    error_weak = rmse(weak_problem.trajectory(weak_result.v))
    assert error_weak < 0.8 * error_strong
    assert float(jnp.linalg.norm(weak_problem.model_errors(weak_result.v))) > 0.0


def test_bad_input_raises():
    with pytest.raises(InputError, match="at least 1 step"):
        SubWindows(0)
    with pytest.raises(InputError, match="EveryStep"):
        WeakConstraint4DVar(MODEL, BACKGROUND, B, Q0, OBS, timing="per-step")
    with pytest.raises(InputError, match="covariance strategy"):
        WeakConstraint4DVar(MODEL, BACKGROUND, B, 0.1, OBS)
    with pytest.raises(InputError, match="at least one model step"):
        WeakConstraint4DVar(MODEL, BACKGROUND, B, Q0, ObservationSet(H, (0,), VALUES[:1], 0.5))
    with pytest.raises(ObservationError, match="after the end of the 3-step window"):
        WeakConstraint4DVar(MODEL, BACKGROUND, B, Q0, OBS, n_steps=3)
    with pytest.raises(InputError, match="must be ≥ 0"):
        ScaledCovariance(Q0, -1.0)
