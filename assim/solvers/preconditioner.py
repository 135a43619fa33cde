"""Preconditioners of the Gauss-Newton inner loop, beyond the B^{1/2} that the control variable already applies.

In control-variable form the Hessian is I + GᵀG (+ μI), G = R^{-1/2} H M B^{1/2}: the identity plus the
observation term, which for a random observing network and a stationary B sits mostly at the large scales.
`ProbedSpectral` fits that structure: it estimates the Hessian's Fourier symbol averaged over radial
wavenumber bins from a few random probes (one Hessian application each, every outer iteration) and
preconditions CG with its inverse. It is matrix-free and needs no model knowledge; the probes are counted
as tangent-linear + adjoint runs like every other Hessian application.
"""

from __future__ import annotations

import abc
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from assim.errors import InputError
from assim.learned.preconditioner import SpectralScaling, _radial_wavenumber

MIN_SYMBOL = 1.0  # the control-variable GN Hessian I + GᵀG (+ μI) is ≥ I: a fit below 1 is probe noise


def _hat_weights(nodes: np.ndarray, k: np.ndarray) -> np.ndarray:
    """w_j(k): the piecewise-linear hat of node j at each wavenumber (the weights of linear interpolation)."""
    return np.stack([np.interp(k, nodes, row) for row in np.eye(len(nodes))])


class AbstractInnerPreconditioner(eqx.Module):
    """How Gauss-Newton's inner CG is preconditioned; `n_probes` Hessian applications per outer iteration.

    `n_pairs` > 0: Gauss-Newton keeps that many curvature pairs (s_i, H s_i) from the previous inner
    loop's CG (no extra runs) and passes them to `build`.
    """

    n_probes: eqx.AbstractVar[int]

    def n_pairs(self) -> int:
        """CG curvature pairs this preconditioner reuses from the previous inner loop (0: none)."""
        return 0

    def uses_background_gradient(self) -> bool:
        """Whether `build` needs the observation-term gradient at the first iterate (kept for later outer loops)."""
        return False

    @abc.abstractmethod
    def build(
        self,
        hessian,
        like: PyTree[Array],
        pairs=None,
        *,
        background_gradient: PyTree[Array] | None = None,
        damping: Float[ArrayLike, ""] = 0.0,
    ) -> lx.AbstractLinearOperator | None:
        """A positive definite P ≈ Hessian⁻¹ from the Hessian's action (None: plain CG).

        `background_gradient`: Gᵀd at the first iterate, for `uses_background_gradient()`; `damping`: the μ
        that `hessian` already includes (for preconditioners that never apply `hessian`).
        """


def check_radial_bins(shape: tuple[int, ...], n_bins: int, node_exponent: float, name: str) -> SpectralScaling:
    """The spectral scaling of a radial-bin preconditioner, after checking that every bin holds a wavenumber."""
    scaling = SpectralScaling(shape, n_bins, node_exponent)  # validates the grid shape and the nodes
    if np.any(
        _hat_weights(scaling.nodes(), _radial_wavenumber(tuple(shape))).reshape(int(n_bins), -1).sum(axis=1) == 0
    ):
        raise InputError(
            f"{name}: some of the {n_bins} radial bins hold no wavenumber of grid {tuple(shape)}; use fewer bins."
        )
    return scaling


def fit_radial(scaling: SpectralScaling, cross: Array, power: Array) -> Array:
    """Least-squares node values ĥ_j of the piecewise-linear symbol ĥ(k) = Σ_j ĥ_j w_j(k) with cross ≈ ĥ(k) power(k)."""
    shape = scaling.shape
    weights = jnp.asarray(_hat_weights(scaling.nodes(), _radial_wavenumber(shape))).reshape(len(scaling.nodes()), -1)
    mass = (weights * power.reshape(1, -1)) @ weights.T
    return jnp.linalg.solve(mass, weights @ cross.reshape(-1))


class NoPreconditioner(AbstractInnerPreconditioner):
    """Plain CG on the control-variable Hessian (B^{1/2} is the only preconditioning)."""

    n_probes: int = eqx.field(static=True, default=0)

    def build(self, hessian, like, pairs=None, *, background_gradient=None, damping=0.0) -> None:
        return None


class ProbedSpectral(AbstractInnerPreconditioner):
    """P = F⁻¹ diag(1/ĥ(|k|)) F, ĥ the Hessian's symbol per radial-wavenumber bin estimated from random probes.

    `shape`: the periodic grid of the control fields (the trailing axes of every control leaf); `n_bins`
    radial nodes (linear in between), placed by `node_exponent` as in `SpectralScaling` (default 2: crowded
    at the large scales, where a smooth B confines the observation term); `n_probes` Gaussian probes z per
    outer iteration, each one Hessian application. ĥ is the piecewise-linear symbol ĥ(k) = Σ_j ĥ_j w_j(k)
    (w_j the hat functions) that best fits Re(F(Hz) conj(Fz)) ≈ ĥ(k) |Fz|² in least squares (an
    n_bins × n_bins solve; exact when the symbol is piecewise linear). `key` seeds the probes (the same
    every outer iteration).
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    n_bins: int = eqx.field(static=True)
    n_probes: int = eqx.field(static=True)
    node_exponent: float = eqx.field(static=True)
    key: PRNGKeyArray

    def __init__(
        self,
        shape: tuple[int, ...],
        n_bins: int = 8,
        n_probes: int = 1,
        node_exponent: float = 2.0,
        *,
        key: PRNGKeyArray,
    ):
        check_radial_bins(shape, n_bins, node_exponent, "ProbedSpectral")
        if int(n_probes) < 1:
            raise InputError(f"ProbedSpectral needs n_probes ≥ 1; got {n_probes}.")
        self.shape = tuple(int(n) for n in shape)
        self.n_bins = int(n_bins)
        self.n_probes = int(n_probes)
        self.node_exponent = float(node_exponent)
        self.key = key

    def _scaling(self) -> SpectralScaling:
        return SpectralScaling(self.shape, self.n_bins, self.node_exponent)

    def symbol(self, hessian, like: PyTree[Array]) -> Array:
        """Estimated Hessian symbol at the radial nodes."""
        axes = tuple(range(-len(self.shape), 0))
        leaves, tree = jax.tree_util.tree_flatten(like)
        cross = 0.0  # Re(F(Hz) conj(Fz)) summed over probes and fields
        power = 0.0  # |Fz|²
        for i in range(self.n_probes):
            keys = jax.random.split(jax.random.fold_in(self.key, i), len(leaves))
            z = jax.tree_util.tree_unflatten(
                tree, [jax.random.normal(kk, x.shape, x.dtype) for kk, x in zip(keys, leaves)]
            )
            hz = hessian(z)
            for zl, hl in zip(jax.tree_util.tree_leaves(z), jax.tree_util.tree_leaves(hz)):
                fz, fh = jnp.fft.rfftn(zl, axes=axes), jnp.fft.rfftn(hl, axes=axes)
                lead = tuple(range(fz.ndim - len(self.shape)))
                cross = cross + jnp.sum(jnp.real(fh * jnp.conj(fz)), axis=lead)
                power = power + jnp.sum(jnp.abs(fz) ** 2, axis=lead)
        # arrays once a probe has run (n_probes ≥ 1)
        return jnp.maximum(fit_radial(self._scaling(), cast(Array, cross), cast(Array, power)), MIN_SYMBOL)

    def scaling(self, hessian, like: PyTree[Array]) -> SpectralScaling:
        """The spectral scaling P = F⁻¹ diag(1/ĥ) F (the learned-preconditioner module, gains set from the probes)."""
        return eqx.tree_at(lambda p: p.log_gain, self._scaling(), -jnp.log(self.symbol(hessian, like)))

    def build(self, hessian, like, pairs=None, *, background_gradient=None, damping=0.0) -> lx.AbstractLinearOperator:
        structure = jax.eval_shape(lambda: like)
        tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
        return lx.FunctionLinearOperator(self.scaling(hessian, like), structure, tags=tags)


def probed_scaling(problem, probe: ProbedSpectral) -> SpectralScaling:
    """A spectral CG scaling fitted to a window's Gauss-Newton Hessian at the background (no truth used).

    A starting point for a learned `SpectralScaling`: training then refines the gains.
    """
    problem = problem.prepared()
    v0 = problem.zero_control()
    _, jvp = jax.linearize(problem.departures, v0)
    vjp = jax.linear_transpose(jvp, v0)
    return probe.scaling(lambda x: jax.tree_util.tree_map(jnp.add, x, vjp(jvp(x))[0]), v0)
