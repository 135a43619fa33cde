"""Learned preconditioner scalings for the unrolled solver's CG: P symmetric positive definite, identity at start.

A layer's CG on (λI + J_dᵀJ_d + μI) δ = b becomes preconditioned CG with z = P r. P is learned with the
other layer parameters (masking + KKT losses), so a few CG iterations can do the work of many.
`DiagonalScaling` learns one positive weight per control element (any grid); `SpectralScaling` learns a
positive gain per radial wavenumber on a periodic grid (the Hessian of a stationary problem is nearly
diagonal in Fourier space). Both start at P = I, so an untrained solver is the classical one.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from assim.errors import InputError


class AbstractLearnedPreconditioner(eqx.Module):
    """A learned symmetric positive definite map z = P r on control vectors (P = I when untrained)."""

    @abc.abstractmethod
    def __call__(self, residual: PyTree[Array]) -> PyTree[Array]:
        """Preconditioned residual P r (same structure as r)."""


class DiagonalScaling(AbstractLearnedPreconditioner):
    """P = diag(exp(2 s)) with one learned log-scale s per control element (any control shape)."""

    log_scale: PyTree[Array]

    def __init__(self, control: PyTree[Array]):
        self.log_scale = jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), dtype=float), control)

    def __call__(self, residual: PyTree[Array]) -> PyTree[Array]:
        return jax.tree_util.tree_map(lambda s, r: jnp.exp(2.0 * s) * r, self.log_scale, residual)


def _radial_wavenumber(shape: tuple[int, ...]) -> np.ndarray:
    """|k| on the half spectrum of `rfftn` over `shape`, in units of the Nyquist wavenumber of each axis."""
    axes = [np.fft.fftfreq(n) * 2.0 for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1]) * 2.0]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(sum(m**2 for m in mesh))


class SpectralScaling(AbstractLearnedPreconditioner):
    """P = F⁻¹ diag(exp(g(|k|))) F on a periodic grid: a learned log-gain g at `n_bins` radial wavenumbers (linear in between).

    Acts on the trailing `len(shape)` axes of every control leaf (leading axes, e.g. velocity components,
    share the gains). A real gain that depends on |k| only keeps P symmetric positive definite.
    `node_exponent` p places node j at √ndim (j/(n_bins−1))^p (p = 1 uniform; p > 1 crowds the nodes
    at the large scales, where a smooth B puts the observation term; then never closer than the grid's
    fundamental wavenumber apart).
    """

    log_gain: Float[Array, " bins"]
    shape: tuple[int, ...] = eqx.field(static=True)
    node_exponent: float = eqx.field(static=True)

    def __init__(self, shape: tuple[int, ...], n_bins: int = 8, node_exponent: float = 1.0):
        shape = tuple(int(n) for n in shape)
        if not 1 <= len(shape) <= 3 or min(shape) < 2:
            raise InputError(
                f"SpectralScaling needs a 1-D to 3-D periodic grid shape with ≥ 2 points per axis; got {shape}."
            )
        if int(n_bins) < 2:
            raise InputError(f"SpectralScaling needs n_bins ≥ 2; got {n_bins}.")
        if not 1.0 <= float(node_exponent) <= 4.0:
            raise InputError(f"SpectralScaling needs 1 ≤ node_exponent ≤ 4; got {node_exponent}.")
        self.log_gain = jnp.zeros(int(n_bins))
        self.shape = shape
        self.node_exponent = float(node_exponent)
        if self.node_exponent > 1.0 and not np.all(np.diff(self.nodes()) > 0):
            raise InputError(
                f"SpectralScaling: {n_bins} radial nodes do not fit between the fundamental and the Nyquist wavenumber "
                f"of grid {shape}; use fewer bins."
            )

    def nodes(self) -> np.ndarray:
        """Radial wavenumbers of the learned gains, in units of the Nyquist wavenumber (0 … √ndim)."""
        n = self.log_gain.shape[0]
        top = np.sqrt(len(self.shape))
        spaced = top * np.linspace(0.0, 1.0, n) ** self.node_exponent
        if self.node_exponent == 1.0:
            return spaced
        fundamental = 2.0 / min(self.shape)  # the smallest non-zero |k| on the grid
        return np.minimum(np.maximum(spaced, fundamental * np.arange(n)), top)

    def gain(self) -> Float[Array, "..."]:
        """exp(g(|k|)) on the half spectrum."""
        k = _radial_wavenumber(self.shape)
        return jnp.exp(jnp.interp(jnp.asarray(k), jnp.asarray(self.nodes()), self.log_gain))

    def __call__(self, residual: PyTree[Array]) -> PyTree[Array]:
        axes = tuple(range(-len(self.shape), 0))
        gain = self.gain()

        def apply(r):
            if r.shape[-len(self.shape) :] != self.shape:
                raise InputError(f"SpectralScaling built for grid {self.shape} got a control leaf of shape {r.shape}.")
            return jnp.fft.irfftn(jnp.fft.rfftn(r, axes=axes) * gain, s=self.shape, axes=axes)

        return jax.tree_util.tree_map(apply, residual)
