"""Open (inflow/outflow) boundaries and non-divergent face fluxes: uniform fields, budgets, the pole, bad input."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from models import CartesianGrid, ClosedPoles, InputError, LatLonGrid, Open, Periodic
from models.advection_diffusion import AdvectionDiffusion
from models.nondivergent import NonDivergentProjection, net_outflow
from models.operators import Centred, Upwind, advective_flux, face_velocity
from models.time_schemes import BackwardEuler, CrankNicolson

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
GMRES = lx.GMRES(rtol=1e-11, atol=1e-11, restart=40)
PROJECT = NonDivergentProjection(lx.CG(rtol=1e-13, atol=1e-13, max_steps=5000))

# a regional cap 60..90°N, 40°W..40°E, with a polar row: the sphere of the real-fields case, in miniature
CAP = LatLonGrid(np.arange(60.0, 90.1, 5.0), np.arange(-40.0, 40.1, 10.0), boundaries=(Open(), Open()),
                 poles=ClosedPoles())  # fmt: skip
BOX = CartesianGrid((6, 7), (1.0, 1.2), (Periodic(), Open()))


def _wind(grid, seed, speed):
    """A smooth, divergent wind (one cell-centred component per axis)."""
    rng = np.random.default_rng(seed)
    a, b = np.meshgrid(*(np.linspace(0, 1, n) for n in grid.shape), indexing="ij")
    c = rng.normal(size=4)
    return (speed * (c[0] + np.sin(3 * a + c[1]) * np.cos(2 * b)), speed * (1.0 + c[2] * a + np.cos(4 * b + c[3])))


def _model(grid, wind, inflow, kappa, dt, scheme=BackwardEuler(), advection=Upwind(), correction=PROJECT, **kw):
    return AdvectionDiffusion(grid, wind, kappa, dt, scheme, advection_scheme=advection, solver=GMRES,
                              inflow=inflow, flux_correction=correction, **kw)  # fmt: skip


STEP = jax.jit(lambda model, c: model.step(c, 0.0), compiler_options=FAST_COMPILE)
FLUXES = jax.jit(lambda model: model.volume_fluxes(0.0), compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("grid", [CAP, BOX], ids=["latlon-cap", "cartesian"])
def test_projection_makes_fluxes_nondivergent(grid):
    raw = tuple(vf * jnp.asarray(grid.face_area(a)) for a, vf in enumerate(face_velocity(grid, _wind(grid, 0, 20.0))))
    before = np.abs(np.asarray(net_outflow(grid, raw)))
    after = np.abs(np.asarray(net_outflow(grid, PROJECT(grid, raw))))
    scale = max(float(np.max(np.abs(f))) for f in raw)
    assert before.max() > 1e-2 * scale  # the interpolated wind really is divergent
    assert after.max() < 1e-10 * scale


@pytest.mark.parametrize(("grid", "scheme"), [(CAP, CrankNicolson()), (BOX, BackwardEuler())],
                         ids=["latlon-cap-cn", "cartesian-be"])  # fmt: skip
def test_uniform_field_stays_uniform_with_matching_inflow(grid, scheme):
    c0 = 5500.0
    dt = 3600.0 if isinstance(grid, LatLonGrid) else 0.05
    speed = 30.0 if isinstance(grid, LatLonGrid) else 1.0
    kappa = 1e4 if isinstance(grid, LatLonGrid) else 1e-3
    model = _model(grid, _wind(grid, 1, speed), c0, kappa, dt, scheme, Centred())
    c = jnp.full(grid.shape, c0)
    for _ in range(3):
        c = STEP(model, c)
    assert float(jnp.max(jnp.abs(c - c0))) < 1e-8 * c0
    # the same wind without the projection creates spurious sources c·∇·v (the reason for the projection)
    raw = AdvectionDiffusion(grid, _wind(grid, 1, speed), kappa, dt, scheme, advection_scheme=Centred(),
                             solver=GMRES, inflow=c0)  # fmt: skip
    assert float(jnp.max(jnp.abs(STEP(raw, jnp.full(grid.shape, c0)) - c0))) > 1e-4 * c0


@pytest.mark.parametrize("grid", [CAP, BOX], ids=["latlon-cap", "cartesian"])
def test_tracer_budget_equals_net_boundary_flux(grid):
    """Backward Euler: Σ V (c1 − c0) = −Δt × (net outflow of tracer through the open faces at c1)."""
    rng = np.random.default_rng(2)
    dt = 7200.0 if isinstance(grid, LatLonGrid) else 0.05
    speed = 25.0 if isinstance(grid, LatLonGrid) else 1.0
    kappa = 2e4 if isinstance(grid, LatLonGrid) else 2e-3
    inflow = jnp.asarray(100.0 + 10 * rng.normal(size=grid.shape))
    model = _model(grid, _wind(grid, 3, speed), inflow, kappa, dt)
    c0 = jnp.asarray(100.0 + 20 * rng.normal(size=grid.shape))
    c1 = STEP(model, c0)
    vol = np.broadcast_to(np.asarray(grid.cell_volume()), grid.shape)
    change = float(np.sum(vol * (np.asarray(c1) - np.asarray(c0))))
    outflow = 0.0
    for axis, f in enumerate(FLUXES(model)):
        flux = np.moveaxis(np.asarray(advective_flux(grid, c1, f, axis, Upwind(), inflow)), axis, 0)
        if not isinstance(grid.boundaries[axis], Periodic):
            outflow += float(np.sum(flux[-1]) - np.sum(flux[0]))
    assert outflow != 0.0
    np.testing.assert_allclose(change, -dt * outflow, rtol=1e-9)


def test_no_flux_through_the_pole():
    model = _model(CAP, _wind(CAP, 4, 40.0), 1.0, 0.0, 3600.0)
    meridional = np.asarray(FLUXES(model)[0])
    assert CAP.lat[-1] == 90.0
    assert np.all(meridional[-1] == 0.0)  # the face on the pole has zero length
    assert np.max(np.abs(meridional[0])) > 0  # the southern open boundary does carry flux
    c = jnp.asarray(np.random.default_rng(5).normal(size=CAP.shape))
    flux = np.asarray(advective_flux(CAP, c, FLUXES(model)[0], 0, Upwind(), 1.0))
    assert np.all(flux[-1] == 0.0)


# Tangent-linear, adjoint, Taylor and parameter-gradient (κ, wind, wind scale, inflow values) contracts of an open
# lat-lon cap with the projection: tests/test_contracts.py over tests/registry.py.


def test_open_boundaries_need_inflow_values():
    with pytest.raises(InputError, match="inflow"):
        AdvectionDiffusion(BOX, _wind(BOX, 0, 1.0), 0.0, 0.1)
    with pytest.raises(InputError, match="Open"):
        AdvectionDiffusion(CartesianGrid((5, 5), (1.0, 1.0)), (np.ones((5, 5)),) * 2, 0.0, 0.1, inflow=1.0)
