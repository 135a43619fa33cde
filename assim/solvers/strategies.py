"""Gauss-Newton settings and results: damping, linearity and forcing strategies; diagnostics; stop reasons."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from assim.errors import ConvergenceError, InputError

RUNNING, GRADIENT, STAGNATION, MAX_OUTER, DAMPING, NONFINITE = range(6)
REASONS = (
    "still running",
    "converged: gradient norm reduced by the factor gtol",
    "converged: relative cost decrease of an accepted step fell below ftol",
    "not converged: max_outer outer iterations reached; raise max_outer or loosen gtol/ftol",
    "not converged: Levenberg-Marquardt damping exceeded max_damping without reducing the cost; "
    "check the gradient (Taylor test) or the model's solver tolerances",
    "not converged: the cost or its gradient became non-finite (a model step diverged or one of its implicit "
    "solves failed, which returns NaN); check observations, B, the model time step and its solvers' max_steps",
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


class AbstractLinearity(eqx.Module):
    """Whether the residual r(v) must be relinearised at every outer iterate."""


class Nonlinear(AbstractLinearity):
    """Incremental 4D-Var: every outer iteration runs the nonlinear model (and adjoint) at its iterate."""


class Affine(AbstractLinearity):
    """r(v) affine in v (linear model and observation operators): linearised once, at the first guess.

    The tangent-linear and adjoint models are then the same at every iterate, so later outer iterations
    need no nonlinear or gradient run: ∇J(v + δ) = ∇J(v) + Hδ comes from CG's residual and
    J(v + δ) = J(v) + ½ δᵀ(∇J(v) + ∇J(v + δ)), both exact for an affine residual.
    """


class AbstractForcing(eqx.Module):
    """How tightly each outer iteration's inner CG solve is converged (its forcing term η_k)."""

    @abc.abstractmethod
    def tolerance(self, cg_tol, first, gnorm, gnorm_prev, eta_prev) -> Float[Array, ""]:
        """CG tolerance η_k (relative RMS residual) of the step from an iterate with gradient norm `gnorm`."""


class ConstantForcing(AbstractForcing):
    """Every inner solve to the same relative tolerance `cg_tol`."""

    def tolerance(self, cg_tol, first, gnorm, gnorm_prev, eta_prev) -> Float[Array, ""]:
        """η_k = cg_tol."""
        return jnp.asarray(cg_tol, dtype=float)


class EisenstatWalker(AbstractForcing):
    """Inexact-Newton forcing η_k = γ (‖g_k‖/‖g_{k−1}‖)^α: loose far from the analysis, `cg_tol` its floor.

    Safeguarded as Eisenstat & Walker (1996, choice 2): η_k ≥ γ η_{k−1}^α when that exceeds 0.1;
    η_0 = `initial`; capped at `maximum`; a step from the same iterate (after a rejected trial) keeps η_{k−1}.
    """

    initial: float = 0.1
    gamma: float = 0.9
    exponent: float = 2.0
    maximum: float = 0.5

    def __check_init__(self):
        if not (0 < self.initial <= self.maximum < 1 and 0 < self.gamma <= 1 and 1 < self.exponent <= 2):
            raise InputError(
                "EisenstatWalker needs 0 < initial ≤ maximum < 1, 0 < gamma ≤ 1 and 1 < exponent ≤ 2; "
                f"got {self.initial}, {self.maximum}, {self.gamma}, {self.exponent}."
            )

    def tolerance(self, cg_tol, first, gnorm, gnorm_prev, eta_prev) -> Float[Array, ""]:
        """η_k from the gradient-norm reduction of the last step."""
        ratio = gnorm / jnp.where(gnorm_prev > 0, gnorm_prev, 1.0)
        eta = self.gamma * ratio**self.exponent
        guard = self.gamma * eta_prev**self.exponent
        eta = jnp.where(guard > 0.1, jnp.maximum(eta, guard), eta)
        eta = jnp.where(ratio >= 1.0, eta_prev, eta)
        eta = jnp.where(first, self.initial, jnp.minimum(eta, self.maximum))
        return jnp.maximum(eta, cg_tol)


class GaussNewtonDiagnostics(eqx.Module):
    """Per-outer-iteration record; index k is the iterate v_k (k = 0: first guess), NaN/0 beyond the last.

    `accepted[k]`: the trial step to v_k passed the gain-ratio test (else v_k = v_{k−1}); the `*_evaluations`
    are cumulative model runs (nonlinear forward, tangent-linear, adjoint) spent to reach J(v_k) and ∇J(v_k).
    """

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
    pairs: tuple | None = None  # the last inner loop's CG pairs (s, H s) of a limited-memory preconditioner

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
