"""Viscous Burgers ∂u/∂t + (u·∇)u = ∇·(ν∇u) in 1-D and 2-D, stepped fully implicitly by matrix-free Newton–Krylov.

State layout: in 1-D the velocity is an array of shape (n,); in 2-D it is one array of
shape (2, ny, nx) whose component a is the velocity along grid axis a, in the grid's axis
order (y, x): state[0] = v (along y), state[1] = u (along x). This is the order the
finite-volume operators use for vector fields (`face_velocity`, `gradient`).

Each step solves G(u') = u' − u − Δt[θ F(u') + (1−θ) F(u)] = 0 with optimistix Newton. The
unknown and the residual are scaled by the RMS of the incoming state (held constant for
differentiation), so Newton's rtol/atol are relative to the flow's magnitude. The Newton
Jacobian is never formed: optimistix builds it as `jax.linearize` wrapped in a
`lineax.FunctionLinearOperator` and our Krylov solver only applies it. The Newton solve is a
primitive (`_newton_root_p`) whose jvp rule is the implicit function theorem: one lineax Krylov
solve with ∂G/∂u' at the root (its transpose for the vjp), never differentiating Newton
iterations. The rule obtains the root by binding the primitive again and its Krylov solve
(`implicit_solve`, a `lax.custom_linear_solve`) has its own jvp/transpose rules, so the step
is differentiable to any order (tangent-linear and adjoint models differentiated with respect
to the linearisation point or ν), including inside a scanned rollout under reverse-over-reverse
differentiation.

The viscous term is the conservative ∇·(ν∇u) (= νΔu for constant ν). On a periodic grid
centred advection and diffusion both sum to zero, so Σu is conserved. A failed Newton
solve raises ConvergenceError when the step runs eagerly; under jit it returns NaN (no host
callback, so the program stays cacheable) and `check_result`, where the result comes back,
raises with the same advice (optimistix is called with throw=False and checked here, so the
message says what to change).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, Int

from models.base import AbstractModel, as_field, check_positive, fail_if
from models.errors import ConvergenceError, InputError, NonFiniteError
from models.grid import CartesianGrid
from models.linear_solve import implicit_solve
from models.operators import diffusion_flux_difference, diffusion_weights, gradient
from models.time_schemes import AbstractThetaScheme, BackwardEuler


class RelativeKrylov(lx.AbstractLinearSolver):
    """A Krylov solver whose tolerances are relative: every right-hand side is scaled to unit RMS first.

    lineax's stopping test is per element (|r_i| ≤ atol + rtol·|b_i|), so a fixed atol is
    meaningless for the tangent and adjoint solves, whose right-hand sides can have any
    magnitude. Scaling b by its RMS (and the solution back) makes the test scale-free. `compute`
    is never differentiated (lineax's jvp and transpose rules call it again on the tangent or
    cotangent vector), so the map b ↦ solution stays linear to the solver's tolerance.
    """

    inner: lx.AbstractLinearSolver

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        return self.inner.init(operator, options)

    def compute(self, state, vector, options: dict[str, Any]):
        leaves = jtu.tree_leaves(vector)
        size = sum(leaf.size for leaf in leaves)
        scale = jnp.sqrt(sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in leaves) / size)
        # A zero right-hand side has the zero solution (BiCGStab would return NaN for it), e.g. a zero tangent.
        is_zero = scale == 0
        scale = jnp.where(is_zero | ~jnp.isfinite(scale), 1.0, scale)
        vector = jtu.tree_map(lambda v: jnp.where(is_zero, jnp.ones_like(v), v / scale), vector)
        solution, result, stats = self.inner.compute(state, vector, options)
        solution = jtu.tree_map(lambda y: jnp.where(is_zero, jnp.zeros_like(y), y * scale), solution)
        return solution, lx.RESULTS.where(is_zero, lx.RESULTS.successful, result), stats

    def transpose(self, state, options: dict[str, Any]):
        return self.inner.transpose(state, options)

    def conj(self, state, options: dict[str, Any]):
        return self.inner.conj(state, options)

    def assume_full_rank(self) -> bool:
        return self.inner.assume_full_rank()


def _rms(x: Array) -> Array:
    scale = jnp.sqrt(jnp.mean(x**2))
    return jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1.0)


def burgers_tendency(
    grid: CartesianGrid, u: Float[Array, "*state"], nu: Float[ArrayLike, "..."]
) -> Float[Array, "*state"]:
    """Velocity tendency F(u) = −(u·∇)u + ∇·(ν∇u), centred second order in space (state layout as `Burgers`)."""
    comps = u[None] if grid.ndim == 1 else u  # (component, *grid.shape); components batched with vmap
    weights = diffusion_weights(grid, nu)
    grads = jax.vmap(lambda c: jnp.stack(gradient(grid, c)))(comps)  # grads[c, a] = ∂_a u_c
    advection = jnp.sum(comps[None] * grads, axis=1)  # Σ_a u_a ∂_a u_c
    viscous = jax.vmap(lambda c: diffusion_flux_difference(grid, c, weights))(comps) / jnp.asarray(grid.cell_volume())
    out = viscous - advection
    return out[0] if grid.ndim == 1 else out


def _newton_residual(w, args):
    """Scaled implicit-step residual g(w) = w − θΔt F(s·w)/s − r, whose root is u'/s.

    θΔt travels as an array so that models differing only in dt share one compiled solve.
    """
    grid, nu, theta_dt, rhs, scale = args
    return w - theta_dt * burgers_tendency(grid, scale * w, nu) / scale - rhs


def _newton_root_impl(grid, newton, max_steps, nu, theta_dt, rhs, scale, guess):
    """Root w of the scaled residual g(w; ν, θΔt, r, s) = 0 by Newton–Krylov; (w, Newton iterations, failed)."""
    sol = optx.root_find(
        _newton_residual,
        newton,
        guess,
        (grid, nu, theta_dt, rhs, scale),
        max_steps=max_steps,
        throw=False,
    )
    return sol.value, sol.stats["num_steps"], sol.result != optx.RESULTS.successful


@eqxi.filter_primitive_def
def _newton_root_abstract_eval(grid, newton, max_steps, nu, theta_dt, rhs, scale, guess):
    to_struct = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.core.ShapedArray) else x  # noqa: E731
    nu, theta_dt, rhs, scale, guess = (to_struct(x) for x in (nu, theta_dt, rhs, scale, guess))
    out = eqx.filter_eval_shape(_newton_root_impl, grid, newton, max_steps, nu, theta_dt, rhs, scale, guess)
    return jtu.tree_map(lambda x: jax.core.ShapedArray(x.shape, x.dtype), out)


@eqxi.filter_primitive_jvp
def _newton_root_jvp(primals, tangents):
    """IFT tangent: ∂g/∂w · ẇ = −∂g/∂(ν, θΔt, r, s) · (ν̇, θΔṫ, ṙ, ṡ), one matrix-free Krylov solve at the root.

    The root comes from binding the primitive again, so differentiating this rule (with respect
    to the linearisation point or the parameters) goes through this rule again; the Krylov solve
    is `implicit_solve`, which has its own jvp and transpose rules. The initial guess has
    no influence on the root, so its tangent is ignored.
    """
    grid, newton, max_steps, nu, theta_dt, rhs, scale, guess = primals
    w, n_newton, failed = eqxi.filter_primitive_bind(_newton_root_p, *primals)
    params = (nu, theta_dt, rhs, scale)
    t_params = tuple(jnp.zeros_like(p) if t is None else t for p, t in zip(params, tangents[3:7]))
    _, g_dot = jax.jvp(lambda *p: _newton_residual(w, (grid, *p)), params, t_params)
    _, dg_dw = jax.linearize(lambda v: _newton_residual(v, (grid, *params)), w)
    # `implicit_solve`, not lx.linear_solve: lineax's transpose and jvp rules solve with throw=True, a host
    # callback that would keep adjoint and second-order programs out of JAX's persistent cache
    w_dot = -implicit_solve(dg_dw, g_dot, newton.linear_solver.inner)[0]
    return (w, n_newton, failed), (w_dot, None, None)


@eqxi.filter_primitive_transpose
def _newton_root_transpose(inputs, cts_out):
    raise AssertionError("the Newton root is nonlinear in its inputs and is never transposed")


# A primitive, not a jax.custom_jvp: JAX's partial evaluation inlines a custom_jvp function whose
# inputs are not all known, dropping its rule. That happens to the primal call inside a
# linearised lax.scan (the rollout), so reverse-over-reverse derivatives of a rollout would
# differentiate the Newton loop (or silently miss terms). A primitive keeps its rule everywhere.
_newton_root_p = eqxi.create_vprim(
    "burgers_newton_root",
    eqxi.filter_primitive_def(_newton_root_impl),
    _newton_root_abstract_eval,
    _newton_root_jvp,
    _newton_root_transpose,
)


@eqx.filter_jit
def _implicit_step(grid, nu, u, theta_dt, explicit_dt, newton, max_steps):
    """Solve u' − θΔt F(u') = u + (1−θ)Δt F(u) by Newton–Krylov; return (u', Newton iterations, failed).

    The time step enters as arrays, so eager steps of models that differ only in dt or θ share
    one compilation; under an outer jit this is simply inlined.
    """
    scale = jax.lax.stop_gradient(_rms(u))
    explicit = u + explicit_dt * burgers_tendency(grid, u, nu)
    guess = jax.lax.stop_gradient(u / scale)
    w, n_newton, failed = eqxi.filter_primitive_bind(
        _newton_root_p, grid, newton, max_steps, nu, theta_dt, explicit / scale, scale, guess
    )
    return scale * w, n_newton, failed


class Burgers(AbstractModel):
    """Viscous Burgers ∂u/∂t + (u·∇)u = ∇·(ν∇u); θ-scheme in time, Newton–Krylov per step, centred finite volumes.

    `nu` is a scalar or a cell field (differentiable); `scheme` BackwardEuler() or CrankNicolson();
    `solver` the matrix-free Krylov solver (lx.GMRES or lx.BiCGStab) used for every Newton
    correction and for the implicit-function-theorem tangent/adjoint solves, its tolerances
    relative to each right-hand side (lineax's GMRES runs whole restart cycles, at least two per solve: for
    these well-conditioned steps a short `restart`, 3 to 5, is about twice as fast as 20); `rtol`/`atol`
    Newton's tolerances on the state and the residual, both relative to the RMS of the incoming state;
    `max_steps` Newton iterations.
    Boundaries come from the grid (Periodic, Dirichlet(v) for every component, Neumann).
    """

    grid: CartesianGrid = eqx.field(static=True)
    nu: Float[Array, "..."]
    dt: float = eqx.field(static=True)
    scheme: AbstractThetaScheme = eqx.field(static=True)
    solver: lx.AbstractLinearSolver = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        grid: CartesianGrid,
        nu: Float[ArrayLike, "..."],
        dt: float,
        scheme: AbstractThetaScheme = BackwardEuler(),
        solver: lx.AbstractLinearSolver = lx.GMRES(rtol=1e-10, atol=1e-10, restart=20, max_steps=50),
        rtol: float = 1e-10,
        atol: float = 1e-10,
        max_steps: int = 20,
    ):
        if not isinstance(grid, CartesianGrid):
            raise InputError(f"Burgers runs on a CartesianGrid (1-D or 2-D); got {type(grid).__name__}.")
        if grid.mask is not None:
            raise InputError("Burgers does not support domain masks; use an unmasked grid (grid.with_mask(None)).")
        grid.check_field(nu, "nu (viscosity)")
        check_positive(nu, "nu (viscosity)", "Viscosity is a physical rate: use a positive value or field.")
        check_positive(dt, "dt (time step)")
        if not isinstance(scheme, AbstractThetaScheme):
            raise InputError("scheme must be BackwardEuler() or CrankNicolson().")
        if not isinstance(solver, (lx.GMRES, lx.BiCGStab)):
            raise InputError(
                f"the Newton and adjoint solves need a matrix-free Krylov solver for a non-symmetric Jacobian: "
                f"pass lx.GMRES(...) or lx.BiCGStab(...), not {type(solver).__name__} (a dense solver would "
                "materialise the grid-sized Jacobian)."
            )
        if not (rtol > 0 and atol > 0):
            raise InputError(f"Newton tolerances must be positive; got rtol={rtol}, atol={atol}.")
        if int(max_steps) < 1:
            raise InputError(f"max_steps (Newton iterations) must be at least 1; got {max_steps}.")
        self.grid = grid
        self.nu = as_field(nu)
        self.dt = float(dt)
        self.scheme = scheme
        self.solver = solver
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.max_steps = int(max_steps)

    def state_shape(self):
        shape = self.grid.shape if self.grid.ndim == 1 else (2,) + self.grid.shape
        return jax.ShapeDtypeStruct(shape, jnp.float64)

    def tendency(self, u: Float[Array, "*state"]) -> Float[Array, "*state"]:
        """Velocity tendency F(u) = −(u·∇)u + ∇·(ν∇u)."""
        return burgers_tendency(self.grid, u, self.nu)

    def step_with_stats(
        self, u: Float[Array, "*state"], t: ArrayLike = 0.0
    ) -> tuple[Float[Array, "*state"], Int[Array, ""]]:
        """One implicit step of the velocity and the number of Newton iterations it took."""
        self.check_state(u)
        u = jnp.asarray(u, dtype=float)
        u = fail_if(
            u,
            ~jnp.all(jnp.isfinite(u)),
            "the Burgers velocity holds NaN or inf; the previous step diverged or the input has missing values.",
            NonFiniteError,
        )
        theta = self.scheme.theta
        newton = optx.Newton(rtol=self.rtol, atol=self.atol, linear_solver=RelativeKrylov(self.solver))
        u_new, n_newton, failed = _implicit_step(
            self.grid,
            self.nu,
            u,
            jnp.asarray(theta * self.dt),
            jnp.asarray((1.0 - theta) * self.dt),
            newton,
            self.max_steps,
        )
        u_new = fail_if(u_new, failed, f"Burgers: {self._newton_failure()}.", ConvergenceError)
        return u_new, n_newton

    def _newton_failure(self) -> str:
        return (
            f"Newton did not converge within max_steps={self.max_steps} iterations (or its Krylov solve "
            "failed); reduce dt, raise max_steps, loosen rtol/atol, or give the Krylov solver more steps"
        )

    def failure_hint(self) -> str:
        return f"{self._newton_failure()}; or the velocity or nu held NaN or inf (give finite values)"

    def step(self, u: Float[Array, "*state"], t: ArrayLike = 0.0) -> Float[Array, "*state"]:
        """Advance the velocity by one implicit step."""
        return self.step_with_stats(u, t)[0]
