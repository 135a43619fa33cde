"""Benchmark problems for every model at n × n (Lorenz-96 at its literature size N = 40).

Each factory returns (model, state) for a stiff-but-realistic setting: implicit steps beyond
the explicit stability limit (κΔt/Δx² ≈ 13 for diffusion, Courant ≈ 2 for transport,
gravity-wave CFL ≈ 2 for shallow water).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from models import CartesianGrid, Periodic
from models.advection_diffusion import AdvectionDiffusion
from models.burgers import Burgers
from models.lorenz96 import RK4, ImplicitDiffrax, Lorenz96
from models.operators import Centred
from models.shallow_water import FPlane, ShallowWater, SWState
from models.time_schemes import CrankNicolson


def _grid(n):
    return CartesianGrid((n, n), (1.0, 1.0), Periodic())


def _smooth(grid, seed, amplitude=1.0):
    """A smooth random field: a few low Fourier modes."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(*grid.coords().values(), indexing="ij")
    field = sum(
        np.cos(2 * np.pi * (rng.integers(1, 4) * x + rng.integers(1, 4) * y) + rng.uniform(0, 2 * np.pi))
        for _ in range(4)
    )
    return jnp.asarray(amplitude * field / 4)


def advection_diffusion(n):
    grid = _grid(n)
    y, x = np.meshgrid(*grid.coords().values(), indexing="ij")
    # a cellular (divergence-free) flow: u = sin(2πx)cos(2πy), v = −cos(2πx)sin(2πy)
    u = np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y)
    v = -np.cos(2 * np.pi * x) * np.sin(2 * np.pi * y)
    dt = 2.0 / n  # Courant number ≈ 2
    kappa = 2.0 / (n * n * dt)  # κΔt/Δx² ≈ 2
    model = AdvectionDiffusion(
        grid, (jnp.asarray(v), jnp.asarray(u)), kappa, dt, CrankNicolson(), advection_scheme=Centred()
    )
    return model, _smooth(grid, 1) + 2.0


def burgers_2d(n):
    grid = _grid(n)
    dt = 1.0 / n  # Courant number ≈ 1 for |u| ≈ 1
    nu = 2.0 / (n * n * dt)  # νΔt/Δx² ≈ 2
    state = jnp.stack([_smooth(grid, 2, 0.5), _smooth(grid, 3, 0.5)])
    return Burgers(grid, nu, dt, CrankNicolson()), state


def shallow_water(n):
    grid = _grid(n)
    g, depth = 9.81, 1e-3  # gravity-wave speed ≈ 0.1 (domain units per time unit)
    c = np.sqrt(g * depth)
    dt = 2.0 / (n * c)  # gravity-wave CFL ≈ 2
    model = ShallowWater(grid, depth, dt, g=g, coriolis=FPlane(0.05 / dt))
    eta = 1e-2 * depth * _smooth(grid, 4)
    return model, SWState(eta, jnp.zeros(grid.shape), jnp.zeros(grid.shape))


def _l96(stepper):
    def make(n=None):
        x0 = 8.0 + jax.random.normal(jax.random.PRNGKey(5), (40,))
        return Lorenz96(40, 8.0, 0.05, stepper), x0

    make.fixed_size = True
    return make


FACTORIES = {
    "advection_diffusion": advection_diffusion,
    "burgers_2d": burgers_2d,
    "shallow_water": shallow_water,
    "lorenz96_rk4": _l96(RK4()),
    "lorenz96_implicit": _l96(ImplicitDiffrax()),
}
