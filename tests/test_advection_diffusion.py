"""Advection–diffusion model: transport accuracy, conservation, checkpointed gradients, CFL and bad input."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from models import (
    CartesianGrid,
    ClosedPoles,
    Dirichlet,
    GridMismatchError,
    InputError,
    LatLonGrid,
    Neumann,
    NonFiniteError,
    Periodic,
    StabilityError,
)
from models.advection_diffusion import IMEX, AdvectionDiffusion
from models.grid import EARTH_RADIUS
from models.operators import Centred, Upwind
from models.rollout import NestedCheckpointing, integrate, rollout
from models.time_schemes import BackwardEuler, CrankNicolson

GMRES_TIGHT = lx.GMRES(rtol=1e-13, atol=1e-13, restart=20)
CG_TIGHT = lx.CG(rtol=1e-13, atol=1e-13)
GLOBE = LatLonGrid(np.arange(-90.0, 91.0, 10.0), np.arange(0.0, 360.0, 10.0), poles=ClosedPoles())


# On these tiny grids XLA's compile time dominates the test time: compile without its optimisation passes.
# Every compiled program is top-level and shared by the tests that run the same model configuration.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


RUN = jit(integrate, static_argnums=2)
ROLLOUT = jit(rollout, static_argnums=2)
STEP = jit(lambda model, c: model.step(c, 0.0))


def tight(scheme):
    return CG_TIGHT if isinstance(scheme, IMEX) else GMRES_TIGHT


def mesh(grid):
    return np.meshgrid(*grid.coords().values(), indexing="ij")


def sphere_mesh(grid):
    lat, lon = mesh(grid)
    return np.deg2rad(lat), np.deg2rad(lon)


def total_mass(grid, c):
    return float(jnp.sum(jnp.asarray(grid.cell_volume()) * c))


def unwrapped_centre(x, c, expected, length):
    """Centre of mass along an axis, coordinates taken relative to `expected` on the periodic circle."""
    rel = (x - expected + length / 2) % length - length / 2
    return expected + float(np.sum(rel * c) / np.sum(c))


# ---------------------------------------------------------------------------------------------
# Windows for the checkpointing and conservation tests (tangent-linear, adjoint, Taylor and parameter-gradient
# contracts of these configurations: tests/test_contracts.py over tests/registry.py)
# ---------------------------------------------------------------------------------------------


def cartesian_model(scheme):
    """Closed walls along y, inflow/outflow walls (boundary value 0.5) along x; winds bounded away from 0."""
    grid = CartesianGrid((16, 16), (1.0, 1.0), boundaries=(Neumann(), Dirichlet(0.5)))
    y, x = mesh(grid)
    velocity = (0.3 + 0.1 * np.sin(2 * np.pi * x), 0.5 + 0.2 * np.cos(2 * np.pi * y))
    kappa = 0.01 * (1.0 + 0.5 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y))
    advection = Centred() if isinstance(scheme, CrankNicolson) else Upwind()
    model = AdvectionDiffusion(grid, velocity, kappa, 0.05, scheme, advection_scheme=advection, solver=tight(scheme))
    c0 = np.exp(-((x - 0.4) ** 2 + (y - 0.5) ** 2) / (2 * 0.12**2)) + 0.2 * np.cos(2 * np.pi * y)
    return model, jnp.asarray(c0)


def globe_model(scheme):
    """Time-varying wind sampled at t = 0 and 2Δt (the third step is past the last sample: held constant)."""
    lat, lon = sphere_mesh(GLOBE)
    dt = 2400.0
    u = np.stack([20.0 * (0.6 + 0.4 * np.cos(lat)), 25.0 * (0.6 + 0.4 * np.cos(lat)) + 3.0 * np.sin(lon)])
    v = np.stack([6.0 + 2.0 * np.sin(lon), 4.0 + 3.0 * np.cos(2 * lon) * np.cos(lat)])
    kappa = 2e6 * (1.0 + 0.5 * np.sin(lon) * np.cos(lat))
    model = AdvectionDiffusion(GLOBE, (v, u), kappa, dt, scheme, times=(0.0, 2 * dt), solver=tight(scheme))
    c0 = np.exp(-((lat - 0.3) ** 2 + (lon - 2.0) ** 2) / 0.3) + 0.3 * np.sin(lat)
    return model, jnp.asarray(c0)


def test_checkpointed_rollout_gives_the_same_gradient():
    model, c0 = cartesian_model(IMEX())
    w = jax.random.normal(jax.random.PRNGKey(5), c0.shape)

    def gradient(checkpointing):
        def f(p):
            c, kappa, velocity, wind_scale = p
            m = eqx.tree_at(lambda m: (m.kappa, m.velocity, m.wind_scale), model, (kappa, velocity, wind_scale))
            return integrate(m, c, 3, checkpointing=checkpointing)

        params = (c0, model.kappa, model.velocity, model.wind_scale)
        return jit(lambda p, w: jax.vjp(f, p)[1](w)[0])(params, w)

    plain, nested = gradient(NestedCheckpointing(levels=1)), gradient(NestedCheckpointing(levels=2))
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(nested)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Accuracy against known solutions, conservation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme,advection",
    [(CrankNicolson(), Centred()), (BackwardEuler(), Upwind()), (IMEX(), Upwind())],
    ids=["cn-centred", "be-upwind", "imex"],
)
def test_gaussian_lands_where_uniform_wind_puts_it_and_mass_is_kept(scheme, advection):
    # periodic 32 × 64 box; the wind moves 0.25 cell per step along y and 0.5 along x
    h, dt, steps = 1 / 32, 1 / 64, 32
    grid = CartesianGrid((32, 64), (32 * h, 64 * h), Periodic())
    wind = (0.25 * h / dt, 0.5 * h / dt)
    model = AdvectionDiffusion(grid, wind, 1e-4, dt, scheme, advection_scheme=advection, solver=tight(scheme))
    y, x = mesh(grid)
    start = (15.5 * h, 31.5 * h)  # centre of cell (15, 31)
    c0 = np.exp(-((y - start[0]) ** 2 + (x - start[1]) ** 2) / (2 * (3 * h) ** 2))
    trajectory = np.asarray(ROLLOUT(model, jnp.asarray(c0), steps))
    for n in (steps // 2, steps):
        c = trajectory[n]
        for axis, coord in enumerate((y, x)):
            expected = start[axis] + wind[axis] * n * dt
            centre = unwrapped_centre(coord, c, expected, grid.lengths[axis])
            assert abs(centre - expected) < 0.03 * h, (n, axis, (centre - expected) / h)
        assert abs(total_mass(grid, c) - total_mass(grid, c0)) <= 1e-12 * total_mass(grid, c0)
        peak = np.unravel_index(np.argmax(c), grid.shape)
        # within one cell of the exact peak (15 + n/4, 31 + n/2): centred and upwind waves lag a little
        assert abs(peak[0] - (15 + n // 4)) <= 1 and abs(peak[1] - (31 + n // 2)) <= 1, (n, peak)
    # a zero state stays zero (no Krylov breakdown on a zero right-hand side)
    assert float(np.max(np.abs(ROLLOUT(model, jnp.zeros(grid.shape), steps)))) == 0.0


def test_second_order_accuracy_against_advected_diffusing_gaussian():
    u, kappa, sigma, t_end, length = 1.0, 0.01, 0.08, 0.25, 1.0

    def exact(x, t):
        s2 = sigma**2 + 2 * kappa * t
        return sum(sigma / np.sqrt(s2) * np.exp(-((x - 0.4 - u * t + m * length) ** 2) / (2 * s2)) for m in (-1, 0, 1))

    errors = []
    for n in (32, 64, 128):
        grid = CartesianGrid((n,), (length,), Periodic())
        (x,) = mesh(grid)
        steps = n // 4  # Courant number 0.5 on every grid: Δt ∝ h
        model = AdvectionDiffusion(
            grid, (u,), kappa, t_end / steps, CrankNicolson(), advection_scheme=Centred(), solver=GMRES_TIGHT
        )
        c = RUN(model, jnp.asarray(exact(x, 0.0)), steps)
        errors.append(float(np.sqrt(np.mean((np.asarray(c) - exact(x, t_end)) ** 2))))
    observed = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    np.testing.assert_allclose(observed, 2.0, atol=0.15)


@pytest.mark.parametrize("scheme,rule", [(CrankNicolson(), "trapezoid"), (IMEX(), "left")], ids=["cn", "imex"])
def test_time_varying_wind_is_interpolated_linearly_and_held_outside_samples(scheme, rule):
    # uniform wind sampled at 0.1, 0.3, 0.6 (speeds up, then reverses); the steps run from 0 to 0.8
    grid = CartesianGrid((48,), (2.0,), Periodic())
    (x,) = mesh(grid)
    times, speeds = (0.1, 0.3, 0.6), (0.4, 1.2, -0.6)
    velocity = (np.stack([np.full(grid.shape, s) for s in speeds]),)
    dt, steps = 0.025, 32
    advection = Centred() if isinstance(scheme, CrankNicolson) else Upwind()
    model = AdvectionDiffusion(
        grid, velocity, 1e-3, dt, scheme, times=times, advection_scheme=advection, solver=tight(scheme)
    )
    c0 = np.exp(-((x - 1.0) ** 2) / (2 * 0.08**2))
    c = np.asarray(RUN(model, jnp.asarray(c0), steps))
    t = dt * np.arange(steps + 1)
    wind = np.interp(t, times, speeds)  # linear between samples, constant outside
    displacement = {
        "trapezoid": dt * np.sum(0.5 * (wind[1:] + wind[:-1])),  # = ∫ wind dt exactly (samples fall on steps)
        "left": dt * np.sum(wind[:-1]),  # explicit advection uses the wind at the start of each step
    }[rule]
    expected = 1.0 + displacement
    centre = unwrapped_centre(x, c, expected, grid.lengths[0])
    assert abs(centre - expected) < 1e-4 * grid.spacing[0], (centre - expected) / grid.spacing[0]


def test_solid_body_rotation_over_the_pole():
    # rotation about an equatorial axis: a blob on the equator at 90°E crosses the south pole's cap
    lat, lon = sphere_mesh(GLOBE)
    period = 12 * 86400.0
    u0 = 2 * np.pi * EARTH_RADIUS / period
    u = u0 * np.sin(lat) * np.cos(lon)
    v = -u0 * np.sin(lon)
    dt, steps = period / 96, 24  # a quarter turn
    model = AdvectionDiffusion(GLOBE, (v, u), 0.0, dt, CrankNicolson(), advection_scheme=Centred(), solver=GMRES_TIGHT)
    position = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    start = np.array([0.0, 1.0, 0.0])
    c0 = np.exp(-((np.arccos(np.clip(np.tensordot(start, position, 1), -1, 1)) / 0.35) ** 2))
    c = np.asarray(RUN(model, jnp.asarray(c0), steps))
    vol = np.broadcast_to(GLOBE.cell_volume(), GLOBE.shape)
    centroid = np.tensordot(position, vol * c, 2)
    centroid /= np.linalg.norm(centroid)
    error_deg = np.rad2deg(np.arccos(np.clip(centroid @ np.array([0.0, 0.0, -1.0]), -1, 1)))
    assert error_deg < 1.0, error_deg  # a tenth of a grid cell, after crossing the polar cap
    assert abs(total_mass(GLOBE, c) - total_mass(GLOBE, c0)) <= 1e-12 * total_mass(GLOBE, c0)


@pytest.mark.parametrize("scheme", [BackwardEuler(), IMEX(CrankNicolson())], ids=["be", "imex-cn"])
def test_mass_is_conserved_on_the_globe(scheme):
    model, c0 = globe_model(scheme)
    c = RUN(model, c0, 3)
    assert float(jnp.max(jnp.abs(c - c0))) > 1e-2  # the tracer did move
    assert abs(total_mass(GLOBE, c) - total_mass(GLOBE, c0)) <= 1e-12 * total_mass(GLOBE, c0)


@pytest.mark.parametrize("scheme", [CrankNicolson(), IMEX()], ids=["cn", "imex"])
def test_mass_is_conserved_in_a_closed_box(scheme):
    grid = CartesianGrid((16, 16), (1.0, 1.0), Neumann())
    y, x = mesh(grid)
    # a convergent/divergent wind that also blows into the walls
    velocity = (0.4 + 0.3 * np.sin(2 * np.pi * x), -0.5 + 0.3 * np.cos(2 * np.pi * y))
    kappa = 0.005 * (1.0 + 0.5 * np.sin(2 * np.pi * y))
    model = AdvectionDiffusion(grid, velocity, kappa, 0.03, scheme, solver=tight(scheme))
    c0 = jnp.asarray(np.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.05))
    c = RUN(model, c0, 5)
    assert float(jnp.max(jnp.abs(c - c0))) > 1e-2
    assert abs(total_mass(grid, c) - total_mass(grid, c0)) <= 1e-12 * total_mass(grid, c0)


# ---------------------------------------------------------------------------------------------
# Boundaries, CFL check and bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_dirichlet_wall_is_an_inflow_boundary(sign):
    grid = CartesianGrid((16,), (1.0,), Dirichlet(1.0))
    courant, dt = 0.5, 0.5 / 16
    imex = AdvectionDiffusion(grid, (sign * 1.0,), 0.0, dt, IMEX(), solver=CG_TIGHT)
    c = np.asarray(STEP(imex, jnp.zeros(grid.shape)))
    inflow_cell = 0 if sign > 0 else -1
    assert c[inflow_cell] == pytest.approx(courant * 1.0, rel=1e-12)
    assert np.max(np.abs(np.delete(c, inflow_cell))) < 1e-15  # nothing enters through the outflow wall
    # the boundary value fills the domain, then stays: the outflow wall does not reflect
    implicit = AdvectionDiffusion(grid, (sign * 1.0,), 0.002, 0.5, BackwardEuler(), solver=GMRES_TIGHT)
    np.testing.assert_allclose(RUN(implicit, jnp.zeros(grid.shape), 40), 1.0, atol=1e-8)
    np.testing.assert_allclose(RUN(implicit, jnp.ones(grid.shape), 40), 1.0, rtol=1e-12)


def test_imex_cfl_limit_is_enforced_and_sharp():
    grid = CartesianGrid((16, 16), (1.0, 1.0), Periodic())
    limit = 1.0 / (16 + 16)  # diagonal wind (1, 1): the Courant numbers of both axes add up
    # Δt = 0.9 h passes a per-face test (|v|Δt/h = 0.9) but is unstable for a diagonal wind
    with pytest.raises(StabilityError, match=re.escape(f"dt ≤ {limit:.6g}")):
        AdvectionDiffusion(grid, (1.0, 1.0), 0.0, 0.9 / 16, IMEX())
    model = AdvectionDiffusion(grid, (1.0, 1.0), 0.0, limit, IMEX(), solver=CG_TIGHT)
    c0 = jnp.asarray(np.random.default_rng(0).uniform(0.0, 1.0, grid.shape))
    c = RUN(model, c0, 5)  # at the limit the step is monotone: no new extrema
    assert float(jnp.min(c)) >= float(jnp.min(c0)) - 1e-14 and float(jnp.max(c)) <= float(jnp.max(c0)) + 1e-14
    # the wind scale multiplies the wind, and every wind sample counts
    with pytest.raises(StabilityError, match=re.escape(f"dt ≤ {limit / 2:.6g}")):
        AdvectionDiffusion(grid, (1.0, 1.0), 0.0, limit, IMEX(), wind_scale=2.0)
    gusty = tuple(np.stack([np.full(grid.shape, 0.5), np.full(grid.shape, 2.0)]) for _ in range(2))
    with pytest.raises(StabilityError, match=re.escape(f"dt ≤ {limit / 2:.6g}")):
        AdvectionDiffusion(grid, gusty, 0.0, limit, IMEX(), times=(0.0, 1.0))
    AdvectionDiffusion(grid, (1.0, 1.0), 0.0, 0.9 / 16, BackwardEuler())  # implicit: no limit


def test_bad_input_raises_project_errors():
    grid = CartesianGrid((16, 16), (1.0, 1.0), Periodic())
    field = np.ones(grid.shape)
    with pytest.raises(GridMismatchError, match="shape"):
        AdvectionDiffusion(grid, (field, np.ones((16, 15))), 0.01, 0.1)
    with pytest.raises(GridMismatchError, match="2 cell-centred components"):
        AdvectionDiffusion(grid, (field,), 0.01, 0.1)
    with pytest.raises(GridMismatchError, match="shape"):
        AdvectionDiffusion(grid, (field, field), np.ones((4, 4)), 0.1)
    with pytest.raises(GridMismatchError, match=re.escape("(3, 16, 16)")):
        AdvectionDiffusion(grid, (np.stack([field] * 2),) * 2, 0.01, 0.1, times=(0.0, 1.0, 2.0))
    with pytest.raises(InputError, match="strictly increasing"):
        AdvectionDiffusion(grid, (np.stack([field] * 2),) * 2, 0.01, 0.1, times=(1.0, 1.0))
    with pytest.raises(InputError, match="≥ 0"):
        AdvectionDiffusion(grid, (field, field), -0.01 * field, 0.1)
    with pytest.raises(NonFiniteError, match="velocity"):
        AdvectionDiffusion(grid, (field, np.where(field > 0, np.nan, 0.0)), 0.01, 0.1)
    with pytest.raises(NonFiniteError, match="kappa"):
        AdvectionDiffusion(grid, (field, field), np.inf, 0.1)
    with pytest.raises(InputError, match="wind_scale"):
        AdvectionDiffusion(grid, (field, field), 0.01, 0.1, wind_scale=np.ones(2))
    with pytest.raises(InputError, match="dt"):
        AdvectionDiffusion(grid, (field, field), 0.01, -0.1)
    with pytest.raises(InputError, match="GMRES"):
        AdvectionDiffusion(grid, (field, field), 0.01, 0.1, solver=lx.CG(rtol=1e-8, atol=1e-8))
    with pytest.raises(StabilityError, match="Upwind"):
        AdvectionDiffusion(grid, (field, field), 0.01, 0.01, IMEX(), advection_scheme=Centred())
    model = AdvectionDiffusion(grid, (field, field), 0.0, 0.1)  # pure advection is allowed
    with pytest.raises(GridMismatchError, match="shape"):
        integrate(model, jnp.ones((16, 15)), 2)
    with pytest.raises(NonFiniteError, match="NaN"):
        integrate(model, jnp.full(grid.shape, jnp.nan), 2)
