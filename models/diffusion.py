"""Diffusion ∂u/∂t = ∇·(κ∇u) with a spatially varying diffusivity, stepped implicitly by matrix-free CG."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float

from models.base import AbstractModel, as_field, check_positive
from models.grid import AbstractGrid, CartesianGrid
from models.helmholtz import solve_helmholtz
from models.operators import diffusion
from models.preconditioners import (
    AbstractPreconditioner,
    JacobiPreconditioner,
    SpectralPreconditioner,
)
from models.time_schemes import AbstractThetaScheme, BackwardEuler


def default_preconditioner(grid: AbstractGrid) -> AbstractPreconditioner:
    """Spectral (FFT/DCT/DST) on Cartesian grids, Jacobi elsewhere."""
    return SpectralPreconditioner() if isinstance(grid, CartesianGrid) else JacobiPreconditioner()


class Diffusion(AbstractModel):
    """Heat equation ∂u/∂t = ∇·(κ∇u); θ-scheme in time, conservative finite volumes in space.

    On a masked grid coasts are closed walls (no flux beside a masked cell) and masked cells keep their value.
    """

    grid: AbstractGrid = eqx.field(static=True)
    kappa: Float[Array, "..."]
    dt: float = eqx.field(static=True)
    scheme: AbstractThetaScheme = eqx.field(static=True)
    solver: lx.AbstractLinearSolver = eqx.field(static=True)
    preconditioner: AbstractPreconditioner = eqx.field(static=True)

    def __init__(
        self,
        grid: AbstractGrid,
        kappa: Float[ArrayLike, "..."],
        dt: float,
        scheme: AbstractThetaScheme = BackwardEuler(),
        solver: lx.AbstractLinearSolver = lx.CG(rtol=1e-10, atol=1e-10),
        preconditioner: AbstractPreconditioner | None = None,
    ):
        grid.check_field(kappa, "kappa (diffusivity)")
        check_positive(kappa, "kappa (diffusivity)", "Diffusivity is a physical rate: use a positive value or field.")
        check_positive(dt, "dt (time step)")
        self.grid = grid
        self.kappa = as_field(kappa)
        self.dt = float(dt)
        self.scheme = scheme
        self.solver = solver
        self.preconditioner = preconditioner if preconditioner is not None else default_preconditioner(grid)

    def state_shape(self):
        return jax.ShapeDtypeStruct(self.grid.shape, jnp.float64)

    def tendency(self, u: Float[Array, "..."]) -> Float[Array, "..."]:
        """Right-hand side ∇·(κ∇u)."""
        return diffusion(self.grid, u, self.kappa)

    def step_with_stats(self, u: Float[Array, "..."], t: ArrayLike = 0.0) -> tuple[Float[Array, "..."], Array]:
        """One θ-step and the number of CG iterations it took."""
        theta = self.scheme.theta
        rhs = u + (1.0 - theta) * self.dt * self.tendency(u) if theta < 1 else u
        new, steps = solve_helmholtz(self.grid, rhs, theta * self.dt, self.kappa, self.solver, self.preconditioner)
        if self.grid.mask is not None:  # masked rows are the identity: keep those cells exactly
            new = jnp.where(jnp.asarray(self.grid.mask), new, u)
        return new, steps

    def step(self, u: Float[Array, "..."], t: ArrayLike = 0.0) -> Float[Array, "..."]:
        """Advance the temperature/tracer field by one implicit step."""
        return self.step_with_stats(u, t)[0]
