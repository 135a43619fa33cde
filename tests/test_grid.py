"""Grids and finite-volume operators: geometry, consistency, conservation, adjoint symmetry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import (
    CartesianGrid,
    ClosedPoles,
    Dirichlet,
    ExcludedPoles,
    GridMismatchError,
    InputError,
    LatLonGrid,
    Neumann,
    Periodic,
)
from models.operators import (
    Centred,
    Upwind,
    advection,
    diffusion,
    divergence,
    face_velocity,
    gradient,
    laplacian,
)


def global_grid(poles=ClosedPoles(), step=10.0):
    return LatLonGrid(np.arange(-90, 90 + step / 2, step), np.arange(0, 360, step), poles=poles)


def test_latlon_areas_sum_to_sphere():
    for poles in (ClosedPoles(), ExcludedPoles()):
        g = global_grid(poles)
        total = np.sum(np.broadcast_to(g.cell_volume(), g.shape))
        if isinstance(poles, ClosedPoles):
            np.testing.assert_allclose(total, 4 * np.pi * g.radius**2, rtol=1e-12)
            assert g.shape == (19, 36)
        else:
            assert g.shape == (17, 36) and total < 4 * np.pi * g.radius**2


def test_latlon_pole_faces_are_closed():
    g = global_grid()
    area = np.broadcast_to(g.face_area(0), (g.shape[0] + 1, g.shape[1]))
    assert np.all(np.abs(area[0]) < 1e-6 * area.max()) and np.all(np.abs(area[-1]) < 1e-6 * area.max())
    assert np.all(np.asarray(g.face_distance(1)) > 0)  # polar caps keep a finite zonal spacing


@pytest.mark.parametrize("bc", [Periodic(), Neumann()])
def test_cartesian_laplacian_second_order(bc):
    errs = []
    for n in (16, 32):
        g = CartesianGrid((n, n), (1.0, 1.0), bc)
        y, x = np.meshgrid(*g.coords().values(), indexing="ij")
        u = np.cos(2 * np.pi * x) * np.cos(2 * np.pi * y)
        errs.append(np.max(np.abs(laplacian(g, jnp.asarray(u)) + 8 * np.pi**2 * u)))
    assert 3.6 < errs[0] / errs[1] < 4.4


def test_latlon_laplacian_of_spherical_harmonic():
    # Y_1^0 = sin(lat) is an eigenfunction of the spherical Laplacian with eigenvalue -2/a^2.
    errs = []
    for step in (6.0, 3.0):
        g = LatLonGrid(np.arange(-90 + step / 2, 90, step), np.arange(0, 360, step), radius=1.0)
        lat = np.deg2rad(np.asarray(g.lat))[:, None] * np.ones(g.shape)
        u = np.sin(lat)
        errs.append(np.max(np.abs(laplacian(g, jnp.asarray(u)) + 2 * u)[3:-3]))
    assert errs[1] < errs[0] / 3.0


def test_dirichlet_diffusion_sees_wall_value():
    g = CartesianGrid((8,), (1.0,), Dirichlet(2.0))
    np.testing.assert_allclose(diffusion(g, jnp.full(8, 2.0), 0.3), 0.0, atol=1e-12)
    assert float(diffusion(g, jnp.zeros(8), 1.0)[0]) > 0


@pytest.mark.parametrize("grid", [CartesianGrid((12, 10), (1.0, 2.0), (Neumann(), Periodic())), global_grid()])
def test_fluxes_conserve_mass(grid):
    key1, key2, key3 = jax.random.split(jax.random.PRNGKey(0), 3)
    c = jax.random.uniform(key1, grid.shape)
    kappa = 1.0 + jax.random.uniform(key2, grid.shape)
    vel = tuple(jax.random.normal(k, grid.shape) for k in jax.random.split(key3, 2))
    vol = jnp.broadcast_to(jnp.asarray(grid.cell_volume()), grid.shape)
    scale = jnp.sum(vol * jnp.abs(c))
    for scheme in (Upwind(), Centred()):
        tend = advection(grid, c, face_velocity(grid, vel), scheme)
        assert abs(float(jnp.sum(vol * tend))) < 1e-12 * float(scale) * float(jnp.max(jnp.abs(tend)) + 1)
    assert abs(float(jnp.sum(vol * diffusion(grid, c, kappa)))) < 1e-12 * float(scale) * 100


@pytest.mark.parametrize("grid", [CartesianGrid((9, 7), (1.0, 1.0), (Dirichlet(0.0), Neumann())), global_grid()])
def test_diffusion_is_self_adjoint_in_volume_inner_product(grid):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    a, b = jax.random.normal(k1, grid.shape), jax.random.normal(k2, grid.shape)
    kappa = 1.0 + jax.random.uniform(k3, grid.shape)
    vol = jnp.broadcast_to(jnp.asarray(grid.cell_volume()), grid.shape)
    lhs = jnp.sum(vol * b * diffusion(grid, a, kappa))
    rhs = jnp.sum(vol * a * diffusion(grid, b, kappa))
    assert abs(float(lhs - rhs)) <= 1e-12 * float(jnp.sum(vol * jnp.abs(a * diffusion(grid, b, kappa))))


def test_gradient_and_divergence_of_linear_fields():
    g = CartesianGrid((8, 8), (1.0, 1.0), Neumann())
    y, x = np.meshgrid(*g.coords().values(), indexing="ij")
    gy, gx = gradient(g, jnp.asarray(3 * x - 2 * y))
    np.testing.assert_allclose(np.asarray(gx)[:, 1:-1], 3.0, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gy)[1:-1, :], -2.0, rtol=1e-12)
    p = CartesianGrid((8, 8), (1.0, 1.0), Periodic())
    yy, xx = np.meshgrid(*p.coords().values(), indexing="ij")
    div = divergence(p, (jnp.asarray(np.sin(2 * np.pi * xx)), jnp.asarray(np.sin(2 * np.pi * yy))))
    assert float(jnp.max(jnp.abs(div))) < 1e-12  # each component is constant along its own axis


def test_bad_grids_raise():
    with pytest.raises(InputError, match="positive"):
        CartesianGrid((8, 8), (1.0, -1.0))
    with pytest.raises(InputError, match="one length per axis"):
        CartesianGrid((8, 8), (1.0,))
    with pytest.raises(InputError, match="increasing"):
        LatLonGrid(np.arange(90, -91, -10.0), np.arange(0, 360, 10.0))
    with pytest.raises(InputError, match="360"):
        LatLonGrid(np.arange(20, 91, 10.0), np.arange(0, 100, 10.0), boundaries=(Neumann(), Periodic()))
    with pytest.raises(GridMismatchError, match=r"shape \(8, 8\)"):
        CartesianGrid((8, 8), (1.0, 1.0)).check_field(np.ones((8, 7)), "kappa")
