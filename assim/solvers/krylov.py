"""Conjugate gradients from a zero first guess, as a lineax solver: the inner loop of incremental 4D-Var.

lineax's `CG` forms the initial residual b − A y₀ with one operator application even when y₀ = 0. In
Gauss-Newton that application is a tangent-linear plus an adjoint model run, spent on a zero increment
in every outer iteration. `ZeroStartCG` starts from y = 0 and r = b, so a run of n iterations costs
exactly n applications; it is otherwise CG (residual by recurrence; preconditioned when
`options["preconditioner"]` holds a positive definite operator, as for lineax's CG) with the stopping
test of `lx.CG(rtol=0, atol=atol, norm=norm)`: both the residual and the last update below `atol` in
`norm`. Being an `lx.AbstractLinearSolver`, it keeps lineax's derivative and transpose rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree

from models.tree import tree_axpy as tree_axpy
from models.tree import tree_dot as tree_dot

_NOT_SPD = (
    "ZeroStartCG needs a symmetric positive (semi-)definite operator: tag it with lx.positive_semidefinite_tag "
    "(as lineax's CG, the tag implies symmetry; a Gauss-Newton Hessian JᵀJ + μI qualifies), or use lx.GMRES for "
    "other operators."
)


def rms_norm(x: PyTree[Array]) -> Array:
    """Root-mean-square of every element of a pytree."""
    leaves = jtu.tree_leaves(x)
    size = sum(leaf.size for leaf in leaves)
    return jnp.sqrt(sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in leaves) / size)


class ZeroStartCG(lx.AbstractLinearSolver):
    """CG on a symmetric positive definite operator from y₀ = 0: n iterations cost n operator applications.

    Stops when `norm` of the residual and of the last update are both ≤ `atol` (`atol=0`: exactly
    `max_steps` iterations), when the residual vanishes, or after `max_steps` iterations (reported as
    `max_steps_reached` when `atol > 0`). A breakdown (pᵀAp ≤ 0 or non-finite) returns NaN.
    `stats["residual"]` is the final residual b − A y (by recurrence). `memory` > 0 also returns the first
    `memory` search directions p_i and their products A p_i
    (`stats["directions"]`, `stats["products"]`, leading axis `memory`, zero where CG stopped earlier):
    curvature pairs for a limited-memory preconditioner of the next, similar system.
    """

    atol: float | Array
    max_steps: int
    norm: Callable[[PyTree[Array]], Array] = rms_norm
    memory: int = 0

    def __check_init__(self):
        if isinstance(self.atol, (int, float)) and self.atol < 0:
            raise ValueError(f"atol must be ≥ 0; got {self.atol}.")
        if int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be ≥ 1; got {self.max_steps}.")
        if int(self.memory) < 0:
            raise ValueError(f"memory must be ≥ 0; got {self.memory}.")

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        preconditioner = options.get("preconditioner")
        if preconditioner is not None and not lx.is_positive_semidefinite(preconditioner):
            raise ValueError("the preconditioner must be a linear operator tagged lx.positive_semidefinite_tag.")
        same = jax.tree_util.tree_structure(operator.in_structure()) == jax.tree_util.tree_structure(
            operator.out_structure()
        ) and all(
            (a.shape, a.dtype) == (b.shape, b.dtype)
            for a, b in zip(jtu.tree_leaves(operator.in_structure()), jtu.tree_leaves(operator.out_structure()))
        )
        if not (same and lx.is_positive_semidefinite(operator)):
            raise ValueError(_NOT_SPD)
        return lx.linearise(operator)

    def compute(self, state, vector: PyTree[Array], options: dict[str, Any]):
        operator = state
        preconditioner = options.get("preconditioner")
        precondition = (lambda r: r) if preconditioner is None else preconditioner.mv
        atol = jnp.asarray(self.atol, dtype=float)
        stop_on_tolerance = not (isinstance(self.atol, (int, float)) and self.atol == 0)
        y0 = jtu.tree_map(jnp.zeros_like, vector)
        inf = jtu.tree_map(lambda x: jnp.full_like(x, jnp.inf), vector)
        z0 = precondition(vector)
        gamma0 = tree_dot(vector, z0)  # rᵀ P r

        m = int(self.memory)
        empty = jtu.tree_map(lambda x: jnp.zeros((m,) + x.shape, x.dtype), vector)

        def running(carry):
            diff, _, r, _, gamma, step, _ = carry
            more = (gamma > 0) & (step < self.max_steps)
            if stop_on_tolerance:
                more = more & ((self.norm(r) > atol) | (self.norm(diff) > atol))
            return more

        def iteration(carry):
            _, y, r, p, gamma, step, pairs = carry
            ap = operator.mv(p)
            if m > 0:  # record (p, Ap) in slot `step` while slots remain
                slot = jnp.minimum(step, m - 1)
                keep = step < m
                pairs = tuple(
                    jtu.tree_map(lambda buf, x: buf.at[slot].set(jnp.where(keep, x, buf[slot])), buf, new)
                    for buf, new in zip(pairs, (p, ap))
                )
            pap = tree_dot(p, ap)
            alpha = jnp.where((pap > 0) & jnp.isfinite(pap), gamma / pap, jnp.nan)
            diff = jtu.tree_map(lambda x: alpha * x, p)
            y = tree_axpy(1.0, diff, y)
            r = tree_axpy(-alpha, ap, r)
            z = precondition(r)
            gamma_new = tree_dot(r, z)
            p = tree_axpy(gamma_new / gamma, p, z)
            return diff, y, r, p, gamma_new, step + 1, pairs

        carry = (inf, y0, vector, z0, gamma0, jnp.asarray(0, dtype=jnp.int32), (empty, empty))
        _, y, residual, _, _, steps, (directions, products) = jax.lax.while_loop(running, iteration, carry)
        if stop_on_tolerance:
            result = lx.RESULTS.where(steps >= self.max_steps, lx.RESULTS.max_steps_reached, lx.RESULTS.successful)
        else:
            result = lx.RESULTS.successful
        stats = {"num_steps": steps, "max_steps": self.max_steps, "residual": residual}
        if m > 0:
            stats = {**stats, "directions": directions, "products": products}
        return y, result, stats

    def transpose(self, state, options: dict[str, Any]):
        if "preconditioner" in options:
            options = {**options, "preconditioner": options["preconditioner"].transpose()}
        return state.transpose(), options

    def conj(self, state, options: dict[str, Any]):
        return lx.conj(state), options

    def assume_full_rank(self) -> bool:
        return True
