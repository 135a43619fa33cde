"""Matrix-free implicit linear solves: lineax Krylov inside, implicit-function-theorem derivatives outside."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from models.base import all_finite, poison
from models.errors import ConvergenceError, NonFiniteError

NONFINITE_RHS = "non-finite right-hand side in an implicit solve: check the state and parameters for NaN/inf"
NOT_SOLVED = (
    "an implicit Krylov solve failed (max_steps reached, a breakdown, or NaN/inf in a parameter of the "
    "operator) and returned NaN: give the solver more steps (max_steps), a looser rtol/atol or a "
    "preconditioner, reduce dt, or check the parameters for NaN/inf"
)


def _rms(x: Array) -> Array:
    scale = jnp.sqrt(jnp.mean(x**2))
    return jnp.where(scale > 0, scale, 1.0)


def _krylov(
    matvec: Callable[[Array], Array],
    b: Array,
    solver: lx.AbstractLinearSolver,
    preconditioner: Callable[[Array], Array] | None,
    symmetric: bool,
) -> tuple[Array, Array]:
    """One lineax solve with the right-hand side scaled to unit RMS, so tolerances are relative.

    Callback-free (a cacheable program): a non-finite right-hand side or a solve that fails (Krylov steps
    exhausted, breakdown) returns NaN, which `implicit_solve` reports where its result is concrete."""
    # A zero right-hand side has the zero solution; some Krylov methods (BiCGStab) return NaN for it.
    is_zero = jnp.all(b == 0)
    b = jnp.where(is_zero, jnp.ones_like(b), b)
    scale = jax.lax.stop_gradient(_rms(b))
    structure = jax.ShapeDtypeStruct(b.shape, b.dtype)
    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag) if symmetric else ()
    operator = lx.FunctionLinearOperator(matvec, structure, tags=tags)
    options = {}
    if preconditioner is not None:
        options["preconditioner"] = lx.FunctionLinearOperator(
            preconditioner, structure, tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
        )
    sol = lx.linear_solve(operator, b / scale, solver=solver, options=options, throw=False)
    failed = (sol.result != lx.RESULTS.successful) | ~jnp.all(jnp.isfinite(b))
    return poison(jnp.where(is_zero, 0.0, sol.value * scale), failed), sol.stats["num_steps"]


def implicit_solve(
    matvec: Callable[[Float[Array, "*shape"]], Float[Array, "*shape"]],
    b: Float[Array, "*shape"],
    solver: lx.AbstractLinearSolver,
    *,
    preconditioner: Callable[[Float[Array, "*shape"]], Float[Array, "*shape"]] | None = None,
    symmetric: bool = False,
) -> tuple[Float[Array, "*shape"], Array]:
    """Solve A y = b matrix-free; return (y, Krylov iterations).

    Derivatives (forward and reverse, with respect to `b` and to whatever `matvec` closes
    over) come from the implicit function theorem — a solve with A or Aᵀ — never from
    backpropagating through Krylov iterations. Each solve, forward, tangent or adjoint,
    sees its right-hand side scaled to unit RMS, so the solver's `rtol` and `atol` are
    relative to the right-hand side of that solve (lineax's test is per element).
    `preconditioner` applies an approximate inverse of A and must be symmetric positive
    definite.
    """

    def solve(mv, rhs):
        return _krylov(mv, rhs, solver, preconditioner, symmetric)

    def transpose_solve(vm, rhs):
        return _krylov(vm, rhs, solver, preconditioner, symmetric)

    concrete = not isinstance(b, jax.core.Tracer)  # called eagerly: report a failure here, else NaN travels on
    if concrete and not all_finite(b):
        raise NonFiniteError(NONFINITE_RHS)
    y, steps = jax.lax.custom_linear_solve(
        matvec, b, solve, transpose_solve=transpose_solve, symmetric=symmetric, has_aux=True
    )
    if concrete and not all_finite(y):
        raise ConvergenceError(NOT_SOLVED)
    return y, steps
