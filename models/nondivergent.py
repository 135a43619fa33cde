"""Discretely non-divergent face fluxes: remove the divergent part of a wind by a potential-flow projection.

A wind interpolated to the faces of a finite-volume grid is not discretely divergence-free,
so flux-form advection of a large uniform field (e.g. 5500 m of geopotential height) gets
spurious sources c·∇·v. `NonDivergentProjection` removes them from the face volume fluxes
F (one array per axis, n+1 faces, F = v_f·A_f):

1. boundary consistency: the net volume flux N out of the domain through its open
   (non-periodic) boundary faces is removed by a uniform normal velocity N/ΣA over those
   faces, so that a non-divergent interior flux can match them;
2. projection: the velocity potential φ solves ∇·(A/d ∇φ) = ∇·F with zero normal gradient on
   the boundary (lineax CG on the SPD form with the constant null space pinned), and
   F ← F − (A/d)∇φ on interior faces, leaving the boundary normal fluxes of step 1 untouched.

The result has ∇·F = 0 in every cell to the solver's tolerance. Both steps are linear in F,
so projecting interpolated sample winds equals interpolating projected ones, and a
`wind_scale` factor commutes with the projection. Derivatives with respect to the wind come
from the implicit function theorem through `implicit_solve`.
"""

from __future__ import annotations

import abc
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float

from models.grid import AbstractGrid, Periodic
from models.linear_solve import implicit_solve
from models.operators import diffusion_flux_difference, diffusion_weights, pad_ghosts


class AbstractFluxCorrection(eqx.Module):
    """What is done to face volume fluxes before they advect a tracer."""

    @abc.abstractmethod
    def __call__(self, grid: AbstractGrid, fluxes: tuple[Float[Array, "..."], ...]) -> tuple[Array, ...]:
        """The corrected face volume fluxes (one array per axis, on n+1 faces)."""


class NoFluxCorrection(AbstractFluxCorrection):
    """Advect with the interpolated face fluxes as they are."""

    def __call__(self, grid, fluxes):
        return tuple(fluxes)


def net_outflow(grid: AbstractGrid, fluxes: tuple[Float[Array, "..."], ...]) -> Float[Array, "..."]:
    """Net volume flux out of each cell, V·∇·F (zero everywhere for a discretely non-divergent flux)."""
    total = 0.0
    for axis, flux in enumerate(fluxes):
        total = total + jnp.diff(jnp.broadcast_to(flux, _face_shape(grid, axis)), axis=axis)
    return cast(Array, total)  # an array: the grid has at least one axis


def _face_shape(grid: AbstractGrid, axis: int) -> tuple[int, ...]:
    shape = list(grid.shape)
    shape[axis] += 1
    return tuple(shape)


def _boundary_mask(grid: AbstractGrid, axis: int) -> Array:
    """1 on the two boundary faces of a non-periodic axis, 0 elsewhere (broadcast to the face shape)."""
    n = grid.shape[axis]
    m = jnp.zeros(n + 1)
    if not isinstance(grid.boundaries[axis], Periodic):
        m = m.at[0].set(1.0).at[n].set(1.0)
    shape = [1] * grid.ndim
    shape[axis] = n + 1
    return jnp.broadcast_to(m.reshape(shape), _face_shape(grid, axis))


def basins(grid: AbstractGrid) -> tuple[np.ndarray, int]:
    """Label 0…K−1 of the connected region ("basin") of active cells around each cell, K on masked cells; and K.

    Two cells are connected through a face where `grid.open_faces` is true (periodic wraps included).
    """
    active = grid.active
    if grid.mask is None:
        return np.zeros(grid.shape, dtype=np.int64), 1
    big = grid.size
    labels = np.where(active, np.arange(grid.size).reshape(grid.shape), big)
    while True:
        new = labels.copy()
        for axis in range(grid.ndim):
            ok = np.moveaxis(grid.open_faces(axis), axis, 0)
            a = np.moveaxis(new, axis, 0)  # a view: updates land in `new`
            pair = np.minimum(a[:-1], a[1:])
            a[:-1] = np.where(ok[1:-1], np.minimum(a[:-1], pair), a[:-1])
            a[1:] = np.where(ok[1:-1], np.minimum(a[1:], pair), a[1:])
            if isinstance(grid.boundaries[axis], Periodic):
                wrap = np.where(ok[0], np.minimum(a[0], a[-1]), big)
                a[0], a[-1] = np.minimum(a[0], wrap), np.minimum(a[-1], wrap)
        if np.array_equal(new, labels):
            break
        labels = new
    roots, inverse = np.unique(labels[active], return_inverse=True)
    out = np.full(grid.shape, len(roots), dtype=np.int64)
    out[active] = inverse
    return out, len(roots)


def _boundary_labels(grid: AbstractGrid, labels: np.ndarray, n_basins: int, axis: int) -> np.ndarray:
    """Basin of the cell beside each boundary face of a non-periodic axis; n_basins on every other face."""
    lab = np.moveaxis(labels, axis, 0)
    out = np.full((grid.shape[axis] + 1,) + lab.shape[1:], n_basins, dtype=np.int64)
    if not isinstance(grid.boundaries[axis], Periodic):
        out[0], out[-1] = lab[0], lab[-1]
    return np.moveaxis(out, 0, axis)


def _basin_sums(x: Array, labels: np.ndarray, n_basins: int) -> Array:
    """Sum of x over each basin (masked entries, labelled n_basins, dropped)."""
    if n_basins == 1 and not np.any(labels):
        return jnp.sum(x)[None]
    return jax.ops.segment_sum(x.ravel(), jnp.asarray(labels.ravel()), num_segments=n_basins + 1)[:n_basins]


def _per_basin(values: Array, labels: np.ndarray) -> Array:
    """values[label] on every cell or face; zero where the label is n_basins (masked or interior)."""
    return jnp.concatenate([values, jnp.zeros(1, values.dtype)])[jnp.asarray(labels)]


class NonDivergentProjection(AbstractFluxCorrection):
    """Project face fluxes onto discretely non-divergent ones (boundary fluxes balanced, potential part removed).

    On a masked grid each basin (connected region of active cells) is balanced and projected on
    its own; masked cells are decoupled (identity rows, zero potential), so the problem stays regular.
    """

    solver: lx.AbstractLinearSolver = eqx.field(static=True, default=lx.CG(rtol=1e-11, atol=1e-11, max_steps=20_000))

    def __call__(self, grid, fluxes):
        fluxes = tuple(
            jnp.broadcast_to(jnp.asarray(f, dtype=float), _face_shape(grid, a)) for a, f in enumerate(fluxes)
        )
        labels, n_basins = basins(grid)
        active = jnp.asarray(grid.active, dtype=float)
        # 1. balance the open boundaries of each basin: outward normal flux minus a uniform outward velocity N/ΣA
        areas = [jnp.broadcast_to(jnp.asarray(grid.face_area(a), dtype=float), _face_shape(grid, a))
                 for a in range(grid.ndim)]  # fmt: skip
        masks = [_boundary_mask(grid, a) for a in range(grid.ndim)]
        face_labels = [_boundary_labels(grid, labels, n_basins, a) for a in range(grid.ndim)]
        net = _basin_sums(net_outflow(grid, fluxes), labels, n_basins)
        open_area = sum(_basin_sums(m * A, fl, n_basins) for m, A, fl in zip(masks, areas, face_labels))
        speed = jnp.where(open_area > 0, net / jnp.where(open_area > 0, open_area, 1.0), 0.0)
        balanced = []
        for axis, (f, m, A, fl) in enumerate(zip(fluxes, masks, areas, face_labels)):
            n = grid.shape[axis]
            sign = jnp.zeros(n + 1).at[0].set(-1.0).at[n].set(1.0)  # outward normal on the boundary faces
            shape = [1] * grid.ndim
            shape[axis] = n + 1
            balanced.append(f - _per_basin(speed, fl) * m * A * sign.reshape(shape))
        balanced = tuple(balanced)
        # 2. remove the gradient of the velocity potential on interior faces
        weights = tuple(
            w * (1.0 - m) for w, m in zip(diffusion_weights(grid, 1.0), masks)
        )  # conductances A/d, zero on boundary faces and coasts
        diag = sum(
            jnp.moveaxis(jnp.moveaxis(w, a, 0)[1:] + jnp.moveaxis(w, a, 0)[:-1], 0, a) for a, w in enumerate(weights)
        )
        diag = jnp.broadcast_to(diag, grid.shape)
        mean_diag = jnp.sum(active * diag) / grid.n_active
        count = np.bincount(labels.ravel(), minlength=n_basins + 1)[:n_basins]
        pin = mean_diag / jnp.asarray(count, dtype=float)  # rank-one terms that fix each basin's constant null space

        def matvec(phi):
            out = -diffusion_flux_difference(grid, phi, weights) + _per_basin(
                pin * _basin_sums(phi, labels, n_basins), labels
            )
            return out if grid.mask is None else out + (1.0 - active) * mean_diag * phi  # masked cells decoupled

        safe = jnp.where(diag > 0, diag, mean_diag)
        rhs = -net_outflow(grid, balanced)
        phi, _ = implicit_solve(matvec, rhs, self.solver, preconditioner=lambda r: r / safe, symmetric=True)
        out = []
        for axis, (f, w) in enumerate(zip(balanced, weights)):
            out.append(f - w * jnp.diff(pad_ghosts(grid, phi, axis), axis=axis))
        return tuple(out)


__all__ = ["AbstractFluxCorrection", "NoFluxCorrection", "NonDivergentProjection", "basins", "net_outflow"]
