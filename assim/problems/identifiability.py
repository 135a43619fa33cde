"""Identifiability of discovered parameters from the Laplace (Gauss-Newton) posterior, matrix-free.

In the joint control z = (v, p) (both with N(0, I) priors) the posterior precision is
H = J_rᵀJ_r = [[H_vv, H_vp], [H_pv, H_pp]] and its covariance C = H⁻¹. `parameter_posterior`
already solves H z_i = e_i for each of the k parameter components, which gives the columns
(C_vp, C_pp) of C, and forms the k×k block H_pp by k Hessian-vector products. From these:

- parameter correlation: C_pp scaled to unit diagonal (the same for θ: the priors' transforms
  are elementwise and increasing, so D C_pp D has the same correlation);
- Schur complement S = H_pp − H_pv H_vv⁻¹ H_vp, the precision of the marginal posterior of p,
  equals C_pp⁻¹; its eigenvalues (≥ 1: the prior's identity plus the data) and those of H_pp
  (the precision of p with the state held fixed) are reported;
- correlation with the state: the multiple correlation ρ_i of p_i with the whole initial-state
  control v, ρ_i² = 1 − Var(p_i | v) / Var(p_i) = 1 − [H_pp⁻¹]_ii / [C_pp]_ii (the largest
  correlation of p_i with any linear functional of v), and the state pattern
  cov(x_0, p_i) / std(p_i) = B^{1/2} C_vp e_i / √[C_pp]_ii: the change of the initial state that
  accompanies a one-posterior-std change of p_i;
- `unconstrained`: the posterior std of the control p_i is ≥ `threshold` (default 0.9) times its
  prior std 1, i.e. the data shrink the prior by less than 10 % (in log space for log-normal priors).

Nothing grid-sized beyond k state-sized vectors is formed.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PyTree

from assim.errors import InputError
from assim.problems.parameter_control import ParameterControl4DVar, ParameterPosterior

UNCONSTRAINED_THRESHOLD = 0.9


class Identifiability(eqx.Module):
    """Identifiability of the k parameter components (flattened in `where` order) at an analysis."""

    correlation: Float[Array, "k k"]
    schur_eigenvalues: Float[Array, " k"]
    block_eigenvalues: Float[Array, " k"]
    state_correlation: Float[Array, " k"]
    state_pattern: PyTree[Array]
    std_ratio: Float[Array, " k"]
    unconstrained: Bool[Array, " k"]
    threshold: float = eqx.field(static=True)


def identifiability(
    problem: ParameterControl4DVar, posterior: ParameterPosterior, threshold: float = UNCONSTRAINED_THRESHOLD
) -> Identifiability:
    """Parameter correlation, marginal (Schur) and block eigenvalues, correlation with the state, unconstrained flags."""
    if not isinstance(problem, ParameterControl4DVar) or not isinstance(posterior, ParameterPosterior):
        raise InputError("identifiability needs a ParameterControl4DVar and its parameter_posterior(...).")
    if not 0.0 < float(threshold) <= 1.0:
        raise InputError(f"the unconstrained threshold is a ratio of stds in (0, 1]; got {threshold}.")
    return _identifiability(problem, posterior, float(threshold))


@eqx.filter_jit
def _identifiability(problem, posterior, threshold):
    c = posterior.control_covariance
    var = jnp.clip(jnp.diag(c), 1e-300, None)
    std = jnp.sqrt(var)
    correlation = c / std[:, None] / std[None, :]
    schur = jnp.linalg.eigvalsh(jnp.linalg.inv(c))
    block = jnp.linalg.eigvalsh(posterior.precision_block)
    conditional = jnp.diag(jnp.linalg.inv(posterior.precision_block))  # Var(p_i | v)
    state_correlation = jnp.sqrt(jnp.clip(1.0 - conditional / var, 0.0, 1.0))
    sqrt_b = jax.vmap(problem.prepared().covariance.sqrt)
    pattern = jax.tree_util.tree_map(
        lambda x: x / std.reshape((-1,) + (1,) * (x.ndim - 1)), sqrt_b(posterior.state_covariance)
    )
    return Identifiability(
        correlation=correlation, schur_eigenvalues=schur, block_eigenvalues=block,
        state_correlation=state_correlation, state_pattern=pattern, std_ratio=std,
        unconstrained=std >= threshold, threshold=threshold,
    )  # fmt: skip


def pattern_rms(ident: Identifiability) -> Float[Array, " k"]:
    """RMS over the state of each parameter's state pattern (state units per posterior std of the parameter)."""
    leaves = jax.tree_util.tree_leaves(ident.state_pattern)
    k = leaves[0].shape[0]
    total = sum(jnp.sum(x.reshape(k, -1) ** 2, axis=1) for x in leaves)
    size = sum(x.reshape(k, -1).shape[1] for x in leaves)
    return jnp.sqrt(total / size)
