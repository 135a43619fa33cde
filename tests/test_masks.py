"""Domain (land/sea) masks: closed coasts, conserved tracers, isolated basins, masked B and a masked 4D-Var solve."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from assim import (
    BlockCovariance,
    DiagonalCovariance,
    DiffusionCovariance,
    GaussNewton,
    GriddedObservation,
    MaskedCovariance,
    ObservationSet,
    RandomisedNormalisation,
    SpectralGaussianCovariance,
    StrongConstraint4DVar,
    WeakConstraint4DVar,
)
from models import CartesianGrid, InputError, LatLonGrid, Neumann, Open, Periodic
from models.advection_diffusion import IMEX, AdvectionDiffusion
from models.burgers import Burgers
from models.diffusion import Diffusion
from models.nondivergent import NonDivergentProjection, basins, net_outflow
from models.operators import Centred, face_velocity
from models.rollout import integrate, rollout
from models.shallow_water import ShallowWater
from models.time_schemes import BackwardEuler, CrankNicolson
from models.verification import (
    adjoint_mismatch,
    taylor_orders,
    taylor_remainders,
    tree_dot,
    tree_norm,
)

LAT = np.arange(-45.0, 46.0, 10.0)  # 10 rows
LON = np.arange(0.0, 151.0, 10.0)  # 16 columns: a regional grid, closed (Neumann) on both axes
COL = np.broadcast_to(np.arange(LON.size), (LAT.size, LON.size))
LAND = np.zeros((LAT.size, LON.size), bool)
LAND[3:6, 3:6] = True  # a continent
LAND[:, 10] = True  # a one-cell-wide wall: two basins
SEA = ~LAND
WEST, EAST = SEA & (COL < 10), SEA & (COL > 10)
GRID = LatLonGrid(LAT, LON, mask=SEA)
DT = 86400.0
GMRES = lx.GMRES(rtol=1e-13, atol=1e-13, restart=40, max_steps=2000)
CG = lx.CG(rtol=1e-14, atol=1e-14, max_steps=2000)
VOL = np.broadcast_to(np.asarray(GRID.cell_volume()), GRID.shape)


def _wind(grid, seed=0, speed=5.0):
    rng = np.random.default_rng(seed)
    a, b = np.meshgrid(*(np.linspace(0, 1, n) for n in grid.shape), indexing="ij")
    c = rng.normal(size=4)
    return (
        speed * np.sin(3 * a + c[0]) * np.cos(2 * b + c[1]),
        speed * (0.5 + np.cos(4 * b + c[2]) * np.sin(2 * a + c[3])),
    )


KAPPA = 2e6 * (1.0 + 0.3 * np.random.default_rng(1).random(GRID.shape))
MODELS = {
    "diffusion-cn": Diffusion(GRID, KAPPA, DT, CrankNicolson(), solver=CG),
    "advection-centred-cn": AdvectionDiffusion(
        GRID, _wind(GRID), KAPPA, DT, CrankNicolson(), advection_scheme=Centred(), solver=GMRES
    ),
    "advection-upwind-be": AdvectionDiffusion(GRID, _wind(GRID), KAPPA, DT, BackwardEuler(), solver=GMRES),
    "advection-imex": AdvectionDiffusion(GRID, _wind(GRID), KAPPA, DT, IMEX(CrankNicolson()), solver=CG),
}
N_STEPS = 5
RUN = eqx.filter_jit(lambda model, c: integrate(model, c, N_STEPS))


def _field(seed, where=SEA, land_value=7.0):
    """A random positive field on `where`, zero on the other sea cells, `land_value` on land."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.where(where, 1.0 + rng.random(GRID.shape), np.where(LAND, land_value, 0.0)))


# ---------------------------------------------------------------- the grid
def test_face_areas_are_zero_beside_masked_cells():
    assert GRID.n_active == SEA.sum() and GRID.mask.dtype == bool and np.array_equal(GRID.active, SEA)
    unmasked = LatLonGrid(LAT, LON)
    for axis in range(2):
        area = GRID.face_area(axis)
        full = np.broadcast_to(unmasked.face_area(axis), area.shape)
        m = np.moveaxis(SEA, axis, 0)
        beside_land = np.concatenate([~m[:1], ~m[1:] | ~m[:-1], ~m[-1:]])
        beside_land = np.moveaxis(beside_land, 0, axis)
        assert np.all(area[beside_land] == 0) and np.array_equal(area[~beside_land], full[~beside_land])
        assert np.array_equal(GRID.face_distance(axis), unmasked.face_distance(axis))
    assert np.array_equal(GRID.cell_volume(), unmasked.cell_volume())


def test_periodic_wrap_face_closes_when_either_side_is_masked():
    g = CartesianGrid((4, 6), (1.0, 1.0), Periodic())
    mask = np.ones(g.shape, bool)
    mask[1, 0] = False
    area = g.with_mask(mask).face_area(1)
    assert area.shape == (4, 7) and area[1, 0] == 0 and area[1, 6] == 0 and area[1, 1] == 0 and area[0, 0] > 0
    assert g.with_mask(np.ones(g.shape)) == g and g.with_mask(np.ones(g.shape)).mask is None  # all True → None
    assert g.face_area(1).shape == ()  # unmasked: unchanged broadcastable form


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.ones((3, 3), bool), "shape"),
        (np.zeros(GRID.shape, bool), "no active cell"),
        (np.full(GRID.shape, 0.5), "boolean"),
    ],
)
def test_bad_masks_are_refused(mask, match):
    with pytest.raises(InputError, match=match):
        LatLonGrid(LAT, LON, mask=mask)
    with pytest.raises(InputError, match=match):
        GRID.with_mask(mask)


# ---------------------------------------------------------------- physics with closed coasts
@pytest.fixture(scope="module", params=sorted(MODELS))
def run_west(request):
    model = MODELS[request.param]
    c0 = _field(3, WEST)
    return request.param, model, c0, np.asarray(RUN(model, c0))


def test_mass_conserved_land_unchanged_other_basin_untouched(run_west):
    _, _, c0, c = run_west
    c0 = np.asarray(c0)
    mass0, mass = np.sum((VOL * c0)[SEA]), np.sum((VOL * c)[SEA])
    assert abs(mass - mass0) <= 1e-10 * abs(mass0)
    assert np.array_equal(c[LAND], c0[LAND])
    assert np.all(c[EAST] == 0.0)  # exactly: nothing crosses the wall
    assert np.max(np.abs(c - c0)[WEST]) > 1e-3  # but the tracer did move in its own basin


def test_tangent_linear_adjoint_identity(run_west):
    _, model, c0, _ = run_west
    rng = np.random.default_rng(4)
    dx, w = (jnp.asarray(rng.standard_normal(GRID.shape)) for _ in range(2))
    err, scale = adjoint_mismatch(lambda c: RUN(model, c), c0, dx, w)
    assert err <= 1e-12 * scale


def test_taylor_in_wind_scale_and_state():
    model = MODELS["advection-centred-cn"]
    c0 = _field(5)

    def f(s):
        return RUN(eqx.tree_at(lambda m: m.wind_scale, model, s), c0)

    eps = np.logspace(-1, -4, 4)
    r = taylor_remainders(f, jnp.asarray(1.0), jnp.asarray(1.0), eps)
    assert np.all(taylor_orders(r, eps) > 1.9), r
    # the model is linear in the state: the remainder is round-off at every ε
    dc = jnp.asarray(np.random.default_rng(6).standard_normal(GRID.shape))
    r_state = taylor_remainders(lambda c: RUN(model, c), c0, dc, eps)
    assert np.all(r_state <= 1e-10 * tree_norm(RUN(model, c0)))


def test_default_spectral_preconditioner_on_masked_cartesian_grid():
    """Default settings (spectral preconditioner, default tolerances) converge with coasts and conserve mass."""
    mask = np.ones((12, 10), bool)
    mask[4:8, 3:6] = False
    grid = CartesianGrid((12, 10), (1.2, 1.0), Neumann(), mask=mask)
    rng = np.random.default_rng(10)
    c0 = jnp.asarray(np.where(mask, 1.0 + rng.random(grid.shape), -3.0))
    wind = tuple(rng.standard_normal(grid.shape) for _ in range(2))
    for model in (Diffusion(grid, 0.02, 0.5, CrankNicolson()), AdvectionDiffusion(grid, wind, 0.02, 0.05)):
        c = np.asarray(RUN(model, c0))
        assert abs(np.sum(c[mask]) - np.sum(np.asarray(c0)[mask])) <= 1e-8 * np.sum(np.asarray(c0)[mask])
        assert np.array_equal(c[~mask], np.asarray(c0)[~mask])


def test_face_velocities_and_courant_see_closed_coasts():
    model = MODELS["advection-imex"]
    for axis, vf in enumerate(face_velocity(GRID, model.velocity)):
        assert np.all(np.asarray(vf)[~GRID.open_faces(axis)] == 0)
    unmasked = AdvectionDiffusion(LatLonGrid(LAT, LON), _wind(GRID), KAPPA, DT, IMEX(CrankNicolson()), solver=CG)
    assert 0 < model.courant_number() <= unmasked.courant_number() <= 1


def test_nondivergent_projection_on_masked_open_grid():
    grid = LatLonGrid(LAT, LON, boundaries=(Open(), Open()), mask=SEA)
    labels, n = basins(grid)
    assert n == 2 and np.all(labels[LAND] == n) and len(set(labels[WEST])) == 1 and len(set(labels[EAST])) == 1
    project = NonDivergentProjection(lx.CG(rtol=1e-13, atol=1e-13, max_steps=5000))
    raw = tuple(vf * jnp.asarray(grid.face_area(a)) for a, vf in enumerate(face_velocity(grid, _wind(grid, 2, 20.0))))
    out = jax.jit(lambda f: project(grid, f))(raw)
    scale = max(float(np.max(np.abs(f))) for f in raw)
    assert np.max(np.abs(np.asarray(net_outflow(grid, raw)))) > 1e-2 * scale
    assert np.max(np.abs(np.asarray(net_outflow(grid, out)))) < 1e-10 * scale
    for axis, f in enumerate(out):
        assert np.all(np.asarray(f)[~grid.open_faces(axis)] == 0)


# ---------------------------------------------------------------- masked background covariance
BASE = DiffusionCovariance(GRID, 0.5, 2.0e6, 4, RandomisedNormalisation(jax.random.PRNGKey(0), 50), solver=CG)
MASKED = eqx.filter_jit(lambda c: c.prepare())(MaskedCovariance.on_grid(BASE))
SQRT = eqx.filter_jit(lambda c, v: c.sqrt(v))
SQRT_ADJ = eqx.filter_jit(lambda c, x: c.sqrt_adjoint(x))


def test_masked_covariance_adjoint_and_zero_on_land():
    rng = np.random.default_rng(8)
    v, x = jnp.asarray(rng.standard_normal(GRID.n_active)), jnp.asarray(rng.standard_normal(GRID.shape))
    sv = SQRT(MASKED, v)
    assert abs(tree_dot(sv, x) - tree_dot(v, SQRT_ADJ(MASKED, x))) <= 1e-12 * tree_norm(sv) * tree_norm(x)
    assert np.all(np.asarray(sv)[LAND] == 0) and np.all(np.isfinite(np.asarray(MASKED.base.factors)))
    assert MASKED.zero_control(jnp.zeros(GRID.shape)).shape == (GRID.n_active,) == (MASKED.n_active,)
    block = BlockCovariance({"sst": MASKED, "other": DiagonalCovariance(GRID, 1.0)})
    zero = block.zero_control({"sst": jnp.zeros(GRID.shape), "other": jnp.zeros(GRID.shape)})
    assert zero["sst"].shape == (GRID.n_active,) and zero["other"].shape == GRID.shape


def test_correlations_do_not_cross_land():
    e = np.zeros(GRID.shape)
    e[2, 8] = 1.0  # a west-basin cell next to the wall
    be = np.asarray(SQRT(MASKED, SQRT_ADJ(MASKED, jnp.asarray(e))))
    assert np.all(be[EAST] == 0.0) and np.all(be[LAND] == 0.0)
    assert be[2, 7] > 0.1 * be[2, 8] > 0
    # the base B keeps masked cells isolated, with unit correlation with themselves
    land = np.zeros(GRID.shape)
    land[4, 4] = 1.0
    b_land = np.asarray(SQRT(MASKED.base, SQRT_ADJ(MASKED.base, jnp.asarray(land))))
    np.testing.assert_allclose(b_land[4, 4], 0.5, rtol=1e-8)
    assert np.sum(np.abs(b_land)) - abs(b_land[4, 4]) < 1e-10


def test_masked_strong_constraint_4dvar():
    model, n_steps = MODELS["advection-centred-cn"], 4
    truth = rollout(model, _field(9, land_value=0.0), n_steps)
    operator = GriddedObservation(GRID, np.flatnonzero(SEA)[::2])
    steps = (0, 2, 4)
    noise = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (len(steps), operator.n_obs))
    obs = ObservationSet(operator, steps, operator.apply_window(truth[jnp.asarray(steps)]) + noise, 0.1)
    xi = jax.random.normal(jax.random.PRNGKey(3), (GRID.n_active,))
    background = truth[0] + SQRT(MASKED, xi)
    problem = StrongConstraint4DVar(model, background, MASKED, obs, n_steps=n_steps)
    assert problem.zero_control().shape == (GRID.n_active,)
    weak = WeakConstraint4DVar(model, background, MASKED, DiagonalCovariance(GRID, 1e-4), obs, n_steps=n_steps)
    assert weak.zero_control().v.shape == (GRID.n_active,) and weak.zero_control().w.shape == (n_steps,) + GRID.shape
    result = GaussNewton(max_outer=3, cg_max_steps=200, cg_tol=1e-8).solve(problem)
    assert bool(result.converged) and result.v.shape == (GRID.n_active,)
    increment = np.asarray(result.x0 - background)
    assert np.all(increment[LAND] == 0.0)
    err_a = np.sqrt(np.mean((np.asarray(result.x0) - np.asarray(truth[0]))[SEA] ** 2))
    err_b = np.sqrt(np.mean((np.asarray(background) - np.asarray(truth[0]))[SEA] ** 2))
    assert err_a < 0.5 * err_b


# ---------------------------------------------------------------- refusals
BOX = CartesianGrid((8, 8), (1.0, 1.0), Periodic(), mask=~np.eye(8, dtype=bool))


def test_unsupported_components_refuse_masked_grids():
    with pytest.raises(InputError, match="RandomisedNormalisation"):
        DiffusionCovariance(BOX, 1.0, 0.2, 4)  # ExactNormalisation by default
    with pytest.raises(InputError, match="DiffusionCovariance"):
        SpectralGaussianCovariance(BOX, 1.0, 0.2)
    with pytest.raises(InputError, match="does not support domain masks"):
        Burgers(BOX, 0.01, 0.01)
    with pytest.raises(InputError, match="does not support domain masks"):
        ShallowWater(CartesianGrid((8, 8), (1.0, 1.0), (Neumann(), Periodic()), mask=~np.eye(8, dtype=bool)), 1.0, 0.01)
    with pytest.raises(InputError, match="no mask"):
        MaskedCovariance.on_grid(
            DiffusionCovariance(LatLonGrid(LAT, LON), 1.0, 2e6, 4, RandomisedNormalisation(jax.random.PRNGKey(0), 4))
        )
