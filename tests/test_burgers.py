"""Burgers: Cole–Hopf accuracy, matrix-free Newton, bad input."""

import re

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from models.burgers import Burgers
from models.errors import (
    ConvergenceError,
    GridMismatchError,
    InputError,
    NonFiniteError,
)
from models.grid import CartesianGrid, Dirichlet, LatLonGrid
from models.rollout import integrate
from models.time_schemes import BackwardEuler, CrankNicolson

NU = 0.1
TWO_PI = 2 * np.pi
TIGHT = dict(solver=lx.GMRES(rtol=1e-13, atol=1e-13, restart=20, max_steps=50), rtol=1e-12, atol=1e-12)


def cole_hopf_1d(x, t, a0=1.0, a1=0.5, k=1.0):
    """Exact velocity u = −2ν φ_x/φ, φ = a0 + a1 e^{−νk²t} cos(kx)."""
    e = a1 * np.exp(-NU * k**2 * t)
    return 2 * NU * e * k * np.sin(k * x) / (a0 + e * np.cos(k * x))


def cole_hopf_2d(grid, t, a0=1.0, a1=0.4, a2=0.3, k=1.0, l=1.0):  # noqa: E741 (wavenumbers k, l)
    """Exact velocity −2ν∇φ/φ, φ = a0 + a1 e^{−νk²t} cos(kx) + a2 e^{−νl²t} cos(ly), as [v (along y), u (along x)]."""
    c = grid.coords()
    y, x = np.meshgrid(c["y"], c["x"], indexing="ij")
    e1, e2 = a1 * np.exp(-NU * k**2 * t), a2 * np.exp(-NU * l**2 * t)
    phi = a0 + e1 * np.cos(k * x) + e2 * np.cos(l * y)
    return np.stack([2 * NU * e2 * l * np.sin(l * y), 2 * NU * e1 * k * np.sin(k * x)]) / phi


# Grids of the Newton and bad-input tests (tangent-linear, adjoint, Taylor and ν-gradient contracts of the 1-D and
# 2-D models: tests/test_contracts.py over tests/registry.py).
GRIDS = {
    "1d": CartesianGrid((32,), (np.pi,), boundaries=Dirichlet(0.0)),
    "2d": CartesianGrid((16, 16), (TWO_PI, TWO_PI)),
}


def _largest_buffer(lowered_text):
    sizes = [
        int(np.prod([int(s) for s in m.group(1).split("x")]))
        for m in re.finditer(r"tensor<([0-9x]+)x(?:f64|i64|i32|i1)>", lowered_text)
    ]
    return max(sizes)


def test_newton_jacobian_is_never_materialised():
    # Every buffer in the compiled step, its tangent and its adjoint is at most the GMRES Krylov
    # basis (restart + 1 states), far below the dense Jacobian (size²). A dense LU would show up.
    grid = GRIDS["2d"]
    model = Burgers(grid, NU, 0.5)
    u = jnp.asarray(cole_hopf_2d(grid, 0.0))
    size = u.size
    programs = {
        "step": lambda v: model.step(v),
        "tangent": lambda v: jax.jvp(model.step, (v,), (v,))[1],
        "adjoint": lambda v: jax.vjp(model.step, v)[1](v)[0],
    }
    for name, program in programs.items():
        largest = _largest_buffer(jax.jit(program).lower(u).as_text())
        assert largest <= (model.solver.restart + 1) * size, (name, largest)
    jacobian = lx.JacobianLinearOperator(lambda v, _: model.tendency(v), u)
    dense = _largest_buffer(jax.jit(lambda v: lx.linear_solve(jacobian, v, lx.LU()).value).lower(u).as_text())
    assert dense >= size**2


def march(model, u, n_steps):
    """n eager steps: the compiled Newton solve depends on grid and ν, not on dt or the θ-scheme, so it is reused."""
    for _ in range(n_steps):
        u = model.step(u)
    return u


def _orders(errors, refinement=2.0):
    return np.log(np.asarray(errors[:-1]) / np.asarray(errors[1:])) / np.log(refinement)


def test_cole_hopf_1d_first_order_in_time():
    # Periodic, 256 cells (spatial error ~2e-6 ≪ time error ~2e-4): backward-Euler error halves with dt.
    grid = CartesianGrid((256,), (TWO_PI,))
    x = grid.coords()["x"]
    u0 = jnp.asarray(cole_hopf_1d(x, 0.0))
    errors = []
    for dt in (0.4, 0.2, 0.1):
        u = march(Burgers(grid, NU, dt, BackwardEuler()), u0, round(1.6 / dt))
        errors.append(float(jnp.max(jnp.abs(u - cole_hopf_1d(x, 1.6)))))
        # centred advection + diffusion conserve Σu on a periodic grid, up to the solver tolerance
        assert abs(float(jnp.mean(u) - jnp.mean(u0))) < 1e-9 * float(jnp.max(jnp.abs(u0)))
    orders = _orders(errors)
    assert np.all((orders > 0.9) & (orders < 1.1)), (errors, orders)


def test_cole_hopf_1d_second_order_in_space_with_walls():
    # On [0, π] the Cole–Hopf flow vanishes at both ends: Dirichlet(0) walls. Crank–Nicolson, dt = 0.1.
    errors = []
    for n in (16, 32, 64):
        grid = CartesianGrid((n,), (np.pi,), boundaries=Dirichlet(0.0))
        x = grid.coords()["x"]
        u = march(Burgers(grid, NU, 0.1, CrankNicolson(), **TIGHT), jnp.asarray(cole_hopf_1d(x, 0.0)), 16)
        errors.append(float(jnp.max(jnp.abs(u - cole_hopf_1d(x, 1.6)))))
    orders = _orders(errors)
    assert np.all((orders > 1.8) & (orders < 2.2)), (errors, orders)


def test_cole_hopf_2d_orders_of_accuracy():
    # Periodic square, different amplitudes along x and y (a swapped component or axis would show).
    # Space: Crank–Nicolson (dt = 0.1) against the exact flow on 16² and 32².
    errors = []
    for n in (16, 32):
        grid = CartesianGrid((n, n), (TWO_PI, TWO_PI))
        nu = jnp.full(grid.shape, NU)  # a (uniform) field, as in the 2-D window: shares its compiled solve
        u = march(Burgers(grid, nu, 0.1, CrankNicolson(), **TIGHT), jnp.asarray(cole_hopf_2d(grid, 0.0)), 16)
        errors.append(float(jnp.max(jnp.abs(u - cole_hopf_2d(grid, 1.6)))))
    assert 1.8 < _orders(errors)[0] < 2.2, errors
    # Time: backward Euler on 16² against the semi-discrete flow (Crank–Nicolson at dt = 0.025),
    # which isolates the time error from the spatial one.
    grid = CartesianGrid((16, 16), (TWO_PI, TWO_PI))
    u0, nu = jnp.asarray(cole_hopf_2d(grid, 0.0)), jnp.full(grid.shape, NU)
    reference = march(Burgers(grid, nu, 0.025, CrankNicolson(), **TIGHT), u0, 64)
    errors = [
        float(jnp.max(jnp.abs(march(Burgers(grid, nu, dt, **TIGHT), u0, round(1.6 / dt)) - reference)))
        for dt in (0.4, 0.2, 0.1)
    ]
    orders = _orders(errors)
    assert np.all((orders > 0.9) & (orders < 1.1)), (errors, orders)


def test_bad_inputs_raise():
    grid = GRIDS["1d"]
    with pytest.raises(InputError, match="positive"):
        Burgers(grid, 0.0, 0.1)
    with pytest.raises(InputError, match="positive"):
        Burgers(grid, jnp.linspace(-0.1, 0.1, 32), 0.1)
    with pytest.raises(NonFiniteError, match="nu"):
        Burgers(grid, jnp.nan, 0.1)
    with pytest.raises(GridMismatchError, match=r"shape \(32,\)"):
        Burgers(grid, jnp.ones(31), 0.1)
    with pytest.raises(InputError, match="dt"):
        Burgers(grid, NU, -1.0)
    with pytest.raises(InputError, match="CartesianGrid"):
        Burgers(LatLonGrid(np.linspace(-60, 60, 5), np.arange(0, 360, 30.0)), NU, 0.1)
    with pytest.raises(InputError, match="GMRES"):
        Burgers(grid, NU, 0.1, solver=lx.LU())
    model = Burgers(GRIDS["2d"], NU, 0.1)
    with pytest.raises(GridMismatchError, match=r"\(2, 16, 16\)"):
        model.step(jnp.zeros((16, 16)))
    with pytest.raises(NonFiniteError, match="NaN"):
        model.step(jnp.zeros((2, 16, 16)).at[0, 3, 3].set(jnp.nan))


def test_newton_non_convergence_raises():
    grid = CartesianGrid((16,), (TWO_PI,))
    stuck = Burgers(grid, NU, 100.0, max_steps=1)
    u = jnp.asarray(cole_hopf_1d(grid.coords()["x"], 0.0))
    with pytest.raises(ConvergenceError, match="Newton did not converge"):
        stuck.step(u)
    # under jit a failed check poisons the velocity with NaN (no host callback, the program stays cacheable);
    # the check where the result comes back raises with the same advice
    stepped = jax.jit(lambda v: stuck.step(v))
    for bad in (u, u.at[3].set(jnp.nan)):
        poisoned = stepped(bad)
        assert bool(jnp.all(jnp.isnan(poisoned)))
        with pytest.raises(NonFiniteError, match="Newton did not converge within max_steps=1.*NaN or inf"):
            stuck.check_result(poisoned)
    with pytest.raises(NonFiniteError, match="3-step run of Burgers.*raise max_steps"):  # eagerly, a rollout
        integrate(stuck, u, 3)
