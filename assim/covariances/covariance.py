"""Error covariances: background B through its square root B^{1/2} (control-variable transform) and diagonal R.

A background covariance is a typed strategy with `sqrt(v)` = B^{1/2} v (control vector →
state increment) and `sqrt_adjoint(x)` = (B^{1/2})ᵀ x, so that B = B^{1/2} (B^{1/2})ᵀ is
symmetric positive semi-definite by construction. Variances and length scales are array
fields: differentiable with `eqx.filter_grad`. The diffusion-based operator lives in
`assim.covariances.diffusion`.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from assim.errors import InputError, ObservationError
from models.base import as_field, check_positive
from models.grid import AbstractGrid, CartesianGrid, Periodic


class AbstractBackgroundCovariance(eqx.Module):
    """Background-error covariance B, applied through its square root."""

    @abc.abstractmethod
    def sqrt(self, v: PyTree[Array]) -> PyTree[Array]:
        """State increment B^{1/2} v from a control vector v."""

    @abc.abstractmethod
    def sqrt_adjoint(self, x: PyTree[Array]) -> PyTree[Array]:
        """Control-space vector (B^{1/2})ᵀ x from a state-space vector x."""

    def apply(self, x: PyTree[Array]) -> PyTree[Array]:
        """B x = B^{1/2} (B^{1/2})ᵀ x."""
        return self.sqrt(self.sqrt_adjoint(x))

    def prepare(self) -> AbstractBackgroundCovariance:
        """The same covariance with any loop-invariant factors (normalisation) precomputed."""
        return self

    def zero_control(self, background: PyTree[Array]) -> PyTree[Array]:
        """The zero control vector v (x0 = x_b) for a background state of this covariance's shape."""
        return jax.tree_util.tree_map(jnp.zeros_like, background)

    def rescaled(self, variance_factor: Float[ArrayLike, ""], length_factor: Float[ArrayLike, ""]):
        """The same covariance with variance × `variance_factor` and correlation length × `length_factor`."""
        raise InputError(
            f"{type(self).__name__} has no variance and length-scale hyperparameters to tune; use "
            "DiffusionCovariance or SpectralGaussianCovariance (optionally in MaskedCovariance)."
        )


def _check_variance(grid: AbstractGrid, variance, name="variance") -> Array:
    grid.check_field(variance, f"background-error {name}")
    check_positive(variance, f"background-error {name}", "Give a positive variance (scalar or field).")
    return as_field(variance)


class DiagonalCovariance(AbstractBackgroundCovariance):
    """Uncorrelated background errors: B = diag(σ²)."""

    grid: AbstractGrid = eqx.field(static=True)
    variance: Float[Array, "..."]

    def __init__(self, grid: AbstractGrid, variance: Float[ArrayLike, "..."]):
        self.grid = grid
        self.variance = _check_variance(grid, variance)

    def sqrt(self, v):
        return jnp.sqrt(self.variance) * v

    def sqrt_adjoint(self, x):
        return jnp.sqrt(self.variance) * x


class SpectralGaussianCovariance(AbstractBackgroundCovariance):
    """Homogeneous Gaussian correlation exp(−r²/2ℓ²) by FFT on a periodic Cartesian grid, scaled by σ.

    B^{1/2} = diag(σ) C^{1/2} with C^{1/2} = F⁻¹ diag(√λ) F and λ_k ∝ exp(−ℓ²|k|²/2), normalised
    so that mean(λ) = 1: the diagonal of C is exactly 1 and the diagonal of B exactly σ².
    """

    grid: CartesianGrid = eqx.field(static=True)
    variance: Float[Array, "..."]
    length_scale: Float[Array, ""]

    def __init__(self, grid: CartesianGrid, variance: Float[ArrayLike, "..."], length_scale: Float[ArrayLike, ""]):
        if not isinstance(grid, CartesianGrid) or not all(isinstance(b, Periodic) for b in grid.boundaries):
            raise InputError(
                "SpectralGaussianCovariance needs a CartesianGrid periodic on every axis; "
                "use DiffusionCovariance on walled or lat-lon grids."
            )
        if grid.mask is not None:
            raise InputError(
                "SpectralGaussianCovariance correlates across masked cells (land); on a masked grid use "
                "DiffusionCovariance(grid, ..., normalisation=RandomisedNormalisation(key)), wrapped in MaskedCovariance."
            )
        if np.ndim(length_scale) != 0:
            raise InputError(
                "SpectralGaussianCovariance takes a scalar length scale; "
                "use DiffusionCovariance for a length-scale field."
            )
        check_positive(length_scale, "background-error length scale")
        self.grid = grid
        self.variance = _check_variance(grid, variance)
        self.length_scale = as_field(length_scale)

    def _wavenumbers_squared(self) -> np.ndarray:
        """|k|² on the rfftn grid (real transform along the last axis)."""
        k2 = 0.0
        last = self.grid.ndim - 1
        for axis, (n, h) in enumerate(zip(self.grid.shape, self.grid.spacing)):
            k = 2 * np.pi * (np.fft.rfftfreq(n, h) if axis == last else np.fft.fftfreq(n, h))
            k2 = k2 + (k**2).reshape([-1 if a == axis else 1 for a in range(self.grid.ndim)])
        return np.asarray(k2)  # an array already (ndim ≥ 1)

    def root_spectrum(self) -> Float[Array, "..."]:
        """√λ_k on the rfftn grid, with mean(λ) over all N modes equal to 1."""
        k2 = jnp.asarray(self._wavenumbers_squared())
        g = jnp.exp(-0.5 * self.length_scale**2 * k2)
        n_last = self.grid.shape[-1]
        # multiplicity of each rfft column in the full spectrum: 1 for k=0 (and Nyquist), else 2
        mult = np.full(n_last // 2 + 1, 2.0)
        mult[0] = 1.0
        if n_last % 2 == 0:
            mult[-1] = 1.0
        total = jnp.sum(g * jnp.asarray(mult))
        return jnp.sqrt(self.grid.size * g / total)

    def _correlation_sqrt(self, u: Array) -> Array:
        axes = tuple(range(self.grid.ndim))
        spec = jnp.fft.rfftn(u, axes=axes) * self.root_spectrum()
        return jnp.fft.irfftn(spec, s=self.grid.shape, axes=axes)

    def sqrt(self, v):
        return jnp.sqrt(self.variance) * self._correlation_sqrt(v)

    def sqrt_adjoint(self, x):
        return self._correlation_sqrt(jnp.sqrt(self.variance) * x)

    def rescaled(self, variance_factor, length_factor):
        return eqx.tree_at(lambda c: (c.variance, c.length_scale), self,
                           (self.variance * variance_factor, self.length_scale * length_factor))  # fmt: skip


def _is_covariance(node) -> bool:
    return isinstance(node, AbstractBackgroundCovariance)


class BlockCovariance(AbstractBackgroundCovariance):
    """Independent covariances for the components of a pytree state (e.g. height and velocities)."""

    blocks: PyTree[AbstractBackgroundCovariance]

    def sqrt(self, v):
        return jax.tree_util.tree_map(lambda b, x: b.sqrt(x), self.blocks, v, is_leaf=_is_covariance)

    def sqrt_adjoint(self, x):
        return jax.tree_util.tree_map(lambda b, y: b.sqrt_adjoint(y), self.blocks, x, is_leaf=_is_covariance)

    def prepare(self):
        return BlockCovariance(jax.tree_util.tree_map(lambda b: b.prepare(), self.blocks, is_leaf=_is_covariance))

    def zero_control(self, background):
        return jax.tree_util.tree_map(lambda b, x: b.zero_control(x), self.blocks, background, is_leaf=_is_covariance)


class MaskedCovariance(AbstractBackgroundCovariance):
    """B restricted to the active cells of a domain mask: control = packed active cells, increment zero elsewhere.

    For a single-field state: B^{1/2} v = mask · base^{1/2}(scatter(v)), where v holds one entry per
    active cell (row-major order), so masked cells are not part of the control vector.
    """

    base: AbstractBackgroundCovariance
    shape: tuple[int, ...] = eqx.field(static=True)
    _mask: bytes = eqx.field(static=True)

    def __init__(self, base: AbstractBackgroundCovariance, mask: Bool[ArrayLike, "..."]):
        if not isinstance(base, AbstractBackgroundCovariance):
            raise InputError(
                f"MaskedCovariance wraps a background covariance (e.g. DiffusionCovariance); got {type(base).__name__}."
            )
        if mask is None or isinstance(mask, jax.core.Tracer):
            raise InputError("MaskedCovariance needs a concrete bool mask (True = active cell); use the grid's `mask`.")
        arr = np.asarray(mask)
        if arr.dtype != bool:
            if not np.issubdtype(arr.dtype, np.number) or not np.all((arr == 0) | (arr == 1)):
                raise InputError(
                    f"the mask of MaskedCovariance must be boolean (True = active cell); got dtype {arr.dtype}."
                )
            arr = arr.astype(bool)
        grid = getattr(base, "grid", None)
        if grid is not None and arr.shape != tuple(grid.shape):
            raise InputError(
                f"the mask has shape {arr.shape} but the covariance's grid has shape {tuple(grid.shape)}; "
                "give a mask of the grid's shape (e.g. grid.mask)."
            )
        if not arr.any():
            raise InputError("the mask of MaskedCovariance has no active cell; True marks the cells to control (sea).")
        self.base = base
        self.shape = tuple(arr.shape)
        self._mask = np.ascontiguousarray(arr).tobytes()

    @classmethod
    def on_grid(cls, base: AbstractBackgroundCovariance) -> MaskedCovariance:
        """`base` restricted to the active cells of its own grid's mask."""
        grid = getattr(base, "grid", None)
        if grid is None or grid.mask is None:
            raise InputError(
                "MaskedCovariance.on_grid: the covariance's grid has no mask; build the covariance on "
                "grid.with_mask(mask), or give the mask explicitly with MaskedCovariance(base, mask)."
            )
        return cls(base, grid.mask)

    @property
    def mask(self) -> np.ndarray:
        """Bool array: True on the active (controlled) cells."""
        return np.frombuffer(self._mask, dtype=bool).reshape(self.shape)

    @property
    def n_active(self) -> int:
        """Length of the control vector: the number of active cells."""
        return int(self.mask.sum())

    def _indices(self) -> Array:
        return jnp.asarray(np.flatnonzero(self.mask))

    def scatter(self, v: Float[Array, " active"]) -> Float[Array, "..."]:
        """The field of the mask's shape with the packed values v on the active cells and zero elsewhere."""
        size = int(np.prod(self.shape))
        return jnp.zeros(size, dtype=jnp.result_type(v, float)).at[self._indices()].set(v).reshape(self.shape)

    def gather(self, x: Float[Array, "..."]) -> Float[Array, " active"]:
        """The packed values of x on the active cells (row-major order)."""
        return jnp.reshape(x, (-1,))[self._indices()]

    def sqrt(self, v):
        return jnp.asarray(self.mask, dtype=float) * self.base.sqrt(self.scatter(v))

    def sqrt_adjoint(self, x):
        return self.gather(self.base.sqrt_adjoint(jnp.asarray(self.mask, dtype=float) * x))

    def prepare(self):
        return eqx.tree_at(lambda c: c.base, self, self.base.prepare())

    def rescaled(self, variance_factor, length_factor):
        return eqx.tree_at(lambda c: c.base, self, self.base.rescaled(variance_factor, length_factor))

    def zero_control(self, background):
        if tuple(np.shape(background)) != self.shape:
            raise InputError(
                f"MaskedCovariance is for a single-field state of shape {self.shape}; got a background of shape "
                f"{tuple(np.shape(background))}. Wrap each field's covariance in BlockCovariance instead."
            )
        return jnp.zeros(self.n_active, dtype=jnp.result_type(background, float))


class DiagonalObservationError(eqx.Module):
    """Diagonal observation-error covariance R = diag(σ²) with a validity mask: R^{-1/2} = mask/σ."""

    sigma: Float[Array, "time obs"]
    mask: Bool[Array, "time obs"]

    def __init__(self, sigma: Float[ArrayLike, "time obs"], mask: Bool[ArrayLike, "time obs"] | None = None):
        sigma = jnp.asarray(sigma, dtype=float)
        if mask is not None and jnp.shape(mask) != jnp.shape(sigma):
            raise ObservationError(
                f"the observation mask has shape {jnp.shape(mask)} but the errors have shape {jnp.shape(sigma)}; "
                "give one mask entry per observation."
            )
        valid = jnp.isfinite(sigma) & (sigma > 0)
        mask = valid if mask is None else (jnp.asarray(mask, dtype=bool) & valid)
        self.sigma = jnp.where(mask, sigma, 1.0)
        self.mask = mask

    def inv_sqrt(self, d: Float[Array, "time obs"]) -> Float[Array, "time obs"]:
        """Normalised departures R^{-1/2} d (zero where masked)."""
        return jnp.where(self.mask, d / self.sigma, 0.0)

    @property
    def weights(self) -> Float[Array, "time obs"]:
        """Diagonal of R^{-1} (zero where masked)."""
        return jnp.where(self.mask, 1.0 / self.sigma**2, 0.0)
