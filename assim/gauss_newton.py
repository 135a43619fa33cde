"""Gauss-Newton (incremental 4D-Var) for J(v) = ½‖r(v)‖², matrix-free, jit-compiled end to end.

Outer loop (`lax.while_loop`): linearise r at v_k (`jax.linearize`, tangent-linear model; its
`jax.linear_transpose` is the adjoint model), gradient g = J_rᵀ r. Inner loop: lineax CG on
(J_rᵀ J_r + μ I) δ = −g; in control-variable form J_rᵀJ_r = I + (observation part), so no
preconditioner is needed. `NoDamping` takes every step (one step is exact for a linear model);
`LevenbergMarquardt` accepts a step when the gain ratio ρ = actual/predicted reduction exceeds
a threshold and adapts μ (Nielsen's rule). Diagnostics are recorded per outer iteration;
model runs are counted (nonlinear forward, tangent-linear, adjoint) for benchmarks.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Float, Int, PyTree

from assim.cost import StrongConstraint4DVar, residual_cost
from assim.errors import ConvergenceError, InputError

RUNNING, GRADIENT, STAGNATION, MAX_OUTER, DAMPING, NONFINITE = range(6)
REASONS = (
    "still running",
    "converged: gradient norm reduced by the factor gtol",
    "converged: relative cost decrease of an accepted step fell below ftol",
    "not converged: max_outer outer iterations reached; raise max_outer or loosen gtol/ftol",
    "not converged: Levenberg-Marquardt damping exceeded max_damping without reducing the cost; "
    "check the gradient (Taylor test) or the model's solver tolerances",
    "not converged: the cost or its gradient became non-finite; check observations, B and the model time step",
)


class AbstractDamping(eqx.Module):
    """How a Gauss-Newton step is damped and whether it is accepted."""


class NoDamping(AbstractDamping):
    """Plain Gauss-Newton: μ = 0, every step taken (exact in one step for a linear model and exact CG)."""


class LevenbergMarquardt(AbstractDamping):
    """Damping μ I added to the Gauss-Newton Hessian; a step is accepted when its gain ratio exceeds `acceptance`."""

    initial: float = 1e-3
    acceptance: float = 1e-4
    max_damping: float = 1e10

    def __check_init__(self):
        if not (self.initial >= 0 and 0 <= self.acceptance < 1 and self.max_damping > self.initial):
            raise InputError(
                "LevenbergMarquardt needs initial ≥ 0, 0 ≤ acceptance < 1 and max_damping > initial; "
                f"got {self.initial}, {self.acceptance}, {self.max_damping}."
            )


class GaussNewtonDiagnostics(eqx.Module):
    """Per-outer-iteration record; index k is the iterate v_k (k = 0: first guess), NaN/0 beyond the last."""

    cost: Float[Array, " k"]
    cost_background: Float[Array, " k"]
    cost_observation: Float[Array, " k"]
    gradient_norm: Float[Array, " k"]
    cg_iterations: Int[Array, " k"]
    accepted: Bool[Array, " k"]
    damping: Float[Array, " k"]
    forward_evaluations: Int[Array, " k"]
    tangent_linear_evaluations: Int[Array, " k"]
    adjoint_evaluations: Int[Array, " k"]
    n_outer: Int[Array, ""]


class GaussNewtonResult(eqx.Module):
    """Analysis (control v, initial state x0, optional trajectory), diagnostics and convergence status."""

    v: PyTree[Array]
    x0: PyTree[Array]
    trajectory: PyTree[Array] | None
    diagnostics: GaussNewtonDiagnostics
    converged: Bool[Array, ""]
    reason: Int[Array, ""]

    def message(self) -> str:
        """Why the outer loop stopped (concrete results only)."""
        return REASONS[int(self.reason)]

    def check(self) -> GaussNewtonResult:
        """Return self if converged, else raise ConvergenceError saying why and what to change."""
        if isinstance(self.converged, jax.core.Tracer):
            raise InputError("check() needs a concrete result: call it outside jit/vmap.")
        if not bool(jnp.all(self.converged)):
            d = self.diagnostics
            raise ConvergenceError(
                f"Gauss-Newton {REASONS[int(jnp.max(self.reason))]} "
                f"(after {int(jnp.max(d.n_outer))} outer iterations; gradient norm {jnp.nanmin(d.gradient_norm):.3g})."
            )
        return self


def _dot(a, b) -> Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _axpy(alpha, x, y):
    return jax.tree_util.tree_map(lambda a, b: alpha * a + b, x, y)


def _rms_norm(x) -> Array:
    leaves = jax.tree_util.tree_leaves(x)
    size = sum(leaf.size for leaf in leaves)
    return jnp.sqrt(sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in leaves) / size)


def _cg_matvecs(n: Array) -> Array:
    """Operator applications of a lineax CG run of n steps: the initial residual, then one per step."""
    return 1 + n


class GaussNewton(eqx.Module):
    """Incremental 4D-Var / Gauss-Newton settings; `solve(problem)` runs the outer loop.

    - `damping`: `NoDamping()` or `LevenbergMarquardt(...)` (use the latter for nonlinear models).
    - `max_outer`: outer iterations (relinearisations) allowed; `cg_max_steps`: CG iterations per outer step.
    - `cg_tol`: CG stops when the RMS residual falls below cg_tol × RMS(−g) (and so does its last update);
      `cg_tol=0` runs exactly `cg_max_steps` iterations (truncated CG, as in unrolled solvers).
    - `gtol`: converged when ‖∇J(v_k)‖ ≤ gtol ‖∇J(v_0)‖.
    - `ftol`: converged when an accepted step lowers J by less than ftol × J.
    - `save_trajectory`: also return the analysis trajectory x_0 … x_N.
    """

    damping: AbstractDamping = NoDamping()
    max_outer: int = eqx.field(static=True, default=10)
    cg_max_steps: int = eqx.field(static=True, default=100)
    cg_tol: float = 1e-10
    gtol: float = 1e-6
    ftol: float = 1e-12
    save_trajectory: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.max_outer < 1 or self.cg_max_steps < 1:
            raise InputError(f"max_outer and cg_max_steps must be ≥ 1; got {self.max_outer}, {self.cg_max_steps}.")
        if not (self.cg_tol >= 0 and self.gtol >= 0 and self.ftol >= 0):
            raise InputError("cg_tol, gtol and ftol must be non-negative.")

    def solve(
        self, problem: StrongConstraint4DVar, v0: PyTree[Array] | None = None, *, throw: bool = False
    ) -> GaussNewtonResult:
        """Minimise the 4D-Var cost from control v0 (default 0: x0 = x_b); with throw=True raise if not converged."""
        if v0 is None:
            v0 = problem.zero_control()
        result = _solve(self, problem, v0)
        if throw:
            result.check()
        return result

    def _step(self, problem, v, g, jvp, vjp, cost, mu, nu):
        """One damped Gauss-Newton step: (new v, μ, ν, accepted, finite step, CG steps, forward/TL/adjoint runs)."""
        scale = _rms_norm(g)
        scale = jnp.where(scale > 0, scale, 1.0)

        def hessian(d):
            return _axpy(mu, d, vjp(jvp(d))[0])

        operator = lx.FunctionLinearOperator(
            hessian, jax.eval_shape(lambda: g), tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
        )
        # residual by recurrence only (as SciPy): one Hessian application per step, one fewer traced copy of it
        cg = lx.CG(rtol=0.0, atol=self.cg_tol, max_steps=self.cg_max_steps, norm=_rms_norm, stabilise_every=None)
        rhs = jax.tree_util.tree_map(lambda x: -x / scale, g)
        sol = lx.linear_solve(operator, rhs, solver=cg, throw=False)
        delta = jax.tree_util.tree_map(lambda x: x * scale, sol.value)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(delta)]))
        delta = jax.tree_util.tree_map(lambda x: jnp.where(finite, x, 0.0), delta)  # never feed NaN to the model
        n_cg = jnp.asarray(sol.stats["num_steps"], dtype=jnp.int32)
        matvecs = _cg_matvecs(n_cg)
        v_trial = _axpy(1.0, delta, v)
        if isinstance(self.damping, NoDamping):
            return v_trial, mu, nu, finite, finite, n_cg, 0, matvecs, matvecs
        predicted = -_dot(g, delta) - 0.5 * sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(jvp(delta)))
        trial_cost = problem.cost(v_trial)
        rho = (cost - trial_cost) / predicted
        accepted = finite & jnp.isfinite(trial_cost) & (predicted > 0) & (rho > self.damping.acceptance)
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
        mu_new = jnp.where(accepted, mu * shrink, mu * nu)
        nu_new = jnp.where(accepted, 2.0, 2.0 * nu)
        v_new = jax.tree_util.tree_map(lambda a, b: jnp.where(accepted, a, b), v_trial, v)
        return v_new, mu_new, nu_new, accepted, finite, n_cg, 1, matvecs + 1, matvecs


@eqx.filter_jit
def _solve(solver: GaussNewton, problem: StrongConstraint4DVar, v0: PyTree[Array]) -> GaussNewtonResult:
    problem = problem.prepared()
    n = solver.max_outer + 1
    nan = jnp.full(n, jnp.nan, dtype=float)
    zeros = jnp.zeros(n, dtype=jnp.int32)
    lm = isinstance(solver.damping, LevenbergMarquardt)
    mu0 = jnp.asarray(solver.damping.initial if lm else 0.0, dtype=float)
    diag = GaussNewtonDiagnostics(
        cost=nan, cost_background=nan, cost_observation=nan, gradient_norm=nan,
        cg_iterations=zeros, accepted=jnp.zeros(n, bool).at[0].set(True), damping=nan.at[0].set(mu0),
        forward_evaluations=zeros, tangent_linear_evaluations=zeros, adjoint_evaluations=zeros,
        n_outer=jnp.asarray(0, dtype=jnp.int32),
    )  # fmt: skip
    counts0 = jnp.zeros(3, dtype=jnp.int32)  # forward, tangent-linear, adjoint
    carry0 = (
        jnp.asarray(0, dtype=jnp.int32), v0, mu0, jnp.asarray(2.0), jnp.asarray(jnp.inf), jnp.asarray(False),
        jnp.asarray(0.0), jnp.asarray(RUNNING, dtype=jnp.int32), counts0, diag,
    )  # fmt: skip

    def body(carry):
        i, v, mu, nu, cost_prev, last_accepted, gnorm0, _, counts, d = carry
        r, jvp = jax.linearize(problem.residual, v)
        vjp = jax.linear_transpose(jvp, v)
        jb, jo = residual_cost(r)
        cost = jb + jo
        # a blown-up trajectory must end the run with a reason, not feed NaN into adjoint solves
        r = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(cost), x, 0.0), r)
        (g,) = vjp(r)
        gnorm = jnp.sqrt(_dot(g, g))
        gnorm0 = jnp.where(i == 0, gnorm, gnorm0)
        counts = counts + jnp.array([1, 0, 1], dtype=jnp.int32)
        d = eqx.tree_at(
            lambda t: (t.cost, t.cost_background, t.cost_observation, t.gradient_norm,
                       t.forward_evaluations, t.tangent_linear_evaluations, t.adjoint_evaluations),
            d,
            (d.cost.at[i].set(cost), d.cost_background.at[i].set(jb), d.cost_observation.at[i].set(jo),
             d.gradient_norm.at[i].set(gnorm), d.forward_evaluations.at[i].set(counts[0]),
             d.tangent_linear_evaluations.at[i].set(counts[1]), d.adjoint_evaluations.at[i].set(counts[2])),
        )  # fmt: skip
        decrease = cost_prev - cost
        stagnated = (i > 0) & last_accepted & (decrease >= 0) & (decrease <= solver.ftol * jnp.abs(cost_prev))
        too_damped = (mu > solver.damping.max_damping) if lm else jnp.asarray(False)
        reason = jnp.select(
            [~jnp.isfinite(cost), gnorm <= solver.gtol * gnorm0, stagnated, too_damped,
             i >= solver.max_outer],
            [NONFINITE, GRADIENT, STAGNATION, DAMPING, MAX_OUTER],
            RUNNING,
        ).astype(jnp.int32)  # fmt: skip

        def typed(v_, mu_, nu_, accepted_, finite_, *ints):
            return (v_, jnp.asarray(mu_, float), jnp.asarray(nu_, float), jnp.asarray(accepted_, bool),
                    jnp.asarray(finite_, bool), *(jnp.asarray(k, jnp.int32) for k in ints))  # fmt: skip

        def step(_):
            return typed(*solver._step(problem, v, g, jvp, vjp, cost, mu, nu))

        def stop(_):
            return typed(v, mu, nu, False, True, 0, 0, 0, 0)

        v_new, mu_new, nu_new, accepted, finite, n_cg, n_fwd, n_tl, n_ad = jax.lax.cond(
            reason == RUNNING, step, stop, None
        )
        counts = counts + jnp.stack([n_fwd, n_tl, n_ad]).astype(jnp.int32)
        running = reason == RUNNING
        j = jnp.minimum(i + 1, solver.max_outer)
        d = eqx.tree_at(
            lambda t: (t.cg_iterations, t.accepted, t.damping, t.n_outer),
            d,
            (jnp.where(running, d.cg_iterations.at[j].set(n_cg), d.cg_iterations),
             jnp.where(running, d.accepted.at[j].set(accepted), d.accepted),
             jnp.where(running, d.damping.at[j].set(mu_new), d.damping),
             jnp.where(running, i + 1, i).astype(jnp.int32)),
        )  # fmt: skip
        cost_prev = jnp.where(accepted, cost, cost_prev)
        reason = jnp.where(finite, reason, NONFINITE).astype(jnp.int32)  # a CG breakdown ends the run
        return (i + 1, v_new, mu_new, nu_new, cost_prev, accepted, gnorm0, reason, counts, d)

    final = jax.lax.while_loop(lambda c: c[7] == RUNNING, body, carry0)
    _, v, *_, reason, _, d = final
    x0 = problem.initial_state(v)
    trajectory = problem.trajectory(v) if solver.save_trajectory else None
    converged = (reason == GRADIENT) | (reason == STAGNATION)
    return GaussNewtonResult(v=v, x0=x0, trajectory=trajectory, diagnostics=d, converged=converged, reason=reason)
