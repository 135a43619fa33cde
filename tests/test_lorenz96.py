"""Lorenz-96: tendency, RK4 order, implicit-vs-RK4 agreement, bad input (tangent-linear, adjoint, Taylor and
forcing-gradient contracts of both steppers: tests/test_contracts.py over tests/registry.py)."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import pytest

from models.errors import (
    ConvergenceError,
    GridMismatchError,
    InputError,
    NonFiniteError,
)
from models.lorenz96 import RK4, ImplicitDiffrax, Lorenz96, lorenz96_tendency
from models.rollout import integrate, rollout

N = 40
DT = 0.01
N_STEPS = 5  # steps of the implicit windows compared with RK4
STEPPERS = {"rk4": RK4(), "implicit": ImplicitDiffrax()}


@pytest.fixture(scope="module")
def x0():
    return 8.0 + jax.random.normal(jax.random.PRNGKey(0), (N,))


def _forcing(kind):
    return jnp.asarray(8.0) if kind == "scalar" else 8.0 + 0.5 * jnp.sin(2 * jnp.pi * jnp.arange(N) / N)


@functools.cache
def window_map(name):
    """The jitted 5-step window map (state, forcing) → state of a stepper."""

    @jax.jit
    def f(inputs):
        x, forcing = inputs
        return integrate(Lorenz96(N, forcing, DT, STEPPERS[name]), x, N_STEPS)

    return f


def test_tendency_matches_the_definition():
    x = jnp.arange(6.0) ** 2
    expected = [(x[(i + 1) % 6] - x[(i - 2) % 6]) * x[(i - 1) % 6] - x[i] + 8.0 for i in range(6)]
    np.testing.assert_allclose(lorenz96_tendency(x, 8.0), expected, rtol=1e-15)


def test_implicit_and_rk4_trajectories_agree(x0):
    # 0.2 time units in four 0.05 windows. The implicit stepper (sub-step tolerance 1e-10) matches an
    # RK4 reference at dt/8 (own error ~1e-9) to solver accuracy, and RK4 at the same dt only to RK4's
    # O(dt^4) truncation error.
    forcing = _forcing("vector")
    states, x = [], x0
    for _ in range(4):
        x = window_map("implicit")((x, forcing))
        states.append(x)
    implicit = jnp.stack(states)
    fine = rollout(Lorenz96(N, forcing, DT / 8, RK4()), x0, 160)[40::40]
    coarse = rollout(Lorenz96(N, forcing, DT, RK4()), x0, 20)[5::5]
    assert float(jnp.max(jnp.abs(implicit - fine))) < 5e-8
    gap = float(jnp.max(jnp.abs(implicit - coarse)))
    assert 1e-7 < gap < 2e-4


def test_rk4_is_fourth_order(x0):
    horizon = 0.2
    reference = integrate(Lorenz96(N, 8.0, horizon / 640, RK4()), x0, 640)
    steps = [10, 20, 40]
    errors = [
        float(jnp.max(jnp.abs(integrate(Lorenz96(N, 8.0, horizon / n, RK4()), x0, n) - reference))) for n in steps
    ]
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    assert np.all((orders > 3.8) & (orders < 4.2)), (errors, orders)


def test_bad_inputs_raise(x0):
    with pytest.raises(InputError, match="at least N = 4"):
        Lorenz96(3)
    with pytest.raises(GridMismatchError, match=r"shape \(40,\)"):
        Lorenz96(N, jnp.ones(N - 1))
    with pytest.raises(NonFiniteError, match="forcing"):
        Lorenz96(N, jnp.full(N, jnp.nan))
    with pytest.raises(InputError, match="dt"):
        Lorenz96(N, 8.0, 0.0)
    model = Lorenz96(N, 8.0, DT)
    with pytest.raises(GridMismatchError, match=r"\(40,\)"):
        model.step(jnp.ones(N + 1))
    with pytest.raises(NonFiniteError, match="NaN"):
        model.step(x0.at[3].set(jnp.inf))
    # under jit the failed check poisons the state (no host callback); the result's check raises
    poisoned = jax.jit(lambda x: model.step(x))(x0.at[3].set(jnp.nan))
    assert bool(jnp.all(jnp.isnan(poisoned)))
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        model.check_result(poisoned)
    with pytest.raises(NonFiniteError, match="RK4 steps diverged"):  # a run that blows up says so, eagerly
        integrate(Lorenz96(N, 8.0, DT), x0.at[3].set(1e200), 5)


def test_implicit_failure_raises_convergence_error(x0):
    cheap = diffrax.ImplicitEuler(root_finder=optx.Chord(rtol=1e-10, atol=1e-10, linear_solver=lx.LU()))
    stuck = Lorenz96(N, 8.0, 1.0, ImplicitDiffrax(solver=cheap, max_steps=1))
    with pytest.raises(ConvergenceError, match="raise max_steps"):
        stuck.step(x0)
    with pytest.raises(InputError, match="implicit diffrax solver"):
        ImplicitDiffrax(solver=diffrax.Tsit5())
