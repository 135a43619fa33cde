"""Hypergradients of the masking loss with respect to outer parameters φ (B variance, a physical model parameter,
the observation-error scale):
implicit and unrolled agree with each other and with central finite differences on converged solves (Lorenz-96 with
the exact Hessian; a linear model with the Gauss-Newton Hessian, where one-step differentiation of a GN layer is the
implicit gradient too); truncation keeps the value and cuts the gradient path."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from l96_window import RING, N, window, with_parameters

from assim.covariances.covariance import DiagonalCovariance
from assim.errors import InputError
from assim.learned.hypergradients import (
    ExactHessian,
    Implicit,
    OneStep,
    Truncated,
    Unrolled,
)
from assim.learned.losses import MaskedMisfit, RandomSplit, window_loss
from assim.learned.unrolled import UnrolledGaussNewton
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation
from assim.problems.cost import StrongConstraint4DVar
from models.base import AbstractModel

KEY = jax.random.PRNGKey(5)
SPLIT = RandomSplit(0.3)


def masked(build, solver):
    """φ ↦ masking loss of the window built from φ, analysed with a given hypergradient strategy."""

    @eqx.filter_jit
    def loss(phi, strategy):
        return window_loss(MaskedMisfit(), lambda p: strategy.analyse(solver, p), build(phi), KEY, SPLIT)

    return loss


def central_differences(f, phi, h):
    """Central differences of the loss value; f returns (value, gradient) so no second compile is needed."""
    out = []
    for i in range(len(phi)):
        up = tuple(p + h * (j == i) for j, p in enumerate(phi))
        down = tuple(p - h * (j == i) for j, p in enumerate(phi))
        out.append((float(f(up)[0]) - float(f(down)[0])) / (2 * h))
    return np.array(out)


L96_PROBLEM = window()[0]
L96_SOLVER = UnrolledGaussNewton(6, 2 * N, cg_tol=1e-13)  # 6 layers reach ‖∇J‖ ~ 1e-11 ‖∇J(0)‖ on this window
L96_LOSS = masked(lambda phi: with_parameters(L96_PROBLEM, *phi), L96_SOLVER)
L96_PHI = (jnp.asarray(0.5), jnp.asarray(8.0), jnp.asarray(1.2))  # B variance, Lorenz-96 forcing, σ_obs factor


def test_implicit_and_unrolled_hypergradients_agree_with_finite_differences_on_lorenz96():
    grad = eqx.filter_jit(jax.value_and_grad(L96_LOSS))
    unrolled = np.array(grad(L96_PHI, Unrolled())[1])
    implicit = np.array(grad(L96_PHI, Implicit(ExactHessian()))[1])
    np.testing.assert_allclose(implicit, unrolled, rtol=1e-5)
    fd = central_differences(lambda phi: grad(phi, Unrolled()), L96_PHI, 1e-5)
    np.testing.assert_allclose(unrolled, fd, rtol=1e-5)
    np.testing.assert_allclose(implicit, fd, rtol=1e-5)
    assert np.all(np.abs(fd) > 1e-3)  # both parameters matter: a non-trivial check


class LinearRing(AbstractModel):
    """Test-only linear model: explicit diffusion step x + Δt κ (x_{i+1} − 2x_i + x_{i−1}) on a ring."""

    kappa: jax.Array
    dt: float = eqx.field(static=True)

    def step(self, x, t=0.0):
        return x + self.dt * self.kappa * (jnp.roll(x, 1) - 2 * x + jnp.roll(x, -1))

    def state_shape(self):
        return jax.ShapeDtypeStruct((N,), jnp.float64)


def linear_problem(phi):
    variance, kappa = phi
    rng = np.random.default_rng(0)
    values = rng.standard_normal((3, N // 2))
    obs = ObservationSet(GriddedObservation(RING, np.arange(0, N, 2)), (1, 3, 5), values, 0.3)
    background = jnp.asarray(rng.standard_normal(N))
    return StrongConstraint4DVar(LinearRing(kappa=kappa, dt=0.2), background, DiagonalCovariance(RING, variance), obs)


LINEAR_SOLVER = UnrolledGaussNewton(2, 2 * N, cg_tol=1e-13)  # one exact GN step solves a linear problem
LINEAR_LOSS = masked(linear_problem, LINEAR_SOLVER)
LINEAR_PHI = (jnp.asarray(0.7), jnp.asarray(0.8))  # B variance, diffusivity


def test_gauss_newton_implicit_unrolled_and_one_step_agree_on_a_linear_model():
    grad = eqx.filter_jit(jax.value_and_grad(LINEAR_LOSS))
    strategies = (Unrolled(), Implicit(), OneStep())
    values, grads = zip(*[grad(LINEAR_PHI, s) for s in strategies])
    for v in values[1:]:
        np.testing.assert_allclose(v, values[0], rtol=1e-13)  # every strategy returns the same analysis
    unrolled = np.array(grads[0])
    for g in grads[1:]:  # Newton step at the solution: one-step = implicit (Gauss-Newton Hessian exact here)
        np.testing.assert_allclose(np.array(g), unrolled, rtol=1e-8)
    fd = central_differences(lambda phi: grad(phi, Unrolled()), LINEAR_PHI, 1e-5)
    np.testing.assert_allclose(unrolled, fd, rtol=1e-6)
    assert np.all(np.abs(fd) > 1e-3)


def test_truncation_cuts_the_gradient_path_of_an_unconverged_solver():
    # one layer with a tiny step leaves the solver far from convergence: the truncated gradient differs
    solver = UnrolledGaussNewton(2, 2 * N, step=[0.3, 0.3], cg_tol=1e-13)

    @eqx.filter_jit
    def grad(solver, strategy):
        return eqx.filter_grad(lambda s: jnp.sum(strategy.analyse(s, linear_problem(LINEAR_PHI)) ** 2))(solver)

    full, last = grad(solver, Unrolled()), grad(solver, Truncated(1))
    assert float(last.raw_step[0]) == 0.0 and float(full.raw_step[0]) != 0.0  # layer 0 is cut off
    assert float(last.raw_step[1]) != float(full.raw_step[1])  # its input is held fixed
    # implicit differentiation: the analysis at a stationary point does not depend on the solver's parameters
    implicit = grad(solver, Implicit())
    np.testing.assert_array_equal(implicit.raw_step, np.zeros(2))
    np.testing.assert_array_equal(implicit.raw_damping, np.zeros(2))
    with pytest.raises(InputError, match="1 ≤ k ≤ n_layers"):
        Truncated(3).analyse(solver, linear_problem(LINEAR_PHI))
