"""Shallow water: geostrophic balance, gravity-wave speed, mass, reverse mode, linear stability, bad input."""

import re

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from models import (
    CartesianGrid,
    GridMismatchError,
    InputError,
    Neumann,
    NonFiniteError,
    Periodic,
    StabilityError,
)
from models.rollout import integrate, rollout
from models.shallow_water import (
    BetaPlane,
    FPlane,
    PredictorCorrector,
    RungeKutta3,
    ShallowWater,
    SWState,
    geostrophic_jet,
)
from models.time_schemes import CrankNicolson, OffCentred

# One static configuration (grid, dt, solver, stages) per domain, so the jitted functions below
# compile once and serve every test; physical parameters (H, g, f0, beta) are traced arrays.
NY, NX = 8, 32
CHANNEL = CartesianGrid((NY, NX), (8.0, 32.0), boundaries=(Neumann(), Periodic()))  # dx = dy = 1
PERIODIC = CartesianGrid((NY, NX), (8.0, 32.0), boundaries=Periodic())
DT = 1.0  # with g = 1, H = 4: gravity-wave CFL √(gH)·dt/dx = 2
TIGHT = lx.CG(rtol=1e-13, atol=1e-13, max_steps=300)
N_LONG = 40

Y, X = np.meshgrid(CHANNEL.coords()["y"], CHANNEL.coords()["x"], indexing="ij")


def model(grid=CHANNEL, H=4.0, g=1.0, f0=0.1, beta=0.005, solver=TIGHT, scheme=CrankNicolson(), **kw):
    """Shallow-water model with a full depth field (one pytree structure for every test)."""
    return ShallowWater(
        grid,
        jnp.broadcast_to(jnp.asarray(H, dtype=float), grid.shape),
        DT,
        g=g,
        coriolis=BetaPlane(f0, beta, y0=4.0),
        solver=solver,
        scheme=scheme,
        **kw,
    )


def bumpy_depth():
    """Resting depth 4 with ±25 % smooth relief (makes the spectral preconditioner inexact)."""
    return 4.0 * (1.0 + 0.25 * np.sin(2 * np.pi * X / 32) * np.cos(np.pi * Y / 8))


def random_state(seed, grid=CHANNEL, eta=0.1, vel=0.03):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    v = vel * jax.random.normal(k3, grid.shape)
    if isinstance(grid.boundaries[0], Neumann):
        v = v.at[-1].set(0.0)
    return SWState(eta * jax.random.normal(k1, grid.shape), vel * jax.random.normal(k2, grid.shape), v)


trajectory = eqx.filter_jit(lambda m, s: rollout(m, s, N_LONG))


def relative_change(traj):
    scale = max(float(jnp.max(jnp.abs(traj.eta[0]))), float(jnp.max(jnp.abs(traj.u[0]))))
    return max(float(jnp.max(jnp.abs(a - a[0]))) for a in traj) / scale


# ------------------------------------------------------------------------------------------ accuracy


def test_geostrophic_jet_in_beta_plane_channel_is_steady():
    m = model(H=4.0, f0=0.1, beta=0.005)
    jet = 0.05 * np.exp(-(((CHANNEL.coords()["y"] - 4.0) / 2.0) ** 2))
    state = geostrophic_jet(m, jet, eta_mean=0.02)
    assert float(jnp.ptp(state.eta)) > 1e-3  # a real pressure ridge holds the jet
    traj = trajectory(m, state)
    assert relative_change(traj) <= 1e-10
    # an unbalanced start (η flat) does move: the test can fail
    flat = trajectory(m, state._replace(eta=jnp.zeros_like(state.eta)))
    assert relative_change(flat) > 1e-3


def test_geostrophic_jet_on_doubly_periodic_f_plane_is_steady():
    m = model(grid=PERIODIC, H=4.0, f0=0.1, beta=0.0)
    y = PERIODIC.coords()["y"]
    jet = 0.05 * np.sin(2 * np.pi * y / 8.0) + 0.02 * np.cos(4 * np.pi * y / 8.0)  # zero mean
    traj = trajectory(m, geostrophic_jet(m, jet))
    assert relative_change(traj) <= 1e-10


def test_gravity_wave_travels_at_discrete_c_grid_speed_beyond_cfl_one():
    H, g = 4.0, 1.0
    m = model(H=H, g=g, f0=0.0, beta=0.0)
    c = np.sqrt(g * H)
    dx = CHANNEL.spacing[1]
    assert c * DT / dx >= 2.0  # twice the explicit gravity-wave limit
    k, a = 2 * np.pi / 32.0, 1e-6 * H
    eta = a * np.cos(k * X)
    u = a * np.sqrt(g / H) * np.cos(k * (X + 0.5 * dx))  # right-going eigenvector of the C-grid
    traj = trajectory(m, SWState(jnp.asarray(eta), jnp.asarray(u), jnp.zeros(CHANNEL.shape)))
    coeff = np.fft.fft(np.asarray(traj.eta[:, 0, :]), axis=-1)[:, 1]
    phase = np.unwrap(np.angle(coeff))
    speed = -np.polyfit(np.arange(N_LONG + 1) * DT, phase, 1)[0] / k
    omega_space = 2 * c / dx * np.sin(k * dx / 2)  # C-grid: ω = (2c/Δx) sin(kΔx/2)
    speed_discrete = 2 * np.arctan(omega_space * DT / 2) / (k * DT)  # Crank–Nicolson phase
    np.testing.assert_allclose(speed, speed_discrete, rtol=1e-8)
    np.testing.assert_allclose(speed, c, rtol=0.02)
    assert abs(speed / c - 1) > 1e-3  # resolved: the phase error of the scheme is visible
    np.testing.assert_allclose(np.abs(coeff), np.abs(coeff[0]), rtol=1e-8)  # θ = ½ is neutral
    assert np.all(np.abs(np.asarray(traj.eta[:, 1:] - traj.eta[:, :1])) < 1e-12 * a)  # stays zonal


@pytest.mark.parametrize("grid", [CHANNEL, PERIODIC], ids=["channel", "periodic"])
def test_mass_is_conserved_by_flux_form_continuity(grid):
    m = model(grid=grid, H=bumpy_depth(), f0=0.1, beta=0.005 if grid is CHANNEL else 0.0)
    state = random_state(1, grid, eta=0.1, vel=0.02)
    state = state._replace(eta=state.eta + 0.3)  # net mass anomaly
    traj = trajectory(m, state)
    mass = np.asarray(jax.vmap(m.mass)(traj))
    anomaly = np.asarray(jnp.sum(traj.eta, axis=(1, 2)))
    assert np.max(np.abs(mass - mass[0])) <= 1e-12 * mass[0]
    assert np.max(np.abs(anomaly - anomaly[0])) <= 1e-12 * np.sum(np.abs(np.asarray(state.eta)))
    assert float(jnp.max(jnp.abs(traj.eta[-1] - traj.eta[0]))) > 0.05  # the flow did move mass about
    if grid is CHANNEL:
        assert float(jnp.max(jnp.abs(traj.v[:, -1]))) == 0.0  # no flow through the north wall


# ------------------------------------------------------------------------------ reverse mode
# (tangent-linear, adjoint, Taylor and H/g/f0/β-gradient contracts of the f-plane and β-plane models:
# tests/test_contracts.py over tests/registry.py)


def test_reverse_mode_reuses_the_forward_helmholtz_solution():
    # each stage is checkpointed keeping its Helmholtz solution: a gradient runs the forward solve and one adjoint
    # solve per stage, never the forward solve again (which a policy missing the solve's output would do)
    m, state = model(H=bumpy_depth()), random_state(9, eta=0.1, vel=0.02)
    forward = str(jax.make_jaxpr(lambda s: m.step(s))(state))
    gradient = str(jax.make_jaxpr(lambda s: jax.vjp(lambda x: m.step(x), s)[1](s))(state))
    assert forward.count("custom_linear_solve[") == 1  # one stage body, scanned over the stages
    assert gradient.count("custom_linear_solve[") == 2  # that solve and its transpose


# ------------------------------------------------------------------------------- time stepping


def test_linearised_off_centred_rk3_step_is_stable_on_beta_plane_over_topography():
    grid = CartesianGrid((6, 6), (6.0, 6.0), boundaries=(Neumann(), Periodic()))
    yy, xx = np.meshgrid(np.arange(6) + 0.5, np.arange(6) + 0.5, indexing="ij")
    H = 4.0 * (1 + 0.2 * np.cos(2 * np.pi * xx / 6) * np.cos(np.pi * yy / 6))
    m = ShallowWater(
        grid,
        H,
        2.0,
        g=1.0,
        coriolis=BetaPlane(0.1, 0.01, 3.0),
        scheme=OffCentred(0.55),
        stages=RungeKutta3(),
        solver=TIGHT,
    )
    rest = SWState(*(jnp.zeros(grid.shape),) * 3)
    flat, unravel = jax.flatten_util.ravel_pytree(rest)
    step = lambda x: jax.flatten_util.ravel_pytree(m.step(unravel(x)))[0]  # noqa: E731
    tangent = jax.jit(lambda d: jax.jvp(step, (flat,), (d,))[1])
    jac = np.stack([np.asarray(tangent(e)) for e in jnp.eye(flat.size)], axis=1)
    keep = np.ones(flat.size, bool)
    keep[3 * grid.size - grid.shape[1] :] = False  # the north-wall faces carry no state
    modulus = np.abs(np.linalg.eigvals(jac[np.ix_(keep, keep)]))
    assert modulus.max() <= 1 + 1e-12  # no growing mode: gravity, Kelvin, inertial and Rossby waves
    assert np.sum(modulus < 0.999) >= grid.size  # off-centring damps the fast gravity and Kelvin modes


def test_step_with_stats_counts_cg_iterations():
    state = random_state(8, eta=0.1, vel=0.02)
    stats = eqx.filter_jit(lambda m, s: m.step_with_stats(s))
    m = model(H=bumpy_depth())
    s_bumpy, iters = stats(m, state)
    assert 2 < int(iters) <= 60
    first = jax.tree_util.tree_map(lambda a: a[1], trajectory(m, state))
    for a, b in zip(s_bumpy, first):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-14)
    _, iters_flat = stats(model(H=4.0), state._replace(eta=0 * state.eta))
    assert int(iters_flat) < int(iters)  # uniform depth: the spectral preconditioner is nearly exact


# ---------------------------------------------------------------------------------- bad input


def test_bad_input_raises_project_errors():
    with pytest.raises(InputError, match="positive"):
        ShallowWater(CHANNEL, -1.0, DT)
    with pytest.raises(InputError, match="positive"):
        ShallowWater(CHANNEL, jnp.zeros(CHANNEL.shape).at[0, 0].set(-1.0) + 0.5, DT)
    with pytest.raises(GridMismatchError, match=r"\(8, 32\)"):
        ShallowWater(CHANNEL, jnp.ones((8, 31)), DT)
    with pytest.raises(NonFiniteError):
        ShallowWater(CHANNEL, jnp.full(CHANNEL.shape, jnp.nan), DT)
    with pytest.raises(NonFiniteError):
        ShallowWater(CHANNEL, 4.0, DT, coriolis=FPlane(jnp.nan))
    with pytest.raises(InputError, match="gravity"):
        ShallowWater(CHANNEL, 4.0, DT, g=0.0)
    with pytest.raises(InputError, match="CartesianGrid"):
        ShallowWater(CartesianGrid((16,), (1.0,)), 4.0, DT)
    with pytest.raises(InputError, match="channel"):
        ShallowWater(CartesianGrid((8, 8), (1.0, 1.0), boundaries=Neumann()), 4.0, DT)
    with pytest.raises(InputError, match=r"\[0.5, 1\]"):
        OffCentred(0.3)

    # explicit stability: the message names the largest stable dt, which is then accepted
    with pytest.raises(StabilityError, match="dt ≤") as info:
        ShallowWater(CHANNEL, 4.0, DT, coriolis=FPlane(1.0))
    dt_max = float(re.search(r"dt ≤ ([0-9.e+-]+)", str(info.value)).group(1))
    assert dt_max == pytest.approx(PredictorCorrector().stability_limit, rel=1e-3)
    ShallowWater(CHANNEL, 4.0, dt_max * (1 - 1e-3), coriolis=FPlane(1.0))
    ShallowWater(CHANNEL, 4.0, DT, coriolis=FPlane(1.0), stages=RungeKutta3())  # √3 limit
    with pytest.raises(StabilityError, match="advective CFL"):
        ShallowWater(CHANNEL, 4.0, DT, max_speed=0.5)

    m = model()
    good = random_state(9)
    with pytest.raises(StabilityError, match="dt ≤"):
        integrate(m, good._replace(u=good.u + 1.0), 2)
    with pytest.raises(NonFiniteError, match="NaN"):
        integrate(m, good._replace(eta=good.eta.at[2, 3].set(jnp.nan)), 2)
    with pytest.raises(GridMismatchError, match="shape"):
        integrate(m, good._replace(u=jnp.zeros((8, 31))), 2)
    with pytest.raises(InputError, match="SWState"):
        integrate(m, tuple(good), 2)
    with pytest.raises(InputError, match="north wall"):
        integrate(m, good._replace(v=good.v.at[-1].set(0.01)), 2)
    with pytest.raises(InputError, match="drying"):
        integrate(m, good._replace(eta=good.eta.at[0, 0].set(-5.0)), 2)
    with pytest.raises(InputError, match="zero-mean"):
        geostrophic_jet(model(grid=PERIODIC, beta=0.0), 0.05 * np.ones(NY))
    with pytest.raises(InputError, match="rows"):
        geostrophic_jet(m, np.ones(NY + 1))
