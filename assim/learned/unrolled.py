"""Unrolled Gauss-Newton: K layers, each one GN step with a fixed number of CG iterations and learnable parameters.

Layer k linearises the departures d(v) at v_k (tangent-linear model by `jax.linearize`, adjoint by
`jax.linear_transpose`) and runs exactly `cg_steps` CG iterations (a `lax.fori_loop`, differentiable by
unrolling) on

    (λ_k I + J_dᵀ J_d + μ_k I) δ = −(λ_k v_k + J_dᵀ d(v_k)),     v_{k+1} = v_k + α_k (δ + C(v_k, δ))

with μ_k = softplus(·) ≥ 0 (damping), α_k = α_max·sigmoid(·) ∈ (0, α_max], α_max = 2 (a GN step on a convex
quadratic is stable for α < 2), λ_k = softplus(·) > 0 (background weight schedule, continuation), C an optional
learned correction of the increment (PnP slot) and v_0 an optional learned first guess from −∇J(0).
`lineax.linear_solve` is not used: it is differentiated by the implicit function theorem, i.e. as if solved
exactly, not as the truncated CG that ran. Layers run in a `lax.scan`, each `jax.checkpoint`-ed, so reverse mode
stores one control per layer. The diagnostics are the classical solver's (`GaussNewtonDiagnostics`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from assim.errors import InputError
from assim.learned.networks import AbstractControlNetwork
from assim.learned.preconditioner import AbstractLearnedPreconditioner
from assim.learned.prior import AbstractLearnedPrior
from assim.solvers.gauss_newton import MAX_OUTER, GaussNewtonDiagnostics
from assim.solvers.krylov import tree_axpy, tree_dot

MIN_DAMPING = 1e-30  # softplus has no exact zero: μ = 0 is stored as 1e-30 (negligible next to the Hessian ≥ I)


def fixed_cg(
    matvec, b: PyTree[Array], n_steps: int, tol: float = 0.0, preconditioner=None
) -> tuple[PyTree[Array], Int[Array, ""]]:
    """Exactly `n_steps` (preconditioned) CG iterations from 0 on A x = b (A symmetric positive definite, matrix-free).

    `preconditioner`: None (plain CG) or a symmetric positive definite map z = P r. An iteration whose residual
    norm is already ≤ tol·‖b‖ (or exactly zero) leaves the iterate unchanged, so rounding noise after convergence
    never enters the iterate or its derivative. Returns (x, active iterations).
    """
    apply_p = (lambda r: r) if preconditioner is None else preconditioner
    x0 = jax.tree_util.tree_map(jnp.zeros_like, b)
    rr0 = tree_dot(b, b)
    z0 = apply_p(b)
    rz0 = rr0 if preconditioner is None else tree_dot(b, z0)
    threshold = (tol**2) * rr0

    def body(_, state):
        x, r, p, rr, rz, count = state
        active = (rr > threshold) & (rz > 0)
        ap = matvec(p)
        pap = tree_dot(p, ap)
        alpha = jnp.where(active, rz / jnp.where(active, pap, 1.0), 0.0)
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, ap, r)
        rr_new = tree_dot(r, r)
        if preconditioner is None:
            z, rz_new = r, rr_new
        else:
            z = apply_p(r)
            rz_new = tree_dot(r, z)
        beta = jnp.where(active, rz_new / jnp.where(active, rz, 1.0), 0.0)
        p = jax.tree_util.tree_map(lambda zi, pi: jnp.where(active, zi + beta * pi, pi), z, p)
        rr = jnp.where(active, rr_new, rr)
        rz = jnp.where(active, rz_new, rz)
        return x, r, p, rr, rz, count + active.astype(jnp.int32)

    state0 = (x0, b, z0, rr0, rz0, jnp.asarray(0, jnp.int32))
    x, *_, count = jax.lax.fori_loop(0, n_steps, body, state0)
    return x, count


def _inverse_softplus(y):
    return np.log(np.expm1(y))


def _per_layer(value, n_layers: int, name: str) -> np.ndarray:
    try:
        value = np.broadcast_to(np.asarray(value, dtype=float), (n_layers,)).copy()
    except ValueError:
        raise InputError(f"give the {name} as a scalar or one value per layer ({n_layers}); got {value}.") from None
    if not np.all(np.isfinite(value)):
        raise InputError(f"the per-layer {name} must be finite; got {value}.")
    return value


class UnrolledResult(eqx.Module):
    """Analysis of the unrolled solver: control v_K, initial state x0, every iterate v_0 … v_K, diagnostics."""

    v: PyTree[Array]
    x0: PyTree[Array]
    iterates: PyTree[Array]
    diagnostics: GaussNewtonDiagnostics

    @property
    def converged(self) -> Bool[Array, ""]:
        """Always false: the K layers run without a convergence test (as `TrainedAnalysis`)."""
        return jnp.asarray(False)

    @property
    def reason(self) -> Int[Array, ""]:
        """`MAX_OUTER`: the stop reason of a solver that ran its whole iteration budget."""
        return jnp.asarray(MAX_OUTER, jnp.int32)


class UnrolledGaussNewton(eqx.Module):
    """K learnable Gauss-Newton layers with fixed-iteration CG; `solve(problem)` runs them (differentiably).

    - `raw_damping`, `raw_step`, `raw_weight`: unconstrained per-layer parameters of μ_k, α_k, λ_k
      (`raw_weight=None`: λ_k = 1, no continuation).
    - `correction`: optional learned increment correction C(v_k, δ) (2 inputs); `first_guess`: optional
      learned first guess v_0 = G(−∇J(0)) (1 input). Both start at zero output.
    - `preconditioner`: optional learned scaling P of every layer's CG (`DiagonalScaling`, `SpectralScaling`;
      P = I when untrained).
    - `prior`: optional learned background covariance (`LearnedPrior`, `CovarianceHyperparameters`): `posed(problem)`
      is the window's 4D-Var with it, the problem the layers and the losses see (the problem's B when None).
    - `cg_steps`: CG iterations per layer (fixed); `cg_tol`: residual floor below which CG iterations are no-ops.
    """

    raw_damping: Float[Array, " K"]
    raw_step: Float[Array, " K"]
    raw_weight: Float[Array, " K"] | None
    correction: AbstractControlNetwork | None
    first_guess: AbstractControlNetwork | None
    preconditioner: AbstractLearnedPreconditioner | None
    prior: AbstractLearnedPrior | None
    cg_steps: int = eqx.field(static=True)
    cg_tol: float = eqx.field(static=True)
    max_step: float = eqx.field(static=True)

    def __init__(
        self,
        n_layers: int,
        cg_steps: int,
        damping: Float[ArrayLike, "..."] = 0.0,
        step: Float[ArrayLike, "..."] = 1.0,
        weight: Float[ArrayLike, "..."] | None = None,
        correction: AbstractControlNetwork | None = None,
        first_guess: AbstractControlNetwork | None = None,
        preconditioner: AbstractLearnedPreconditioner | None = None,
        cg_tol: float = 0.0,
        max_step: float = 2.0,
        prior: AbstractLearnedPrior | None = None,
    ):
        if int(n_layers) != n_layers or n_layers < 1 or int(cg_steps) != cg_steps or cg_steps < 1:
            raise InputError(f"n_layers and cg_steps must be integers ≥ 1; got {n_layers}, {cg_steps}.")
        if not (0 < max_step <= 2.0) or not (cg_tol >= 0):
            raise InputError(f"need 0 < max_step ≤ 2 (GN stability bound) and cg_tol ≥ 0; got {max_step}, {cg_tol}.")
        damping = _per_layer(damping, n_layers, "damping μ")
        step = _per_layer(step, n_layers, "step α")
        if np.any(damping < 0):
            raise InputError(f"damping μ must be ≥ 0; got {damping}.")
        if np.any(step <= 0) or np.any(step >= max_step):
            raise InputError(f"step α must lie in (0, {max_step}) (open bound: sigmoid parameterisation); got {step}.")
        if correction is not None:
            correction.check_inputs(2, "increment-correction")
        if first_guess is not None:
            first_guess.check_inputs(1, "first-guess")
        self.raw_damping = jnp.asarray(_inverse_softplus(np.maximum(damping, MIN_DAMPING)))
        self.raw_step = jnp.asarray(np.log(step / max_step) - np.log1p(-step / max_step))
        if weight is None:
            self.raw_weight = None
        else:
            weight = _per_layer(weight, n_layers, "background weight λ")
            if np.any(weight <= 0):
                raise InputError(f"background weight λ must be > 0; got {weight}.")
            self.raw_weight = jnp.asarray(_inverse_softplus(weight))
        self.correction = correction
        self.first_guess = first_guess
        if preconditioner is not None and not isinstance(preconditioner, AbstractLearnedPreconditioner):
            raise InputError("preconditioner must be a learned scaling (DiagonalScaling, SpectralScaling) or None.")
        self.preconditioner = preconditioner
        if prior is not None and not isinstance(prior, AbstractLearnedPrior):
            raise InputError("prior must be a learned background covariance (LearnedPrior, CovarianceHyperparameters).")
        self.prior = prior
        self.cg_steps = int(cg_steps)
        self.cg_tol = float(cg_tol)
        self.max_step = float(max_step)

    @property
    def n_layers(self) -> int:
        return int(self.raw_step.shape[0])

    @property
    def damping(self) -> Float[Array, " K"]:
        """μ_k ≥ 0."""
        return jax.nn.softplus(self.raw_damping)

    @property
    def step(self) -> Float[Array, " K"]:
        """α_k ∈ (0, α_max)."""
        return self.max_step * jax.nn.sigmoid(self.raw_step)

    @property
    def weight(self) -> Float[Array, " K"]:
        """λ_k > 0 (ones without a schedule)."""
        if self.raw_weight is None:
            return jnp.ones_like(self.raw_step)
        return jax.nn.softplus(self.raw_weight)

    def posed(self, problem):
        """The window's 4D-Var with the learned background covariance (the problem itself without a prior)."""
        return problem if self.prior is None else self.prior.pose(problem)

    def initial_control(self, problem) -> PyTree[Array]:
        """First guess v_0: zero, or the learned map of the descent direction −∇J(0)."""
        v0 = problem.zero_control()
        if self.first_guess is None:
            return v0
        d, vjp = jax.vjp(problem.departures, v0)
        (g,) = vjp(d)
        return self.first_guess(jax.tree_util.tree_map(jnp.negative, g))

    def layer(self, problem, v: PyTree[Array], mu, alpha, lam):
        """One GN layer at control v: (v + α δ, J_b, J_o, ‖∇J(v)‖, active CG iterations)."""
        d, jvp = jax.linearize(problem.departures, v)
        vjp = jax.linear_transpose(jvp, v)
        (jtd,) = vjp(d)
        jb = 0.5 * tree_dot(v, v)
        jo = 0.5 * tree_dot(d, d)
        g = tree_axpy(1.0, v, jtd)
        gnorm = jnp.sqrt(tree_dot(g, g))
        rhs = jax.tree_util.tree_map(lambda a, b: -(lam * a + b), v, jtd)

        def hessian(x):
            return tree_axpy(lam + mu, x, vjp(jvp(x))[0])

        delta, n_cg = fixed_cg(hessian, rhs, self.cg_steps, self.cg_tol, self.preconditioner)
        if self.correction is not None:
            delta = tree_axpy(1.0, self.correction(v, delta), delta)
        return tree_axpy(alpha, delta, v), jb, jo, gnorm, n_cg

    def run(self, problem, v0: PyTree[Array], first: int = 0, last: int | None = None):
        """Apply layers first … last−1 from control v0: (final control, stacked per-layer records)."""
        last = self.n_layers if last is None else last
        params = (self.damping[first:last], self.step[first:last], self.weight[first:last])

        @jax.checkpoint
        def body(v, p):
            v_new, jb, jo, gnorm, n_cg = self.layer(problem, v, *p)
            return v_new, (v, jb, jo, gnorm, n_cg)

        return jax.lax.scan(body, v0, params)

    def solve(self, problem, v0: PyTree[Array] | None = None) -> UnrolledResult:
        """Run the K layers on a (posed) 4D-Var problem from v0 (default: the first guess) and record diagnostics."""
        problem = problem.prepared()
        if v0 is None:
            v0 = self.initial_control(problem)
        v, records = self.run(problem, v0)
        return self.finish(problem, v, records)

    def finish(self, problem, v: PyTree[Array], records) -> UnrolledResult:
        """Evaluate J and ∇J at the final control and assemble the result from the per-layer records."""
        iterates, jb, jo, gnorm, n_cg = records
        d, vjp = jax.vjp(problem.departures, v)
        (jtd,) = vjp(d)
        g = tree_axpy(1.0, v, jtd)
        jb = jnp.concatenate([jb, (0.5 * tree_dot(v, v))[None]])
        jo = jnp.concatenate([jo, (0.5 * tree_dot(d, d))[None]])
        gnorm = jnp.concatenate([gnorm, jnp.sqrt(tree_dot(g, g))[None]])
        k = self.n_layers
        layers = jnp.arange(k + 1, dtype=jnp.int32)
        first = 2 if self.first_guess is not None else 0  # the first guess costs one forward + one adjoint run
        forward = first // 2 + layers + 1
        matvecs = layers * self.cg_steps
        diagnostics = GaussNewtonDiagnostics(
            cost=jb + jo,
            cost_background=jb,
            cost_observation=jo,
            gradient_norm=gnorm,
            cg_iterations=jnp.concatenate([jnp.zeros(1, jnp.int32), n_cg.astype(jnp.int32)]),
            accepted=jnp.ones(k + 1, bool),
            damping=jnp.concatenate([jnp.zeros(1), self.damping]),
            forward_evaluations=forward.astype(jnp.int32),
            tangent_linear_evaluations=matvecs.astype(jnp.int32),
            adjoint_evaluations=(forward + matvecs).astype(jnp.int32),
            n_outer=jnp.asarray(k, jnp.int32),
        )
        iterates = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[None]]), iterates, v)
        return UnrolledResult(v=v, x0=problem.initial_state(v), iterates=iterates, diagnostics=diagnostics)
