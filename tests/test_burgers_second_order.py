"""Second-order derivatives of the implicit Burgers step: the implicit-function-theorem rule differentiated again."""

import jax
import jax.extend as jex
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import models  # noqa: F401  (float64)
from models import CartesianGrid, Periodic
from models.burgers import Burgers
from models.rollout import integrate

TIGHT = lx.GMRES(rtol=1e-13, atol=1e-13, restart=30, max_steps=200)


def _case(ndim):
    """A small Burgers model, a smooth non-trivial state, and random directions (tight solves: FD noise ≪ 1e-6)."""
    if ndim == 1:
        grid = CartesianGrid((16,), (1.0,), Periodic())
        x = np.arange(16) / 16
        u = jnp.asarray(0.6 * np.sin(2 * np.pi * x) + 0.2)
    else:
        grid = CartesianGrid((8, 8), (1.0, 1.0), Periodic())
        y, x = np.meshgrid(np.arange(8) / 8, np.arange(8) / 8, indexing="ij")
        u = jnp.asarray(np.stack([0.5 * np.sin(2 * np.pi * x) + 0.1, 0.4 * np.cos(2 * np.pi * (x + y))]))
    model = Burgers(grid, 0.05, 0.05, solver=TIGHT, rtol=1e-13, atol=1e-13)
    keys = jax.random.split(jax.random.PRNGKey(ndim), 3)
    delta, w, e = (jax.random.normal(k, u.shape) for k in keys)
    return model, u, delta, w, e


def _central(f, h=1e-4):
    """Central difference of a scalar function of a scalar at 0."""
    return (f(h) - f(-h)) / (2 * h)


def _rel(a, b):
    return float(jnp.linalg.norm(jnp.ravel(a - b)) / jnp.linalg.norm(jnp.ravel(b)))


@pytest.mark.parametrize("ndim", [1, 2])
def test_tangent_linear_derivative_wrt_linearisation_point(ndim):
    """∇_u ⟨w, M'(u) δ⟩ · e against central differences of the tangent-linear model."""
    model, u, delta, w, e = _case(ndim)
    tl = lambda x: jnp.vdot(w, jax.jvp(model.step, (x,), (delta,))[1])  # noqa: E731
    exact = jnp.vdot(jax.grad(tl)(u), e)
    fd = _central(lambda h: tl(u + h * e))
    assert abs(exact - fd) <= 1e-6 * abs(fd)


@pytest.mark.parametrize("ndim", [1, 2])
def test_adjoint_derivative_wrt_linearisation_point(ndim):
    """∇_u ⟨M'(u)ᵀ w, δ⟩ · e against central differences of the adjoint model."""
    model, u, delta, w, e = _case(ndim)
    adj = lambda x: jnp.vdot(jax.vjp(model.step, x)[1](w)[0], delta)  # noqa: E731
    exact = jnp.vdot(jax.grad(adj)(u), e)
    fd = _central(lambda h: adj(u + h * e))
    assert abs(exact - fd) <= 1e-6 * abs(fd)


@pytest.mark.parametrize("ndim", [1, 2])
def test_tangent_linear_derivative_wrt_viscosity(ndim):
    """d/dν ⟨w, M'(u; ν) δ⟩ and d/dν ⟨M'(u; ν)ᵀ w, δ⟩ against central differences in ν."""
    model, u, delta, w, _ = _case(ndim)

    def with_nu(nu):
        return Burgers(model.grid, nu, model.dt, solver=TIGHT, rtol=1e-13, atol=1e-13)

    tl = lambda nu: jnp.vdot(w, jax.jvp(with_nu(nu).step, (u,), (delta,))[1])  # noqa: E731
    adj = lambda nu: jnp.vdot(jax.vjp(with_nu(nu).step, u)[1](w)[0], delta)  # noqa: E731
    nu0 = jnp.asarray(0.05)
    for f in (tl, adj):
        exact = jax.grad(f)(nu0)
        fd = _central(lambda h: f(nu0 + h), h=1e-5)
        assert abs(exact - fd) <= 1e-6 * abs(fd)


@pytest.mark.parametrize("ndim", [1, 2])
def test_rollout_hessian_vector_product(ndim):
    """Hessian-vector product of a scalar of a 3-step (scanned) rollout against differences of its gradient.

    Reverse-over-reverse through the rollout's lax.scan is the composition that used to differentiate the
    Newton while loop (optimistix's custom_jvp was inlined by partial evaluation of the scan).
    """
    model, u, _, w, e = _case(ndim)
    cost = lambda x: jnp.sum(w * integrate(model, x, 3)) + 0.5 * jnp.sum(integrate(model, x, 3) ** 2)  # noqa: E731
    grad = jax.grad(cost)
    hvp = jax.grad(lambda x: jnp.vdot(grad(x), e))(u)  # reverse over reverse
    hvp_fwd = jax.jvp(grad, (u,), (e,))[1]  # forward over reverse
    h = 1e-4
    fd = (grad(u + h * e) - grad(u - h * e)) / (2 * h)
    assert _rel(hvp, fd) <= 1e-6
    assert _rel(hvp_fwd, fd) <= 1e-6


def _while_loops(jaxpr) -> int:
    """Number of while loops anywhere in a jaxpr, sub-jaxprs of every primitive included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "while"
        for param in eqn.params.values():
            for p in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(p, jex.core.ClosedJaxpr):
                    count += _while_loops(p.jaxpr)
                elif isinstance(p, jex.core.Jaxpr):
                    count += _while_loops(p)
    return count


def test_no_iteration_is_differentiated():
    """The second-order derivative of a rollout holds no while loop: Newton and Krylov iterations stay inside
    primitives (the Newton root, lineax's linear_solve) whose derivatives are implicit-function rules."""
    model, u, _, w, e = _case(1)
    cost = lambda x: jnp.sum(w * integrate(model, x, 2) ** 2)  # noqa: E731
    hvp = lambda x: jax.grad(lambda y: jnp.vdot(jax.grad(cost)(y), e))(x)  # noqa: E731
    assert _while_loops(jax.make_jaxpr(hvp)(u).jaxpr) == 0
    assert _while_loops(jax.make_jaxpr(jax.grad(cost))(u).jaxpr) == 0


def test_bicgstab_zero_tangent_and_second_order():
    """BiCGStab as the Krylov solver: a zero tangent gives a zero response (no NaN from a zero right-hand side),
    and the tangent-linear model's derivative w.r.t. the linearisation point still matches differences."""
    model, u, delta, w, e = _case(2)
    model = Burgers(model.grid, 0.05, 0.05, solver=lx.BiCGStab(rtol=1e-13, atol=1e-13, max_steps=400),
                    rtol=1e-13, atol=1e-13)  # fmt: skip
    _, zero = jax.jvp(model.step, (u,), (jnp.zeros_like(u),))
    assert jnp.all(zero == 0)
    tl = lambda x: jnp.vdot(w, jax.jvp(model.step, (x,), (delta,))[1])  # noqa: E731
    exact = jnp.vdot(jax.grad(tl)(u), e)
    fd = _central(lambda h: tl(u + h * e))
    assert abs(exact - fd) <= 1e-6 * abs(fd)
