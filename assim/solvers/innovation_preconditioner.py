"""Inner-loop preconditioner from innovation statistics: the Hessian's Fourier symbol at no model run.

In control-variable form, with R^{-1/2}-scaled departures d and G = R^{-1/2} H M B^{1/2}, the gradient of the
observation term at the background is g = −Gᵀd. When B and R describe the innovations (the consistency that
Desroziers et al. 2005 diagnose), d has covariance I + GGᵀ, so g has covariance GᵀG (I + GᵀG). For a Hessian
whose observation term is close to stationary, with Fourier symbol s(k), the gradient's power spectrum is then
E|ĝ(k)|²/N = s (1 + s) (unnormalised DFT over N points): one gradient, which every Gauss-Newton run computes
anyway, gives Q = s(1 + s) fitted per radial-wavenumber bin and s = (√(1 + 4Q) − 1)/2, and CG is preconditioned
by the inverse of 1 + s (+ μ). Unlike `ProbedSpectral`, it costs no Hessian application. It assumes unbiased
innovations (a mean innovation adds power at the large scales), and the lowest bins, with the fewest wavenumbers,
carry the most sampling noise of a single gradient. The estimate is taken at the first iterate (the background,
v = 0) and kept for every later outer loop; with misspecified B or R, or a first guess away from the background,
it is a poorer preconditioner but still symmetric positive definite, so CG converges to the same increment.
"""

from __future__ import annotations

from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from assim.errors import InputError
from assim.learned.preconditioner import SpectralScaling
from assim.solvers.preconditioner import (
    MIN_SYMBOL,
    AbstractInnerPreconditioner,
    check_radial_bins,
    fit_radial,
)


class InnovationSpectral(AbstractInnerPreconditioner):
    """P = F⁻¹ diag(1/(1 + s + μ)) F at the radial nodes (log-linear in between), s(1 + s) fitted to the background gradient's power spectrum.

    `shape`: the periodic grid of the control fields (the trailing axes of every control leaf); `n_bins` radial
    nodes placed by `node_exponent` as in `SpectralScaling` (default 2: crowded at the large scales).
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    n_bins: int = eqx.field(static=True)
    node_exponent: float = eqx.field(static=True)
    n_probes: int = eqx.field(static=True)

    def __init__(self, shape: tuple[int, ...], n_bins: int = 8, node_exponent: float = 2.0):
        check_radial_bins(shape, n_bins, node_exponent, "InnovationSpectral")
        self.shape = tuple(int(n) for n in shape)
        self.n_bins = int(n_bins)
        self.node_exponent = float(node_exponent)
        self.n_probes = 0

    def uses_background_gradient(self) -> bool:
        return True

    def _scaling(self) -> SpectralScaling:
        return SpectralScaling(self.shape, self.n_bins, self.node_exponent)

    def symbol(self, background_gradient: PyTree[Array]) -> Float[Array, " bins"]:
        """Estimated Hessian symbol 1 + s at the radial nodes (without damping)."""
        axes = tuple(range(-len(self.shape), 0))
        power, fields = 0.0, 0
        for leaf in jax.tree_util.tree_leaves(background_gradient):
            if leaf.shape[len(leaf.shape) - len(self.shape) :] != self.shape:
                raise InputError(
                    f"InnovationSpectral built for grid {self.shape} got a control leaf of shape {leaf.shape}."
                )
            spectrum = jnp.abs(jnp.fft.rfftn(leaf, axes=axes)) ** 2
            lead = tuple(range(spectrum.ndim - len(self.shape)))
            power = power + jnp.sum(spectrum, axis=lead)
            fields += int(np.prod(leaf.shape[: len(leaf.shape) - len(self.shape)]))
        moment = power / (fields * int(np.prod(self.shape)))  # E|ĝ(k)|²/N = s(1 + s)
        q = fit_radial(self._scaling(), cast(Array, moment), jnp.ones_like(moment))  # an array once a leaf is summed
        return jnp.maximum(1.0 + 0.5 * (jnp.sqrt(1.0 + 4.0 * jnp.maximum(q, 0.0)) - 1.0), MIN_SYMBOL)

    def scaling(self, background_gradient: PyTree[Array], damping: Float[ArrayLike, ""] = 0.0) -> SpectralScaling:
        """The spectral scaling with gains 1/(1 + s + μ) at the radial nodes."""
        log_gain = -jnp.log(self.symbol(background_gradient) + damping)
        return eqx.tree_at(lambda p: p.log_gain, self._scaling(), log_gain)

    def build(self, hessian, like, pairs=None, *, background_gradient=None, damping=0.0) -> lx.AbstractLinearOperator:
        if background_gradient is None:
            raise InputError("InnovationSpectral needs the background gradient Gᵀd (Gauss-Newton passes it).")
        tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
        return lx.FunctionLinearOperator(
            self.scaling(background_gradient, damping), jax.eval_shape(lambda: like), tags=tags
        )
