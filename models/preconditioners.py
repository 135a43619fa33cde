"""Preconditioners for Helmholtz-type operators V(I − c ∇·(κ∇)): approximate inverses, SPD."""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.scipy import fft as jfft
from jaxtyping import Array, ArrayLike, Float

from models.errors import InputError
from models.grid import AbstractBoundary, AbstractGrid, CartesianGrid, Dirichlet, Neumann, Open, Periodic
from models.operators import face_mean


class AbstractPreconditioner(eqx.Module):
    """Builds an approximate inverse of the scaled Helmholtz operator (V/V̄)(I − c ∇·(κ∇))."""

    @abc.abstractmethod
    def inverse(
        self, grid: AbstractGrid, coef: Float[ArrayLike, ""], kappa: Float[ArrayLike, "..."]
    ) -> Callable[[Array], Array] | None:
        """Return a function applying the approximate inverse, or None for no preconditioning."""


class NoPreconditioner(AbstractPreconditioner):
    """Plain Krylov iterations."""

    def inverse(self, grid, coef, kappa):
        return None


_WALL_FACTOR: dict[type[AbstractBoundary], float] = {Neumann: 0.0, Dirichlet: 2.0}  # else 1 (Periodic, Open)


def helmholtz_diagonal(grid: AbstractGrid, coef, kappa) -> Float[Array, "..."]:
    """Exact diagonal of the scaled Helmholtz operator (V/V̄)(I − c ∇·(κ∇)) (boundaries included)."""
    vol = jnp.broadcast_to(jnp.asarray(grid.cell_volume()), grid.shape)
    diag = vol
    for axis in range(grid.ndim):
        w = face_mean(grid, kappa, axis) * grid.face_area(axis) / grid.face_distance(axis)
        w = jnp.moveaxis(w, axis, 0)
        boundary = grid.boundaries[axis]
        factor = _WALL_FACTOR.get(type(boundary), 1.0)
        w = w.at[jnp.array([0, -1])].multiply(factor)
        diag = diag + coef * jnp.moveaxis(w[1:] + w[:-1], 0, axis)
    return diag / jnp.mean(vol)


class JacobiPreconditioner(AbstractPreconditioner):
    """Inverse of the operator's exact diagonal; any grid, any diffusivity field."""

    def inverse(self, grid, coef, kappa):
        inv = 1.0 / helmholtz_diagonal(grid, coef, kappa)
        return lambda r: inv * r


def _dst2(x: Array, axis: int) -> Array:
    n = x.shape[axis]
    sign = jnp.asarray((-1.0) ** np.arange(n)).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return jnp.flip(jfft.dct(x * sign, type=2, axis=axis, norm="ortho"), axis=axis)


def _idst2(x: Array, axis: int) -> Array:
    n = x.shape[axis]
    sign = jnp.asarray((-1.0) ** np.arange(n)).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return jfft.idct(jnp.flip(x, axis=axis), type=2, axis=axis, norm="ortho") * sign


class SpectralPreconditioner(AbstractPreconditioner):
    """Exact inverse of the constant-coefficient operator (κ → mean κ) by FFT/DCT/DST on a Cartesian grid.

    Exact for uniform diffusivity (CG then converges in one iteration); spectrally
    equivalent, so iteration counts stay small and grid-independent, for smooth κ fields.
    On a masked grid it applies that inverse to the active cells only and the identity to masked
    cells (whose rows are the identity); it ignores the coasts, so CG needs more iterations there.
    """

    def inverse(self, grid, coef, kappa):
        if not isinstance(grid, CartesianGrid):
            raise InputError("SpectralPreconditioner needs a CartesianGrid; use JacobiPreconditioner() on other grids.")
        kbar = jnp.mean(jnp.asarray(kappa, dtype=float))
        last = grid.ndim - 1
        real_last = isinstance(grid.boundaries[last], Periodic)
        eig = 1.0
        for axis, (n, h, b) in enumerate(zip(grid.shape, grid.spacing, grid.boundaries)):
            k = np.arange(n // 2 + 1 if (axis == last and real_last) else n)
            if isinstance(b, Periodic):
                lam = (4.0 / h**2) * np.sin(np.pi * k / n) ** 2
            elif isinstance(b, (Neumann, Open)):  # Open: zero diffusive flux
                lam = (4.0 / h**2) * np.sin(np.pi * k / (2 * n)) ** 2
            else:
                lam = (4.0 / h**2) * np.sin(np.pi * (k + 1) / (2 * n)) ** 2
            eig = eig + coef * kbar * jnp.asarray(lam).reshape([-1 if a == axis else 1 for a in range(grid.ndim)])
        inv_eig = 1.0 / eig

        def forward(x, axis, b):
            if isinstance(b, Periodic):
                return jnp.fft.rfft(x, axis=axis) if (axis == last and real_last) else jnp.fft.fft(x, axis=axis)
            if isinstance(b, (Neumann, Open)):  # Open: zero diffusive flux
                return jfft.dct(x, type=2, axis=axis, norm="ortho")
            return _dst2(x, axis)

        def backward(x, axis, b):
            if isinstance(b, Periodic):
                if axis == last and real_last:
                    return jnp.fft.irfft(x, n=grid.shape[axis], axis=axis)
                return jnp.fft.ifft(x, axis=axis)
            if isinstance(b, (Neumann, Open)):  # Open: zero diffusive flux
                return jfft.idct(x, type=2, axis=axis, norm="ortho")
            return _idst2(x, axis)

        order = [last] + list(range(last)) if real_last else list(range(grid.ndim))

        def apply(r):
            x = r
            for axis in order:
                x = forward(x, axis, grid.boundaries[axis])
            x = x * inv_eig
            for axis in reversed(order):
                x = backward(x, axis, grid.boundaries[axis])
            return jnp.real(x)

        if grid.mask is None:
            return apply
        # masked grid: the unmasked inverse on active cells, the exact (identity) rows on masked ones; still SPD
        active = jnp.asarray(grid.active, dtype=float)
        return lambda r: active * apply(active * r) + (1.0 - active) * r
