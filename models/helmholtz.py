"""Implicit Helmholtz solve u − c ∇·(κ∇u) = f, the building block of implicit diffusion and gravity waves."""

from __future__ import annotations

import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float

from models.grid import AbstractGrid
from models.linear_solve import implicit_solve
from models.operators import diffusion_flux_difference, diffusion_weights
from models.preconditioners import AbstractPreconditioner


def solve_helmholtz(
    grid: AbstractGrid,
    rhs: Float[Array, "..."],
    coef: Float[ArrayLike, ""],
    kappa: Float[ArrayLike, "..."],
    solver: lx.AbstractLinearSolver,
    preconditioner: AbstractPreconditioner,
) -> tuple[Float[Array, "..."], Array]:
    """Solve u − c ∇·(κ∇u) = rhs (Dirichlet walls included) by preconditioned CG; return (u, iterations).

    The system is solved in its symmetric form V(I − c ∇·(κ∇)) scaled by the mean cell
    volume, so CG applies on every grid (metric terms included).
    """
    vol = jnp.broadcast_to(jnp.asarray(grid.cell_volume()), grid.shape)
    mean_vol = jnp.mean(vol)
    weight = vol / mean_vol
    faces = tuple(w * (coef / mean_vol) for w in diffusion_weights(grid, kappa))
    zero = jnp.zeros(grid.shape, dtype=rhs.dtype)
    boundary_term = diffusion_flux_difference(grid, zero, faces)  # affine part from Dirichlet walls

    def matvec(u):
        return weight * u - (diffusion_flux_difference(grid, u, faces) - boundary_term)

    b = weight * rhs + boundary_term
    return implicit_solve(matvec, b, solver, preconditioner=preconditioner.inverse(grid, coef, kappa), symmetric=True)
