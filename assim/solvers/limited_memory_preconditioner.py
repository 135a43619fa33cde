"""Limited-memory preconditioner of the Gauss-Newton inner loop from the previous inner loop's CG.

Successive outer iterations solve similar systems: the Hessian I + GᵀG (+ μI) changes only through
the linearisation point. Each CG iteration of an inner loop yields a curvature pair (s_i, y_i = H s_i)
at no extra cost. `LimitedMemory` applies the L-BFGS inverse-Hessian update of a base preconditioner P₀
with those pairs (the quasi-Newton limited-memory preconditioner of Morales & Nocedal 2000, as used in
operational incremental 4D-Var): exact on the span of the pairs for an unchanged Hessian, P₀ elsewhere.
It stays symmetric positive definite because every pair of a positive definite Hessian has sᵀy > 0;
unused slots (s = 0) are skipped.

In a cycle the next window's Hessian is similar too (same observing network and B, a nearby trajectory):
`Cycling(preconditioner_carry=CarriedPairs())` hands the pairs of each window's last inner loop to the next
window's first (`GaussNewton.solve(problem, pairs=...)`), where otherwise it would start from the base.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PyTree

from assim.errors import InputError
from assim.solvers.gauss_newton import GaussNewton
from assim.solvers.krylov import tree_axpy, tree_dot
from assim.solvers.preconditioner import AbstractInnerPreconditioner, NoPreconditioner


def _slot(tree: PyTree[Array], i: int) -> PyTree[Array]:
    return jax.tree_util.tree_map(lambda x: x[i], tree)


class LimitedMemory(AbstractInnerPreconditioner):
    """P = the L-BFGS update of `base` with the previous inner loop's first `memory` CG pairs (s_i, H s_i)."""

    base: AbstractInnerPreconditioner
    memory: int = eqx.field(static=True)
    n_probes: int = eqx.field(static=True)

    def __init__(self, base: AbstractInnerPreconditioner = NoPreconditioner(), memory: int = 8):
        if not isinstance(base, AbstractInnerPreconditioner) or isinstance(base, LimitedMemory):
            raise InputError(
                "LimitedMemory's base must be NoPreconditioner(), ProbedSpectral(...) or InnovationSpectral(...)."
            )
        if int(memory) < 1:
            raise InputError(f"LimitedMemory needs memory ≥ 1 curvature pairs; got {memory}.")
        self.base = base
        self.memory = int(memory)
        self.n_probes = base.n_probes

    def n_pairs(self) -> int:
        return self.memory

    def uses_background_gradient(self) -> bool:
        return self.base.uses_background_gradient()

    def build(
        self, hessian, like: PyTree[Array], pairs=None, *, background_gradient=None, damping=0.0
    ) -> lx.AbstractLinearOperator | None:
        """Two-loop recursion on P₀ = base with the pairs (s_i, y_i); P₀ alone before any pairs exist."""
        base = self.base.build(hessian, like, background_gradient=background_gradient, damping=damping)
        if pairs is None:
            return base
        s, y = pairs
        apply_base = (lambda r: r) if base is None else base.mv
        rho = []
        for i in range(self.memory):
            sy = tree_dot(_slot(s, i), _slot(y, i))
            rho.append(jnp.where(sy > 0, 1.0 / jnp.where(sy > 0, sy, 1.0), 0.0))

        def apply(r):
            q = r
            a: list[Any] = [None] * self.memory  # every slot is filled by the first loop
            for i in reversed(range(self.memory)):
                a[i] = rho[i] * tree_dot(_slot(s, i), q)
                q = tree_axpy(-a[i], _slot(y, i), q)
            z = apply_base(q)
            for i in range(self.memory):
                b = rho[i] * tree_dot(_slot(y, i), z)
                z = tree_axpy(a[i] - b, _slot(s, i), z)
            return z

        tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
        return lx.FunctionLinearOperator(apply, jax.eval_shape(lambda: like), tags=tags)


class AbstractPreconditionerCarry(eqx.Module):
    """What a cycle hands from one window's solve to the next beside the background (`Cycling.preconditioner_carry`)."""

    def check(self, solver) -> None:
        """Raise InputError if the window solver cannot use this hand-over."""

    @abc.abstractmethod
    def initial(self, solver, control: PyTree[jax.ShapeDtypeStruct]):
        """The carry before the first window, from the control's shape (fixed shapes: it lives in the loop carry)."""

    @abc.abstractmethod
    def solve(self, solver, problem, carry):
        """Solve one window from `carry`: (the solver's result, the carry for the next window)."""


class FreshPreconditioner(AbstractPreconditionerCarry):
    """Every window's solve starts from nothing but the background (any solver)."""

    def initial(self, solver, control):
        return None

    def solve(self, solver, problem, carry):
        return solver.solve(problem), None


class CarriedPairs(AbstractPreconditionerCarry):
    """The limited-memory CG pairs of a window's last inner loop precondition the next window's first inner loop.

    Needs `GaussNewton(preconditioner=LimitedMemory(...))`. Before the first window the slots are zero (skipped:
    the first window is solved exactly as without carrying); a window whose pairs are not finite hands on zeros.
    """

    def check(self, solver) -> None:
        if not isinstance(solver, GaussNewton) or solver.preconditioner.n_pairs() == 0:
            raise InputError(
                "CarriedPairs() carries the pairs of a limited-memory preconditioner: the cycle's solver must be "
                "GaussNewton(preconditioner=LimitedMemory(...)); use FreshPreconditioner() for other solvers."
            )

    def initial(self, solver, control):
        m = solver.preconditioner.n_pairs()
        slots = jax.tree_util.tree_map(lambda x: jnp.zeros((m,) + x.shape, jnp.result_type(x.dtype, float)), control)
        return slots, slots

    def solve(self, solver, problem, carry):
        result = solver.solve(problem, pairs=carry)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(result.pairs)]))
        pairs = jax.tree_util.tree_map(lambda x: jnp.where(finite, x, 0.0), result.pairs)
        return result, pairs
