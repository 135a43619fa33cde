"""Finite-volume operators on any grid: face gradients, flux divergence, diffusion, advection."""

from __future__ import annotations

from typing import cast

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from models.errors import InputError
from models.grid import AbstractGrid, Dirichlet, Neumann, Open, Periodic


class AbstractAdvectionScheme(eqx.Module):
    """How the tracer value on a face is reconstructed from the two cells beside it."""


class Upwind(AbstractAdvectionScheme):
    """First-order upwind: monotone, diffusive, stable for explicit steps with CFL ≤ 1."""


class Centred(AbstractAdvectionScheme):
    """Second-order centred: non-diffusive; for implicit steps (oscillatory when explicit)."""


def _move(u: Array, axis: int) -> Array:
    return jnp.moveaxis(u, axis, 0)


def _unmove(u: Array, axis: int) -> Array:
    return jnp.moveaxis(u, 0, axis)


def pad_ghosts(grid: AbstractGrid, u: Float[Array, "..."], axis: int) -> Float[Array, "..."]:
    """Add one ghost cell at each end of `axis` so that face differences honour the boundary."""
    boundary = grid.boundaries[axis]
    v = _move(u, axis)
    if isinstance(boundary, Periodic):
        lo, hi = v[-1:], v[:1]
    elif isinstance(boundary, Dirichlet):
        lo, hi = 2 * boundary.value - v[:1], 2 * boundary.value - v[-1:]
    else:  # Neumann: mirror, zero gradient
        lo, hi = v[:1], v[-1:]
    return _unmove(jnp.concatenate([lo, v, hi], axis=0), axis)


def face_mean(grid: AbstractGrid, c: Float[ArrayLike, "..."], axis: int) -> Float[Array, "..."]:
    """Value of a cell field on the n+1 faces normal to `axis` (arithmetic mean of neighbours)."""
    c = jnp.broadcast_to(jnp.asarray(c, dtype=float), grid.shape)
    v = _move(c, axis)
    if isinstance(grid.boundaries[axis], Periodic):
        lo, hi = v[-1:], v[:1]
    else:
        lo, hi = v[:1], v[-1:]
    padded = jnp.concatenate([lo, v, hi], axis=0)
    return _unmove(0.5 * (padded[1:] + padded[:-1]), axis)


def face_gradient(grid: AbstractGrid, u: Float[Array, "..."], axis: int) -> Float[Array, "..."]:
    """Normal derivative of a cell field on the n+1 faces normal to `axis`."""
    p = _move(pad_ghosts(grid, u, axis), axis)
    return _unmove(p[1:] - p[:-1], axis) / jnp.asarray(grid.face_distance(axis))


def flux_divergence(grid: AbstractGrid, fluxes: tuple[Float[Array, "..."], ...]) -> Float[Array, "..."]:
    """Divergence of face-normal flux densities (one per axis, on n+1 faces): net outflow per volume."""
    total = 0.0
    for axis, flux in enumerate(fluxes):
        f = _move(flux * jnp.asarray(grid.face_area(axis)), axis)
        total = total + _unmove(f[1:] - f[:-1], axis)
    return total / jnp.asarray(grid.cell_volume())


def diffusion_weights(grid: AbstractGrid, kappa: Float[ArrayLike, "..."]) -> tuple[Array, ...]:
    """Face conductances κ_f·A_f/d_f on the n+1 faces normal to each axis (hoist out of solver loops)."""
    return tuple(
        face_mean(grid, kappa, a) * jnp.asarray(grid.face_area(a) / grid.face_distance(a)) for a in range(grid.ndim)
    )


def diffusion_flux_difference(
    grid: AbstractGrid, u: Float[Array, "..."], weights: tuple[Array, ...]
) -> Float[Array, "..."]:
    """Net diffusive inflow V·∇·(κ∇u) of each cell, given face conductances from `diffusion_weights`."""
    total = 0.0
    for axis, w in enumerate(weights):
        flux = jnp.diff(pad_ghosts(grid, u, axis), axis=axis) * w
        total = total + jnp.diff(flux, axis=axis)
    return cast(Array, total)  # an array: the grid has at least one axis


def diffusion(grid: AbstractGrid, u: Float[Array, "..."], kappa: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
    """Conservative diffusion ∇·(κ∇u) with a scalar or cell-field diffusivity."""
    return diffusion_flux_difference(grid, u, diffusion_weights(grid, kappa)) / jnp.asarray(grid.cell_volume())


def laplacian(grid: AbstractGrid, u: Float[Array, "..."]) -> Float[Array, "..."]:
    """Laplacian ∇²u (with the grid's metric terms)."""
    return diffusion(grid, u, 1.0)


def face_velocity(grid: AbstractGrid, velocity: tuple[Float[ArrayLike, "..."], ...]) -> tuple[Array, ...]:
    """Face-normal velocities from cell-centred components (one per axis); zero on closed walls and coasts."""
    out = []
    for axis, comp in enumerate(velocity):
        vf = face_mean(grid, comp, axis)
        if isinstance(grid.boundaries[axis], Neumann):
            vf = _unmove(_move(vf, axis).at[jnp.array([0, -1])].set(0.0), axis)
        if grid.mask is not None:  # closed coasts: no flow through a face beside a masked cell
            vf = vf * jnp.asarray(grid.open_faces(axis))
        out.append(vf)
    return tuple(out)


def advective_flux(
    grid: AbstractGrid,
    c: Float[Array, "..."],
    vface: Float[Array, "..."],
    axis: int,
    scheme: AbstractAdvectionScheme,
    inflow: Float[Array, "..."] | None = None,
) -> Float[Array, "..."]:
    """Advective flux density v·c on the n+1 faces normal to `axis` (upwind at open boundaries).

    On an `Open()` axis the inflow value on a boundary face is `inflow` (a cell field of boundary
    values) in the cell beside that face; outflow carries the interior value out.
    """
    boundary = grid.boundaries[axis]
    v = _move(c, axis)
    if isinstance(boundary, Periodic):
        padded = jnp.concatenate([v[-1:], v, v[:1]], axis=0)
    elif isinstance(boundary, Dirichlet):
        ghost = jnp.full_like(v[:1], boundary.value)
        padded = jnp.concatenate([ghost, v, ghost], axis=0)
    elif isinstance(boundary, Open):
        if inflow is None:
            raise InputError(
                f"axis {grid.dims[axis]!r} is Open(): give the boundary values that inflow carries in "
                "(inflow=<field of the grid's shape or a scalar>)."
            )
        b = _move(jnp.broadcast_to(jnp.asarray(inflow, dtype=v.dtype), grid.shape), axis)
        padded = jnp.concatenate([b[:1], v, b[-1:]], axis=0)
    else:
        padded = jnp.concatenate([v[:1], v, v[-1:]], axis=0)
    left, right = padded[:-1], padded[1:]
    w = _move(vface, axis)
    upwind = jnp.where(w > 0, left, right)
    if isinstance(scheme, Centred):
        centred = 0.5 * (left + right)
        if not isinstance(boundary, Periodic):
            # upwind on the two boundary faces; concatenation (not a scatter) keeps the flux transposable
            centred = jnp.concatenate([upwind[:1], centred[1:-1], upwind[-1:]], axis=0)
        face_value = centred
    else:
        face_value = upwind
    return _unmove(w * face_value, axis)


def advection(
    grid: AbstractGrid,
    c: Float[Array, "..."],
    vfaces: tuple[Float[Array, "..."], ...],
    scheme: AbstractAdvectionScheme,
    inflow: Float[Array, "..."] | None = None,
) -> Float[Array, "..."]:
    """Conservative advective flux divergence ∇·(v c), with face-normal velocities `vfaces` (inflow: Open axes)."""
    return flux_divergence(grid, tuple(advective_flux(grid, c, vf, a, scheme, inflow) for a, vf in enumerate(vfaces)))


def gradient(grid: AbstractGrid, u: Float[Array, "..."]) -> tuple[Array, ...]:
    """Cell-centred gradient components (mean of the two face gradients along each axis)."""
    out = []
    for axis in range(grid.ndim):
        g = _move(face_gradient(grid, u, axis), axis)
        out.append(_unmove(0.5 * (g[1:] + g[:-1]), axis))
    return tuple(out)


def divergence(grid: AbstractGrid, vector: tuple[Float[ArrayLike, "..."], ...]) -> Float[Array, "..."]:
    """Divergence of a cell-centred vector field (face-normal means, then flux divergence)."""
    return flux_divergence(grid, face_velocity(grid, vector))
