"""Learned background covariances that keep the problem variational: x₀ = x_b + L_θ v with L_θ = G_θ B^{1/2}.

B^{1/2} is the problem's own (climatological or tuned) square root and G_θ a composition of learned symmetric
positive definite gains on the state field, restricted to the active cells of the domain mask M:

    L_θ v = M G_n M … M G_1 B^{1/2} v,     B_θ = L_θ L_θᵀ.

B_θ is symmetric positive semi-definite by construction and positive definite on the active cells whenever B is
(each compressed gain M G_i M is positive definite there). The learned problem is still a 4D-Var: Gauss-Newton,
the adjoint tests and the KKT conditions hold for it unchanged. Every gain is the identity at initialisation, so
an untrained prior is the classical B.

- `SpectralGain`: a positive gain per wavenumber of the orthonormal DCT-II (a symmetric convolution with
  reflecting edges, so it respects a regional grid), log-gain linear between nodes of the normalised |k|;
- `VarianceGain`: a positive factor on the standard deviation, one number or one per cell;
- `CovarianceHyperparameters`: the classical B with a tuned variance scale and correlation length (the honest
  classical baseline, tuned by the same masking loss through implicit hypergradients).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.scipy.fft import dctn, idctn
from jaxtyping import Array, ArrayLike, Bool, Float

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.errors import InputError
from assim.problems.cost import StrongConstraint4DVar
from assim.solvers.gauss_newton import GaussNewton


class AbstractGain(eqx.Module):
    """A learned symmetric positive definite operator on state fields (the identity when untrained)."""

    @abc.abstractmethod
    def __call__(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """G x (G is symmetric: it is also its own adjoint)."""


def _radial_wavenumber(shape: tuple[int, ...]) -> np.ndarray:
    """|k| of each DCT-II mode, normalised so that the highest frequency along every axis is 1 (range 0 … √ndim)."""
    r2 = 0.0
    for axis, n in enumerate(shape):
        k = np.arange(n) / max(n - 1, 1)
        r2 = r2 + (k**2).reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return np.sqrt(r2)


class SpectralGain(AbstractGain):
    """x ↦ C⁻¹ diag(exp g(|k|)) C x: C the orthonormal DCT-II, g linear between `n_nodes` nodes of |k| ∈ [0, √d]."""

    log_gain: Float[Array, " nodes"]
    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, shape: Sequence[int], n_nodes: int = 12):
        shape = tuple(int(n) for n in shape)
        if len(shape) not in (1, 2) or min(shape) < 2:
            raise InputError(
                f"SpectralGain acts on a 1-D or 2-D field of at least 2 cells per axis; got shape {shape}."
            )
        if int(n_nodes) != n_nodes or n_nodes < 2:
            raise InputError(f"SpectralGain needs n_nodes ≥ 2 wavenumber nodes; got {n_nodes}.")
        self.log_gain = jnp.zeros(int(n_nodes))
        self.shape = shape

    @property
    def nodes(self) -> np.ndarray:
        """Normalised radial wavenumbers at which the log-gains are given."""
        return np.linspace(0.0, np.sqrt(len(self.shape)), self.log_gain.shape[0])

    def spectrum(self) -> Float[Array, "*shape"]:
        """The gain exp g(|k|) of every DCT mode."""
        r = jnp.asarray(_radial_wavenumber(self.shape))
        return jnp.exp(jnp.interp(r, jnp.asarray(self.nodes), self.log_gain))

    def __call__(self, x):
        if tuple(jnp.shape(x)) != self.shape:
            raise InputError(f"SpectralGain was built for fields of shape {self.shape}; got {tuple(jnp.shape(x))}.")
        return idctn(self.spectrum() * dctn(x, norm="ortho"), norm="ortho")


class VarianceGain(AbstractGain):
    """x ↦ exp(s) ⊙ x: a learned factor on the background-error standard deviation (a scalar or a field)."""

    log_scale: Float[Array, "..."]

    def __init__(self, shape: Sequence[int] = ()):
        self.log_scale = jnp.zeros(tuple(int(n) for n in shape))

    def __call__(self, x):
        return jnp.exp(self.log_scale) * x


class AbstractLearnedPrior(eqx.Module):
    """A learned background covariance: `pose(problem)` is the same 4D-Var with B replaced by the learned one."""

    @abc.abstractmethod
    def covariance(self, base: AbstractBackgroundCovariance) -> AbstractBackgroundCovariance:
        """The learned covariance built on the problem's own B."""

    def pose(self, problem: StrongConstraint4DVar) -> StrongConstraint4DVar:
        """The window's 4D-Var problem with the learned background covariance."""
        return eqx.tree_at(lambda p: p.covariance, problem, self.covariance(problem.covariance))


class LearnedPrior(AbstractLearnedPrior):
    """L_θ = M G_n M … M G_1 B^{1/2}: learned gains on the state, restricted to the mask's active cells; optionally
    a learned background-mean increment x_b + L_θ m_θ (m_θ in control space, so in units of B's standard
    deviations and as smooth as B's correlations; zero at start)."""

    gains: tuple[AbstractGain, ...]
    mean: Float[Array, "..."] | None
    shape: tuple[int, ...] = eqx.field(static=True)
    _mask: bytes | None = eqx.field(static=True)

    def __init__(
        self,
        gains: Sequence[AbstractGain],
        shape: Sequence[int],
        mask: Bool[ArrayLike, "..."] | None = None,
        mean_control: Float[ArrayLike, "..."] | None = None,
    ):
        self.gains = tuple(gains)
        if not self.gains or not all(isinstance(g, AbstractGain) for g in self.gains):
            raise InputError("LearnedPrior needs at least one gain (SpectralGain, VarianceGain).")
        self.shape = tuple(int(n) for n in shape)
        if mask is None:
            self._mask = None
        else:
            arr = np.asarray(mask)
            if arr.shape != self.shape or arr.dtype != bool or not arr.any():
                raise InputError(f"the prior's mask must be a bool array of shape {self.shape} with an active cell.")
            self._mask = None if arr.all() else np.ascontiguousarray(arr).tobytes()
        # a learned mean: give a zero control of the problem's shape (`problem.zero_control()`)
        self.mean = None if mean_control is None else jnp.zeros(jnp.shape(mean_control))

    @property
    def mask(self) -> np.ndarray | None:
        """True on the active cells (None: every cell is active)."""
        return None if self._mask is None else np.frombuffer(self._mask, dtype=bool).reshape(self.shape)

    def restrict(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """M x: zero on inactive (land) cells."""
        return x if self._mask is None else jnp.asarray(self.mask, dtype=float) * x

    def covariance(self, base):
        return LearnedCovariance(base, self)

    def pose(self, problem: StrongConstraint4DVar) -> StrongConstraint4DVar:
        """The window's 4D-Var with the learned B and, with a learned mean, the background x_b + L_θ m_θ."""
        covariance = self.covariance(problem.covariance)
        if self.mean is None:
            return eqx.tree_at(lambda p: p.covariance, problem, covariance)
        background = problem.background + covariance.prepare().sqrt(self.mean)
        return eqx.tree_at(lambda p: (p.covariance, p.background), problem, (covariance, background))


class LearnedCovariance(AbstractBackgroundCovariance):
    """B_θ = L_θ L_θᵀ with L_θ = M G_n M … M G_1 B^{1/2} (a `LearnedPrior` on a base covariance)."""

    base: AbstractBackgroundCovariance
    prior: LearnedPrior

    def sqrt(self, v):
        x = self.base.sqrt(v)
        if tuple(jnp.shape(x)) != self.prior.shape:
            raise InputError(
                f"the learned prior was built for a single-field state of shape {self.prior.shape}; the covariance "
                f"gives increments of shape {jnp.shape(x)}."
            )
        for gain in self.prior.gains:
            x = self.prior.restrict(gain(x))
        return x

    def sqrt_adjoint(self, x):
        y = self.prior.restrict(x)
        for gain in reversed(self.prior.gains):
            y = self.prior.restrict(gain(y))
        return self.base.sqrt_adjoint(y)

    def prepare(self):
        return LearnedCovariance(self.base.prepare(), self.prior)

    def zero_control(self, background):
        return self.base.zero_control(background)


class CovarianceHyperparameters(AbstractLearnedPrior):
    """The classical B with its variance × exp(a) and correlation length × exp(b): two tunable hyperparameters."""

    log_variance_scale: Float[Array, ""]
    log_length_scale: Float[Array, ""]

    def __init__(self, variance_scale: float = 1.0, length_scale: float = 1.0):
        if not (variance_scale > 0 and length_scale > 0):
            raise InputError("CovarianceHyperparameters starts from positive variance and length-scale factors.")
        self.log_variance_scale = jnp.log(jnp.asarray(variance_scale, dtype=float))
        self.log_length_scale = jnp.log(jnp.asarray(length_scale, dtype=float))

    @property
    def variance_scale(self) -> Float[Array, ""]:
        """Factor on the background-error variance."""
        return jnp.exp(self.log_variance_scale)

    @property
    def length_scale(self) -> Float[Array, ""]:
        """Factor on the correlation length scale."""
        return jnp.exp(self.log_length_scale)

    def covariance(self, base):
        return base.rescaled(self.variance_scale, self.length_scale)


class ConvergedGaussNewton(eqx.Module):
    """Classical Gauss-Newton run to convergence on the window posed with a learned prior (train it with `Implicit()`)."""

    prior: AbstractLearnedPrior
    solver: GaussNewton

    def posed(self, problem: StrongConstraint4DVar) -> StrongConstraint4DVar:
        """The window's 4D-Var with the learned background covariance."""
        return self.prior.pose(problem)

    def solve(self, problem: StrongConstraint4DVar, v0=None):
        """The converged analysis of the (posed) problem."""
        return self.solver.solve(problem, v0)
