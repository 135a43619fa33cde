"""Hypergradient strategies: how the derivative of a loss ℓ(v̂(φ), φ) reaches the outer parameters φ (learned layer
parameters, B variance / length scale, observation-error scale, physical model parameters).

- `Unrolled()`: backpropagation through the K checkpointed layers.
- `Truncated(k)`: the same, with the gradient stopped before the last k layers (`Truncated(K)` is `Unrolled()`).
- `OneStep()`: the K layers run without gradient to v̂; the gradient is that of one more application of the
  last layer at v̂ (its value is not used: the analysis is v̂ itself).
- `Implicit(...)`: at a stationary point ∇_v J(v*, φ) = 0, solve H w = ∇_v ℓ matrix-free (lineax CG; H the
  Gauss-Newton Hessian I + J_dᵀJ_d or the exact Hessian) and return dℓ/dφ = ∂_φ ℓ − ∂_φ(∇_v J(v*, φ) · w).
  Memory is independent of K. Valid only where the solver converged to a stationary point of the problem's
  cost (λ_K = 1, a correction network that vanishes at δ = 0); the solver's own parameters then get zero
  gradient. The GN Hessian is exact for a linear model and approximate otherwise.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PyTree

from assim.errors import InputError
from assim.learned.unrolled import UnrolledGaussNewton
from assim.problems.cost import StrongConstraint4DVar
from assim.solvers.krylov import tree_axpy


class AbstractHypergradient(eqx.Module):
    """How the analysis v̂ of the unrolled solver is differentiated with respect to outer parameters."""

    @abc.abstractmethod
    def analyse(self, solver: UnrolledGaussNewton, problem: StrongConstraint4DVar) -> PyTree[Array]:
        """Analysis control v̂ of the window, carrying this strategy's derivative."""


def _stop(tree):
    return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)


class Unrolled(AbstractHypergradient):
    """Backpropagate through all K (checkpointed) layers."""

    def analyse(self, solver, problem):
        return solver.solve(problem).v


class Truncated(AbstractHypergradient):
    """Backpropagate through the last k layers only (the control entering them is a constant)."""

    k: int = eqx.field(static=True)

    def analyse(self, solver, problem):
        if not 1 <= self.k <= solver.n_layers:
            raise InputError(f"Truncated(k) needs 1 ≤ k ≤ n_layers = {solver.n_layers}; got k = {self.k}.")
        problem = problem.prepared()
        first = solver.n_layers - self.k
        v = solver.initial_control(problem)  # a learned first guess keeps its gradient only when k = K
        if first > 0:
            v = _stop(solver.run(problem, v, 0, first)[0])
        return solver.run(problem, v, first)[0]


class OneStep(AbstractHypergradient):
    """Value: the K-layer analysis v̂ (no gradient); gradient: one more last layer applied at v̂."""

    def analyse(self, solver, problem):
        problem = problem.prepared()
        v = _stop(solver.run(problem, solver.initial_control(problem))[0])
        v1 = solver.run(problem, v, solver.n_layers - 1)[0]
        return jax.tree_util.tree_map(lambda a, b: a + (b - jax.lax.stop_gradient(b)), v, v1)


class AbstractHessian(eqx.Module):
    """Which Hessian of J the implicit adjoint system uses."""

    @abc.abstractmethod
    def matvec(self, problem: StrongConstraint4DVar, v: PyTree[Array]):
        """Hessian-vector product w ↦ H(v) w (matrix-free)."""


class GaussNewtonHessian(AbstractHessian):
    """H = I + J_dᵀ J_d (control-variable form; exact for a linear model)."""

    def matvec(self, problem, v):
        _, jvp = jax.linearize(problem.departures, v)
        vjp = jax.linear_transpose(jvp, v)
        return lambda w: tree_axpy(1.0, w, vjp(jvp(w))[0])


class ExactHessian(AbstractHessian):
    """H = ∇²J (forward-over-reverse Hessian-vector products)."""

    def matvec(self, problem, v):
        grad = jax.grad(problem.cost)
        return lambda w: jax.jvp(grad, (v,), (w,))[1]


class Implicit(AbstractHypergradient):
    """Implicit-function-theorem hypergradient at the (converged) analysis; `solver` is a lineax CG."""

    hessian: AbstractHessian = GaussNewtonHessian()
    solver: lx.CG = lx.CG(rtol=1e-12, atol=1e-12, max_steps=200)

    def analyse(self, solver, problem):
        return _implicit((problem, solver), self)


@eqx.filter_custom_vjp
def _implicit(problem_and_solver, strategy):
    problem, solver = problem_and_solver
    return solver.solve(problem).v


@_implicit.def_fwd
def _implicit_fwd(perturbed, problem_and_solver, strategy):
    problem, solver = problem_and_solver
    v = solver.solve(problem).v
    return v, v


@_implicit.def_bwd
def _implicit_bwd(v, g_v, perturbed, problem_and_solver, strategy):
    """w = H⁻¹ ∇_v ℓ, then −∂_problem(∇_v J(v*) · w); the solver's parameters get zero (v* does not depend on them)."""
    problem, solver = problem_and_solver
    prepared = problem.prepared()
    g_v = jax.tree_util.tree_map(lambda g, x: jnp.zeros_like(x) if g is None else g, g_v, v)
    operator = lx.FunctionLinearOperator(
        strategy.hessian.matvec(prepared, v),
        jax.eval_shape(lambda: v),
        tags=(lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
    # lineax CG stops per element (|r_i| ≤ atol + rtol|b_i|): solve for a unit-RMS right-hand side
    leaves = jax.tree_util.tree_leaves(g_v)
    scale = jnp.sqrt(sum(jnp.sum(x**2) for x in leaves) / sum(x.size for x in leaves))
    scale = jnp.where(scale > 0, scale, 1.0)
    rhs = jax.tree_util.tree_map(lambda x: x / scale, g_v)
    w = lx.linear_solve(operator, rhs, solver=strategy.solver, throw=False).value
    w = jax.tree_util.tree_map(lambda x: x * scale, w)

    def gradient(p):
        return jax.grad(p.prepared().cost)(v)

    _, vjp = eqx.filter_vjp(gradient, problem)
    (grads,) = vjp(w)
    no_gradient = jax.tree_util.tree_map(lambda _: None, solver)
    return jax.tree_util.tree_map(jnp.negative, grads), no_gradient
