"""A certificate for learned analyses: the KKT residual of their own 4D-Var and the held-out misfit, with a
classical fallback.

A learned solver stops after K layers whatever the residual. `Certified` measures, on the window's 4D-Var posed
with the solver's learned prior, the normalised gradient norm ‖∇J(v̂)‖ / ‖∇J(0)‖ (the KKT residual of the
unconstrained problem) and, when observations are held out, their mean squared normalised misfit. When the
residual is above `threshold`, classical Gauss-Newton continues from v̂ on the same problem until
‖∇J‖ ≤ threshold · ‖∇J(0)‖, and the analysis says how many iterations and model runs that took. A learned
analysis is therefore never silently further from the variational solution than the threshold allows.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from assim.errors import InputError
from assim.learned.losses import AbstractSplit, NoSplit
from assim.learned.trained_solver import TrainedSolver
from assim.problems.cost import StrongConstraint4DVar
from assim.solvers.gauss_newton import GRADIENT, MAX_OUTER, GaussNewton, GaussNewtonDiagnostics
from assim.solvers.krylov import tree_dot


@eqx.filter_jit
def kkt_residual(problem: StrongConstraint4DVar, v: PyTree[Array]) -> Float[Array, ""]:
    """‖∇J(v)‖ / ‖∇J(0)‖ on the (posed) problem: 0 at the analysis, 1 at the background."""
    g = jax.grad(problem.cost)(v)
    g0 = jax.grad(problem.cost)(problem.zero_control())
    return jnp.sqrt(tree_dot(g, g) / tree_dot(g0, g0))


@eqx.filter_jit
def heldout_misfit(heldout: StrongConstraint4DVar, v: PyTree[Array]) -> Float[Array, ""]:
    """Mean squared normalised misfit ‖R^{-1/2}(y − H M(x̂₀))‖² / n on the held-out observations."""
    d = heldout.departures(v)
    count = sum(jnp.sum(o.mask) for o in heldout.observations)
    return tree_dot(d, d) / jnp.maximum(count, 1)


def _runs(d: GaussNewtonDiagnostics) -> Int[Array, ""]:
    """Tangent-linear plus adjoint model runs of a solve (traceable)."""
    return (d.tangent_linear_evaluations[d.n_outer] + d.adjoint_evaluations[d.n_outer]).astype(jnp.int32)


class CertifiedAnalysis(eqx.Module):
    """A certified analysis: control, initial state, the learned layers' diagnostics and the certificate.

    Residuals are ‖∇J‖ / ‖∇J(0)‖ before (`learned_residual`) and after the fallback (`residual`); runs count
    tangent-linear plus adjoint model runs of the learned layers and of the fallback.
    """

    v: PyTree[Array]
    x0: PyTree[Array]
    diagnostics: GaussNewtonDiagnostics
    learned_residual: Float[Array, ""]
    residual: Float[Array, ""]
    heldout_misfit: Float[Array, ""]
    fallback_outer: Int[Array, ""]
    fallback_cg: Int[Array, ""]
    learned_runs: Int[Array, ""]
    fallback_runs: Int[Array, ""]
    threshold: float = eqx.field(static=True)

    @property
    def converged(self) -> Bool[Array, ""]:
        """True when the certificate holds: the KKT residual is at most the threshold."""
        return self.residual <= self.threshold

    @property
    def used_fallback(self) -> Bool[Array, ""]:
        """Whether classical Gauss-Newton iterations had to continue the learned analysis."""
        return self.fallback_outer > 0

    @property
    def reason(self) -> Int[Array, ""]:
        """`GRADIENT` when the certificate holds, else `MAX_OUTER` (the fallback ran out of iterations)."""
        return jnp.where(self.converged, GRADIENT, MAX_OUTER).astype(jnp.int32)

    def metrics(self) -> dict:
        """The certificate as flat plain numbers (metrics.json and analysis.nc attributes)."""
        out = {"certificate_threshold": self.threshold, "certificate_learned_kkt_residual": float(self.learned_residual),
               "certificate_kkt_residual": float(self.residual), "certificate_met": bool(self.converged),
               "certificate_fallback_outer": int(self.fallback_outer), "certificate_fallback_cg": int(self.fallback_cg),
               "certificate_learned_tl_adjoint_runs": int(self.learned_runs),
               "certificate_fallback_tl_adjoint_runs": int(self.fallback_runs)}  # fmt: skip
        if not np.isnan(float(self.heldout_misfit)):
            out["certificate_heldout_misfit"] = float(self.heldout_misfit)
        return out

    def message(self) -> str:
        """What the learned layers reached and what the fallback added (concrete results only)."""
        text = (
            f"learned layers reached KKT residual {float(self.learned_residual):.3g} (threshold {self.threshold:.3g})"
        )
        if bool(self.used_fallback):
            text += (f"; classical Gauss-Newton continued for {int(self.fallback_outer)} outer / "
                     f"{int(self.fallback_cg)} CG iterations ({int(self.fallback_runs)} model runs) to "
                     f"{float(self.residual):.3g}")  # fmt: skip
        if not bool(self.converged):
            text += "; the certificate is NOT met: raise the fallback's max_outer or cg_max_steps"
        return text


class Certified(eqx.Module):
    """A trained solver whose every analysis carries its KKT residual and held-out misfit, with a classical fallback.

    - `threshold`: the KKT residual ‖∇J(v̂)‖ / ‖∇J(0)‖ an analysis must reach;
    - `fallback`: the classical Gauss-Newton that continues from v̂ when it does not (its gtol is set per window);
    - `split`: `NoSplit()` (all observations used; no held-out misfit, reported as NaN) or `RandomSplit(f)`.
    `solve` is traceable (a `lax.cond` chooses the fallback), so it also runs inside `Cycling`, jit and vmap.
    """

    learned: TrainedSolver
    fallback: GaussNewton
    threshold: float = eqx.field(static=True, default=1e-3)
    split: AbstractSplit = NoSplit()

    def __check_init__(self):
        if not (0 < self.threshold < 1):
            raise InputError(f"the certificate threshold is a relative gradient norm in (0, 1); got {self.threshold}.")

    def result_problem(self, problem: StrongConstraint4DVar) -> StrongConstraint4DVar:
        """The window's 4D-Var posed with the learned prior: the problem whose control the analysis is."""
        return self.learned.result_problem(problem)

    def solve(self, problem: StrongConstraint4DVar, key: PRNGKeyArray | None = None) -> CertifiedAnalysis:
        """Learned analysis of the window, certified (and continued classically where the residual is too large)."""
        if key is None:
            key = jax.random.PRNGKey(0)
        inputs, heldout = self.split(key, problem)
        posed = self.result_problem(inputs)
        return _certify(self, posed, None if heldout is None else self.result_problem(heldout))


@eqx.filter_jit
def _certify(certified: Certified, posed: StrongConstraint4DVar, heldout) -> CertifiedAnalysis:
    learned = certified.learned.solver.solve(posed)
    r_learned = kkt_residual(posed, learned.v)
    zero = jnp.asarray(0, jnp.int32)

    def fallback(v):  # gtol is relative to the gradient at v̂: stop at threshold · ‖∇J(0)‖
        gtol = certified.threshold / jnp.maximum(r_learned, certified.threshold)
        result = eqx.tree_at(lambda s: s.gtol, certified.fallback, gtol).solve(posed, v)
        d = result.diagnostics
        cg = jnp.sum(jnp.where(jnp.arange(d.cg_iterations.shape[0]) <= d.n_outer, d.cg_iterations, 0))
        return result.v, d.n_outer.astype(jnp.int32), cg.astype(jnp.int32), _runs(d)

    def keep(v):
        return v, zero, zero, zero

    v, outer, cg, runs = jax.lax.cond(r_learned > certified.threshold, fallback, keep, learned.v)
    misfit = jnp.asarray(jnp.nan) if heldout is None else heldout_misfit(heldout, v)
    return CertifiedAnalysis(
        v=v, x0=posed.initial_state(v), diagnostics=learned.diagnostics, learned_residual=r_learned,
        residual=kkt_residual(posed, v), heldout_misfit=misfit, fallback_outer=outer, fallback_cg=cg,
        learned_runs=_runs(learned.diagnostics), fallback_runs=runs, threshold=certified.threshold,
    )  # fmt: skip
