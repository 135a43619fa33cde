"""Diffusion model: accuracy against the heat equation, checkpointed gradients, mass, preconditioners, bad input.

Tangent-linear, adjoint, Taylor, κ-gradient, vmap and jit contracts: tests/test_contracts.py (tests/registry.py).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from models import (
    CartesianGrid,
    ClosedPoles,
    GridMismatchError,
    InputError,
    LatLonGrid,
    NonFiniteError,
    Periodic,
)
from models.diffusion import Diffusion
from models.preconditioners import (
    JacobiPreconditioner,
    NoPreconditioner,
    SpectralPreconditioner,
)
from models.rollout import NestedCheckpointing, integrate, rollout
from models.time_schemes import BackwardEuler, CrankNicolson

TIGHT = lx.CG(rtol=1e-14, atol=1e-14, max_steps=500)
GRID = CartesianGrid((12, 12), (1.0, 1.0), Periodic())
LATLON = LatLonGrid(np.arange(-90, 91, 15.0), np.arange(0, 360, 20.0), radius=1.0, poles=ClosedPoles())


def mode(grid, k=1):
    y, x = np.meshgrid(*grid.coords().values(), indexing="ij")
    return jnp.asarray(np.sin(2 * np.pi * k * x) * np.cos(2 * np.pi * k * y))


def random_field(grid, seed, lo=0.5, hi=1.5):
    return lo + (hi - lo) * jax.random.uniform(jax.random.PRNGKey(seed), grid.shape)


@pytest.mark.parametrize("scheme,order", [(BackwardEuler(), 1.0), (CrankNicolson(), 2.0)])
def test_fourier_mode_decay_order_in_time(scheme, order):
    n, kappa, t_end = 16, 0.05, 0.5
    grid = CartesianGrid((n, n), (1.0, 1.0), Periodic())
    u0 = mode(grid)
    lam_h = 2 * (4 * n**2) * np.sin(np.pi / n) ** 2  # discrete Laplacian eigenvalue of the mode
    exact = u0 * np.exp(-kappa * lam_h * t_end)
    errors = []
    for steps in (10, 20, 40):
        model = Diffusion(grid, kappa, t_end / steps, scheme, solver=TIGHT)
        errors.append(float(jnp.max(jnp.abs(integrate(model, u0, steps) - exact))))
    observed = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    np.testing.assert_allclose(observed, order, atol=0.12)


def test_fourier_mode_decay_second_order_in_space():
    kappa, t_end, errors = 0.05, 0.2, []
    for n in (16, 32, 64):
        grid = CartesianGrid((n, n), (1.0, 1.0), Periodic())
        model = Diffusion(grid, kappa, t_end / 100, CrankNicolson(), solver=TIGHT)
        u0 = mode(grid)
        exact = u0 * np.exp(-kappa * 8 * np.pi**2 * t_end)
        errors.append(float(jnp.max(jnp.abs(integrate(model, u0, 100) - exact))))
    observed = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    np.testing.assert_allclose(observed, 2.0, atol=0.1)


def test_model_gradient_through_filter_grad_and_checkpointing_agree():
    u0 = random_field(GRID, 11)
    model = Diffusion(GRID, random_field(GRID, 12), 0.01, solver=TIGHT)

    def loss(m, checkpointing):
        return jnp.sum(integrate(m, u0, 9, checkpointing=checkpointing) ** 2)

    plain = eqx.filter_grad(lambda m: loss(m, NestedCheckpointing(levels=1)))(model).kappa
    nested = eqx.filter_grad(lambda m: loss(m, NestedCheckpointing(levels=3)))(model).kappa
    np.testing.assert_allclose(np.asarray(nested), np.asarray(plain), rtol=1e-10)
    traj = rollout(model, u0, 9, checkpointing=NestedCheckpointing(levels=2))
    assert traj.shape == (10,) + GRID.shape
    np.testing.assert_allclose(np.asarray(traj[-1]), np.asarray(integrate(model, u0, 9)), rtol=1e-12)


def test_mass_conserved_on_sphere():
    model = Diffusion(LATLON, random_field(LATLON, 13), 0.05, solver=TIGHT)
    u0 = random_field(LATLON, 14)
    vol = jnp.broadcast_to(jnp.asarray(LATLON.cell_volume()), LATLON.shape)
    mass0 = jnp.sum(vol * u0)
    mass1 = jnp.sum(vol * integrate(model, u0, 5))
    assert abs(float(mass1 - mass0)) <= 1e-12 * float(mass0)


def test_spectral_preconditioner_is_exact_for_uniform_diffusivity():
    grid = CartesianGrid((32, 32), (1.0, 1.0), Periodic())
    u0 = random_field(grid, 15)
    iters = {}
    for name, pre in [
        ("none", NoPreconditioner()),
        ("jacobi", JacobiPreconditioner()),
        ("spectral", SpectralPreconditioner()),
    ]:
        model = Diffusion(grid, 0.2, 13 / 32**2 / 0.2, preconditioner=pre, solver=lx.CG(rtol=1e-10, atol=1e-10))
        u1, iters[name] = model.step_with_stats(u0)
        if name == "none":
            reference = u1
        np.testing.assert_allclose(np.asarray(u1), np.asarray(reference), atol=1e-8)
    assert int(iters["spectral"]) <= 2 < int(iters["none"])


def test_bad_input_raises_project_errors():
    with pytest.raises(InputError, match="positive"):
        Diffusion(GRID, -0.1, 0.01)
    with pytest.raises(InputError, match="dt"):
        Diffusion(GRID, 0.1, 0.0)
    with pytest.raises(GridMismatchError, match=r"\(12, 12\)"):
        Diffusion(GRID, jnp.ones((12, 11)), 0.01)
    with pytest.raises(NonFiniteError):
        Diffusion(GRID, jnp.full((12, 12), jnp.nan), 0.01)
    model = Diffusion(GRID, 0.1, 0.01)
    with pytest.raises(NonFiniteError, match="NaN"):
        integrate(model, jnp.full(GRID.shape, jnp.nan), 2)
    with pytest.raises(GridMismatchError, match="shape"):
        integrate(model, jnp.zeros((4, 4)), 2)
    with pytest.raises(InputError, match="Cartesian"):
        Diffusion(LATLON, 0.1, 0.01, preconditioner=SpectralPreconditioner()).step(random_field(LATLON, 0))
