"""Gauss-Newton (incremental 4D-Var) for J(v) = ½‖r(v)‖², matrix-free, jit-compiled end to end.

Outer loop (`lax.while_loop`): linearise r at v_k (`jax.linearize`, tangent-linear model; its
`jax.linear_transpose` is the adjoint model), gradient g = J_rᵀ r. Inner loop: CG from δ = 0 (`ZeroStartCG`,
a lineax solver: no operator application for the zero first guess) on
(J_rᵀ J_r + μ I) δ = −g; in control-variable form J_rᵀJ_r = I + (observation part): B^{1/2} is the
basic preconditioner (`ProbedSpectral`, `InnovationSpectral` and `LimitedMemory` add to it). `NoDamping` takes every step (one
step is exact for a linear model); `LevenbergMarquardt` accepts a step when the gain ratio
ρ = actual/predicted reduction exceeds a threshold and adapts μ (Nielsen's rule); the predicted reduction
comes from CG's own identity δᵀ(J_rᵀJ_r + μI)δ = −gᵀδ, with no extra model run. The linearisation at a
trial point gives its cost for the gain ratio and, once the step is accepted, the tangent-linear and
adjoint models of the next step, so an accepted step costs one nonlinear model run. With
`linearity=Affine()` (a linear problem) the residual is linearised once and later iterates' cost and
gradient follow from the quadratic model. With `inner_model=InnerModel(cheaper)` the inner loop runs the
cheaper model's tangent-linear and adjoint (linearised at the iterate), the outer loop keeps the problem's
model for cost and gradient. Diagnostics are recorded per outer iteration; model runs are
counted (nonlinear forward, tangent-linear, adjoint) for benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Float, Int, PyTree

from assim.errors import InputError
from assim.problems.cost import StrongConstraint4DVar, residual_cost
from assim.solvers.inner_model import AbstractInnerModel, SameModel
from assim.solvers.krylov import ZeroStartCG, rms_norm, tree_axpy, tree_dot
from assim.solvers.preconditioner import AbstractInnerPreconditioner, NoPreconditioner
from assim.solvers.strategies import DAMPING as DAMPING
from assim.solvers.strategies import GRADIENT as GRADIENT
from assim.solvers.strategies import MAX_OUTER as MAX_OUTER
from assim.solvers.strategies import NONFINITE as NONFINITE
from assim.solvers.strategies import REASONS as REASONS
from assim.solvers.strategies import RUNNING as RUNNING
from assim.solvers.strategies import STAGNATION as STAGNATION
from assim.solvers.strategies import AbstractDamping as AbstractDamping
from assim.solvers.strategies import AbstractForcing as AbstractForcing
from assim.solvers.strategies import AbstractLinearity as AbstractLinearity
from assim.solvers.strategies import Affine as Affine
from assim.solvers.strategies import ConstantForcing as ConstantForcing
from assim.solvers.strategies import EisenstatWalker as EisenstatWalker
from assim.solvers.strategies import GaussNewtonDiagnostics as GaussNewtonDiagnostics
from assim.solvers.strategies import GaussNewtonResult as GaussNewtonResult
from assim.solvers.strategies import LevenbergMarquardt as LevenbergMarquardt
from assim.solvers.strategies import NoDamping as NoDamping
from assim.solvers.strategies import Nonlinear as Nonlinear

if TYPE_CHECKING:  # the weak-constraint and joint state-parameter problems solve here too
    from assim.problems.problem import AbstractVariationalProblem


def _cg_matvecs(n: Array, probes: int) -> Array:
    """Hessian applications of an inner solve: the preconditioner's probes, then one per `ZeroStartCG` step."""
    return n + probes


class GaussNewton(eqx.Module):
    """Incremental 4D-Var / Gauss-Newton settings; `solve(problem)` runs the outer loop.

    - `damping`: `NoDamping()` or `LevenbergMarquardt(...)` (use the latter for nonlinear models).
    - `max_outer`: outer iterations (relinearisations) allowed; `cg_max_steps`: CG iterations per outer step.
    - `cg_tol`: CG stops when the RMS residual falls below cg_tol × RMS(−g) (and so does its last update);
      `cg_tol=0` runs exactly `cg_max_steps` iterations (truncated CG, as in unrolled solvers).
    - `forcing`: `ConstantForcing()` (every inner solve to `cg_tol`) or `EisenstatWalker(...)` (loose inner solves
      while far from the analysis, tightening as the gradient falls; `cg_tol` is then the floor).
    - `preconditioner`: `NoPreconditioner()` (B^{1/2} only), `ProbedSpectral(grid shape, key=...)` (CG
      preconditioned by the inverse of the Hessian's estimated Fourier symbol; its probes are counted as runs),
      `InnovationSpectral(grid shape)` (that symbol from the background gradient's power spectrum, assuming B and R
      consistent with the innovations; no extra runs), or `LimitedMemory(base)` (base updated with the previous
      inner loop's CG curvature pairs; no extra runs).
    - `gtol`: converged when ‖∇J(v_k)‖ ≤ gtol ‖∇J(v_0)‖.
    - `ftol`: converged when an accepted step lowers J by less than ftol × J.
    - `save_trajectory`: also return the analysis trajectory x_0 … x_N.
    - `linearity`: `Nonlinear()` (relinearise at every iterate) or `Affine()` (a linear problem: one
      linearisation; later iterates' cost and gradient from the quadratic model, with no model run).
    - `inner_model`: `SameModel()` (the inner loop uses the outer linearisation) or `InnerModel(model)` (a
      cheaper model, e.g. looser implicit-solver tolerances, for the inner loop's tangent-linear and adjoint; one
      run of it per inner loop; the analysis is still a stationary point of the problem's cost).
    """

    damping: AbstractDamping = NoDamping()
    max_outer: int = eqx.field(static=True, default=10)
    cg_max_steps: int = eqx.field(static=True, default=100)
    cg_tol: float = 1e-10
    gtol: float = 1e-6
    ftol: float = 1e-12
    save_trajectory: bool = eqx.field(static=True, default=False)
    forcing: AbstractForcing = ConstantForcing()
    preconditioner: AbstractInnerPreconditioner = NoPreconditioner()
    linearity: AbstractLinearity = Nonlinear()
    inner_model: AbstractInnerModel = SameModel()

    def __check_init__(self):
        if self.max_outer < 1 or self.cg_max_steps < 1:
            raise InputError(f"max_outer and cg_max_steps must be ≥ 1; got {self.max_outer}, {self.cg_max_steps}.")
        if isinstance(self.linearity, Affine) and not isinstance(self.damping, NoDamping):
            raise InputError(
                "linearity=Affine() is for linear problems, which need no damping: pass damping=NoDamping()."
            )
        if isinstance(self.linearity, Affine) and not isinstance(self.inner_model, SameModel):
            raise InputError(
                "linearity=Affine() takes every later cost and gradient from the inner loop's quadratic model, which "
                "another inner model would bias: use inner_model=SameModel(), or linearity=Nonlinear() with InnerModel."
            )
        if not (self.cg_tol >= 0 and self.gtol >= 0 and self.ftol >= 0):
            raise InputError("cg_tol, gtol and ftol must be non-negative.")

    def solve(
        self,
        problem: StrongConstraint4DVar | AbstractVariationalProblem,
        v0: PyTree[Array] | None = None,
        *,
        throw: bool = False,
        pairs: tuple | None = None,
    ) -> GaussNewtonResult:
        """Minimise the 4D-Var cost from control v0 (default 0: x0 = x_b); with throw=True raise if not converged.

        `pairs`: curvature pairs (s, H s) for a limited-memory preconditioner's first inner loop, e.g. the
        `result.pairs` of the previous window (default: none, zero slots); the result returns its last loop's.
        """
        if v0 is None:
            v0 = problem.zero_control()
        result = _solve(self, problem, v0, self._check_pairs(pairs, v0))
        if throw:
            result.check()
        return result

    def _check_pairs(self, pairs: tuple | None, v0: PyTree[Array]) -> tuple | None:
        """The given pairs, after checking that the preconditioner keeps pairs of that memory and control shape."""
        if pairs is None:
            return None
        m = self.preconditioner.n_pairs()
        if m == 0:
            raise InputError("pairs were given but the preconditioner keeps none: use preconditioner=LimitedMemory().")
        shapes = [(m,) + jnp.shape(x) for x in jax.tree_util.tree_leaves((v0, v0))]
        same_tree = jax.tree_util.tree_structure(pairs) == jax.tree_util.tree_structure((v0, v0))
        if not same_tree or [jnp.shape(x) for x in jax.tree_util.tree_leaves(pairs)] != shapes:
            raise InputError(f"pairs must be (s, H s), each the control's pytree with a leading axis of memory {m}.")
        return pairs

    def _step(self, g, jvp, vjp, mu, rtol, pairs, background_gradient=None):
        """One damped step δ from the linearisation (jvp, vjp) and gradient g: (δ, predicted, finite, CG steps, pairs,
        the model gradient at v + δ).

        `pairs` (s_i, J_rᵀJ_r s_i) from the previous inner loop feed a limited-memory preconditioner; the
        returned pairs are this loop's, without the damping μ (which the next step adds back).
        `background_gradient` (Gᵀd at the first iterate) feeds a preconditioner built from innovation statistics.
        """
        scale = rms_norm(g)
        scale = jnp.where(scale > 0, scale, 1.0)

        def hessian(d):
            return tree_axpy(mu, d, vjp(jvp(d))[0])

        operator = lx.FunctionLinearOperator(
            hessian, jax.eval_shape(lambda: g), tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
        )
        # residual by recurrence only (as SciPy): one Hessian application per step and none for δ₀ = 0
        n_pairs = self.preconditioner.n_pairs()
        cg = ZeroStartCG(atol=rtol, max_steps=self.cg_max_steps, norm=rms_norm, memory=n_pairs)
        rhs = jax.tree_util.tree_map(lambda x: -x / scale, g)
        damped = (pairs[0], jax.tree_util.tree_map(lambda y, s: y + mu * s, pairs[1], pairs[0])) if n_pairs else None
        preconditioner = self.preconditioner.build(
            hessian, rhs, damped, background_gradient=background_gradient, damping=mu
        )
        options = {} if preconditioner is None else {"preconditioner": preconditioner}
        sol = lx.linear_solve(operator, rhs, solver=cg, options=options, throw=False)
        if n_pairs:
            directions = sol.stats["directions"]
            pairs = (directions, jax.tree_util.tree_map(lambda y, s: y - mu * s, sol.stats["products"], directions))
        delta = jax.tree_util.tree_map(lambda x: x * scale, sol.value)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(delta)]))
        delta = jax.tree_util.tree_map(lambda x: jnp.where(finite, x, 0.0), delta)  # never feed NaN to the model
        n_cg = jnp.asarray(sol.stats["num_steps"], dtype=jnp.int32)
        # ∇J(v + δ) of the Gauss-Newton model: g + (J_rᵀJ_r + μI)δ = −scale × (CG's residual)
        g_after = jax.tree_util.tree_map(lambda x: -x * scale, sol.stats["residual"])
        if isinstance(self.damping, NoDamping):
            return delta, jnp.asarray(jnp.inf), finite, n_cg, pairs, g_after
        # predicted reduction −gᵀδ − ½‖J_r δ‖² of the Gauss-Newton model, for the gain ratio. A CG iterate from
        # δ₀ = 0 has a residual orthogonal to itself, so δᵀ(J_rᵀJ_r + μI)δ = −gᵀδ and no model run is needed.
        predicted = -0.5 * tree_dot(g, delta) + 0.5 * mu * tree_dot(delta, delta)
        return delta, predicted, finite, n_cg, pairs, g_after


class _State(eqx.Module):
    """Outer-loop carry: the accepted iterate v (row k) and the point p the next pass linearises."""

    it: Int[Array, ""]  # passes of the loop body (one linearisation each)
    k: Int[Array, ""]  # diagnostics row of v
    v: PyTree[Array]
    jb: Float[Array, ""]
    jo: Float[Array, ""]
    gnorm: Float[Array, ""]  # ‖∇J(v)‖
    gnorm0: Float[Array, ""]
    gnorm_prev: Float[Array, ""]  # ‖∇J‖ at the start of the previous step (forcing terms)
    eta: Float[Array, ""]  # CG tolerance of the previous step
    p: PyTree[Array]
    candidate: Bool[Array, ""]  # p = v + δ is a trial step, still to be accepted or rejected
    predicted: Float[Array, ""]
    mu: Float[Array, ""]
    nu: Float[Array, ""]
    reason: Int[Array, ""]
    counts: Int[Array, " 3"]  # forward, tangent-linear, adjoint runs so far
    pairs: tuple | None  # the last inner loop's CG pairs (s_i, J_rᵀJ_r s_i) for `LimitedMemory`
    background_gradient: PyTree[Array] | None  # Gᵀd at the first iterate, for `InnovationSpectral`
    cost_p: Float[Array, ""]  # Affine(): J(p) and ∇J(p) from the quadratic model
    g_p: PyTree[Array] | None
    diagnostics: GaussNewtonDiagnostics


def _select(pred, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


@eqx.filter_jit
def _solve(
    solver: GaussNewton,
    problem: StrongConstraint4DVar | AbstractVariationalProblem,
    v0: PyTree[Array],
    pairs: tuple | None,
) -> GaussNewtonResult:
    """The outer loop; each pass linearises the residual once, at a trial point or at v after a rejection.

    The linearisation at a trial point v + δ gives its cost (gain ratio) and, once accepted, the
    tangent-linear and adjoint models of the next step: an accepted step costs one nonlinear run,
    a rejected one two (its trial, then v again with more damping).
    """
    problem = problem.prepared()
    inner = solver.inner_model.inner_problem(problem)  # None: the inner loop reuses the outer linearisation
    n = solver.max_outer + 1
    nan = jnp.full(n, jnp.nan, dtype=float)
    zeros = jnp.zeros(n, dtype=jnp.int32)
    lm = isinstance(solver.damping, LevenbergMarquardt)
    lm_damping = cast(LevenbergMarquardt, solver.damping)  # read only when lm
    mu0 = jnp.asarray(lm_damping.initial if lm else 0.0, dtype=float)
    int0, f0 = jnp.asarray(0, dtype=jnp.int32), jnp.asarray(0.0)
    m = solver.preconditioner.n_pairs()
    slots = jax.tree_util.tree_map(lambda x: jnp.zeros((m,) + jnp.shape(x), jnp.result_type(x, float)), v0)
    pairs0 = (slots, slots) if m else None  # zero slots are skipped: the first inner loop's P is the base
    if pairs is not None:  # carried from a previous solve (e.g. the previous window of a cycle)
        pairs0 = jax.tree_util.tree_map(lambda x, z: jnp.asarray(x, z.dtype), pairs, pairs0)
    background = solver.preconditioner.uses_background_gradient()
    background0 = jax.tree_util.tree_map(jnp.zeros_like, v0) if background else None
    affine = isinstance(solver.linearity, Affine)
    counts0, cost0, g0 = jnp.zeros(3, dtype=jnp.int32), f0, None
    jvp0: Any = None  # bound, and read, only when affine
    vjp0: Any = None
    if affine:  # the one linearisation: tangent-linear and adjoint models of every iterate
        r0, jvp0 = jax.linearize(problem.residual, v0)
        vjp0 = jax.linear_transpose(jvp0, v0)
        g0 = vjp0(r0)[0]
        cost0 = cast(Array, sum(residual_cost(r0)))  # sum of two arrays, not the empty sum 0
        counts0 = jnp.array([1, 0, 1], dtype=jnp.int32)
    diag = GaussNewtonDiagnostics(
        cost=nan, cost_background=nan, cost_observation=nan, gradient_norm=nan,
        cg_iterations=zeros, accepted=jnp.zeros(n, bool).at[0].set(True), damping=nan.at[0].set(mu0),
        forward_evaluations=zeros, tangent_linear_evaluations=zeros, adjoint_evaluations=zeros, n_outer=int0,
    )  # fmt: skip
    state0 = _State(
        it=int0, k=int0, v=v0, jb=f0, jo=f0, gnorm=f0, gnorm0=f0, gnorm_prev=f0, eta=f0, p=v0,
        candidate=jnp.asarray(False), predicted=jnp.asarray(jnp.inf), mu=mu0, nu=jnp.asarray(2.0),
        reason=jnp.asarray(RUNNING, dtype=jnp.int32), counts=counts0, pairs=pairs0, background_gradient=background0,
        cost_p=cost0, g_p=g0,
        diagnostics=diag,
    )  # fmt: skip

    def body(s: _State) -> _State:
        r: Any = None  # bound, and read, only when not affine
        if affine:
            jvp, vjp = jvp0, vjp0
            jb_p = 0.5 * tree_dot(s.p, s.p)  # r = (v, departures): J_b = ½‖v‖²
            jo_p = s.cost_p - jb_p
            counts = s.counts
        else:
            r, jvp = jax.linearize(problem.residual, s.p)
            vjp = jax.linear_transpose(jvp, s.p)
            jb_p, jo_p = residual_cost(r)
            counts = s.counts + jnp.array([1, 0, 0], dtype=jnp.int32)
        cost_p, cost_v = jb_p + jo_p, s.jb + s.jo
        # gain ratio of a trial step (plain Gauss-Newton takes every step)
        if lm:
            rho = (cost_v - cost_p) / s.predicted
            ok = jnp.isfinite(cost_p) & (s.predicted > 0) & (rho > lm_damping.acceptance)
            shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            mu = jnp.where(s.candidate, jnp.where(ok, s.mu * shrink, s.mu * s.nu), s.mu)
            nu = jnp.where(s.candidate & ~ok, 2.0 * s.nu, jnp.where(s.candidate, 2.0, s.nu))
        else:
            ok, mu, nu = jnp.asarray(True), s.mu, s.nu
        accepted = ~s.candidate | ok  # the first guess, or v linearised again after a rejection
        new_row = s.candidate | (s.it == 0)
        if affine:
            g = s.g_p
        else:
            # a blown-up trajectory must end the run with a reason, not feed NaN into adjoint solves
            r = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(cost_p), x, 0.0), r)
            g = jax.lax.cond(accepted, lambda: vjp(r)[0], lambda: jax.tree_util.tree_map(jnp.zeros_like, s.p))
            counts = counts + jnp.stack([0, 0, accepted.astype(jnp.int32)])
        gnorm_p = jnp.sqrt(tree_dot(g, g))
        v = _select(accepted, s.p, s.v)
        jb, jo = jnp.where(accepted, jb_p, s.jb), jnp.where(accepted, jo_p, s.jo)
        gnorm = jnp.where(accepted, gnorm_p, s.gnorm)
        gnorm0 = jnp.where(s.it == 0, gnorm_p, s.gnorm0)
        k = jnp.where(s.candidate, s.k + 1, s.k)
        cost = jb + jo
        decrease = cost_v - cost_p
        stagnated = s.candidate & ok & (decrease >= 0) & (decrease <= solver.ftol * jnp.abs(cost_v))
        too_damped = (mu > lm_damping.max_damping) if lm else jnp.asarray(False)
        reason = jnp.select(
            [~jnp.isfinite(cost), gnorm <= solver.gtol * gnorm0, stagnated, too_damped, k >= solver.max_outer],
            [NONFINITE, GRADIENT, STAGNATION, DAMPING, MAX_OUTER],
            RUNNING,
        ).astype(jnp.int32)
        reason = jnp.where(new_row, reason, s.reason)
        d = s.diagnostics
        d = eqx.tree_at(
            lambda t: (t.cost, t.cost_background, t.cost_observation, t.gradient_norm, t.accepted, t.damping,
                       t.forward_evaluations, t.tangent_linear_evaluations, t.adjoint_evaluations, t.n_outer),
            d,
            _select(new_row,
                    (d.cost.at[k].set(cost), d.cost_background.at[k].set(jb), d.cost_observation.at[k].set(jo),
                     d.gradient_norm.at[k].set(gnorm), d.accepted.at[k].set(accepted), d.damping.at[k].set(mu),
                     d.forward_evaluations.at[k].set(counts[0]), d.tangent_linear_evaluations.at[k].set(counts[1]),
                     d.adjoint_evaluations.at[k].set(counts[2]), k),
                    (d.cost, d.cost_background, d.cost_observation, d.gradient_norm, d.accepted, d.damping,
                     d.forward_evaluations, d.tangent_linear_evaluations, d.adjoint_evaluations, d.n_outer)),
        )  # fmt: skip
        need_step = (reason == RUNNING) & accepted
        eta = solver.forcing.tolerance(solver.cg_tol, s.it == 0, gnorm, s.gnorm_prev, s.eta)
        # the observation term's gradient Gᵀd = ∇J − v at the first iterate (the background when v_0 = 0)
        background_gradient = _select(s.it == 0, tree_axpy(-1.0, v, g), s.background_gradient) if background else None

        def step(_):
            if inner is None:
                return solver._step(g, jvp, vjp, mu, eta, s.pairs, background_gradient)
            _, jvp_inner = jax.linearize(inner.residual, v)  # one run of the cheaper model
            return solver._step(g, jvp_inner, jax.linear_transpose(jvp_inner, v), mu, eta, s.pairs, background_gradient)

        def skip(_):
            zero = jax.tree_util.tree_map(jnp.zeros_like, v)
            return zero, jnp.asarray(jnp.inf), jnp.asarray(True), int0, s.pairs, g

        delta, predicted, finite, n_cg, pairs, g_after = jax.lax.cond(need_step, step, skip, None)
        matvecs = jnp.where(need_step, _cg_matvecs(n_cg, solver.preconditioner.n_probes), 0)
        inner_runs = need_step.astype(jnp.int32) if inner is not None else 0 * matvecs
        counts = counts + jnp.stack([inner_runs, matvecs, matvecs])
        cg_iterations = jnp.where(need_step, d.cg_iterations.at[k + 1].set(n_cg), d.cg_iterations)
        d = eqx.tree_at(lambda t: t.cg_iterations, d, cg_iterations)
        reason = jnp.where(finite, reason, NONFINITE).astype(jnp.int32)  # a CG breakdown ends the run
        return _State(
            it=s.it + 1, k=k, v=v, jb=jb, jo=jo, gnorm=gnorm, gnorm0=gnorm0,
            gnorm_prev=jnp.where(need_step, gnorm, s.gnorm_prev), eta=jnp.where(need_step, eta, s.eta),
            p=_select(need_step, tree_axpy(1.0, delta, v), v), candidate=need_step, predicted=predicted,
            mu=mu, nu=nu, reason=reason, counts=counts, pairs=pairs, background_gradient=background_gradient,
            cost_p=cost + 0.5 * tree_dot(delta, tree_axpy(1.0, g, g_after)) if affine else s.cost_p,
            g_p=g_after if affine else None, diagnostics=d,
        )  # fmt: skip

    final = jax.lax.while_loop(lambda s: s.reason == RUNNING, body, state0)
    v, reason, d = final.v, final.reason, final.diagnostics
    x0 = problem.initial_state(v)
    trajectory = problem.trajectory(v) if solver.save_trajectory else None
    converged = (reason == GRADIENT) | (reason == STAGNATION)
    return GaussNewtonResult(v=v, x0=x0, trajectory=trajectory, diagnostics=d, converged=converged, reason=reason,
                             pairs=final.pairs)  # fmt: skip
