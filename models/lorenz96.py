"""Lorenz-96 dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F on a periodic ring of N ≥ 4 variables.

Two typed stepping strategies advance the state by one model step dt:

- `RK4()`: one classical fourth-order Runge–Kutta step of size dt (explicit, written out).
- `ImplicitDiffrax()`: a diffrax implicit solver (Kvaerno5 by default, ESDIRK, 5th order)
  integrating from 0 to dt with an adaptive PID step-size controller (the system is
  autonomous). Its stage equations are solved by `optx.Chord` with an explicit dense LU
  (fine for N ~ 40, never for grid-sized states); diffrax's own `VeryChord` at root tolerance
  1e-10 made the controller reject 29 of 52 sub-steps of one dt = 0.01 step (its
  convergence-rate test trips on round-off), `optx.Chord` 1 of 3.

How it is differentiated: diffrax calls `optimistix.root_find` for each stage with the
default `optx.ImplicitAdjoint()`, so stage tangents and cotangents come from the implicit
function theorem (one linear solve with the stage Jacobian, by lineax's AutoLinearSolver,
i.e. LU on the materialised N×N Jacobian), never from the chord iterations. The sub-step
loop is differentiated directly ("discretise then optimise"), with the step sizes held
fixed (diffrax's PID controller stops their gradients). The default `diffrax.DirectAdjoint()`
supports both jax.jvp and reverse mode; `RecursiveCheckpointAdjoint()` is reverse-only
(jvp raises "can't apply forward-mode autodiff (jvp) to a custom_vjp function") and
`ForwardMode()` is jvp-only (reverse mode through its while loop raises). Its tangent-linear and
adjoint programs stay out of JAX's persistent compilation cache: optimistix's implicit-function rule
solves with lineax's `throw=True`, a host callback (the forward run and RK4 are cacheable).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from models.base import AbstractModel, as_field, check_positive, fail_if
from models.errors import (
    ConvergenceError,
    GridMismatchError,
    InputError,
    NonFiniteError,
    StabilityError,
)

Tendency = Callable[[Float[Array, " n"], Float[Array, "..."]], Float[Array, " n"]]


def lorenz96_tendency(x: Float[Array, " n"], forcing: Float[ArrayLike, "..."]) -> Float[Array, " n"]:
    """Tendency (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F of the Lorenz-96 state (periodic in i)."""
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + forcing


class AbstractStepper(eqx.Module):
    """How one model step of length dt integrates the ODE dx/dt = f(x, F)."""

    @abc.abstractmethod
    def advance(
        self, tendency: Tendency, x: Float[Array, " n"], forcing: Float[Array, "..."], dt: float
    ) -> Float[Array, " n"]:
        """State after time dt from state x under forcing F."""


class RK4(AbstractStepper):
    """One classical fourth-order Runge–Kutta step of size dt (explicit).

    Stable for dt ≤ `stability_limit` / (1 + max|F|): the attractor's amplitude, hence the tendency
    Jacobian's spectral radius, grows with F; from the spun-up F = 2…32 attractors (N = 40) RK4 first
    diverges at dt·(1 + |F|) ≈ 1.6–2.1, so 1.4 keeps a margin (dt ≤ 0.156 for F = 8).
    """

    stability_limit: float = eqx.field(static=True, default=1.4)

    def advance(self, tendency, x, forcing, dt):
        k1 = tendency(x, forcing)
        k2 = tendency(x + 0.5 * dt * k1, forcing)
        k3 = tendency(x + 0.5 * dt * k2, forcing)
        k4 = tendency(x + dt * k3, forcing)
        return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class _VectorField(eqx.Module):
    """The ODE right-hand side f(t, x, F) = tendency(x, F) in diffrax's calling convention."""

    tendency: Tendency

    def __call__(self, t, y, args):
        return self.tendency(y, args)


class ImplicitDiffrax(AbstractStepper):
    """A diffrax implicit Runge–Kutta solve over [0, dt] with adaptive sub-steps (Kvaerno5 + PID by default)."""

    solver: diffrax.AbstractImplicitSolver = diffrax.Kvaerno5(
        root_finder=optx.Chord(rtol=1e-12, atol=1e-12, linear_solver=lx.LU())
    )
    controller: diffrax.AbstractStepSizeController = diffrax.PIDController(rtol=1e-10, atol=1e-10)
    adjoint: diffrax.AbstractAdjoint = diffrax.DirectAdjoint()
    max_steps: int = 64

    def __check_init__(self):
        if not isinstance(self.solver, diffrax.AbstractImplicitSolver):
            raise InputError(
                f"ImplicitDiffrax needs an implicit diffrax solver (e.g. Kvaerno5); got {type(self.solver).__name__}."
            )
        if self.max_steps < 1:
            raise InputError(f"max_steps (sub-steps per model step) must be at least 1; got {self.max_steps}.")

    def advance(self, tendency, x, forcing, dt):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_VectorField(tendency)),
            self.solver,
            t0=0.0,
            t1=dt,
            dt0=dt,
            y0=x,
            args=forcing,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=self.controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=False,
        )
        assert sol.ys is not None  # SaveAt(t1=True)
        return fail_if(
            sol.ys[-1], sol.result != diffrax.RESULTS.successful, f"Lorenz-96: {self.failure()}.", ConvergenceError
        )

    def failure(self) -> str:
        """What a failed step means and what to change."""
        return (
            f"the implicit diffrax solve of one step failed (sub-steps exceeded max_steps={self.max_steps} "
            "or the stage root finder did not converge); raise max_steps, loosen the controller tolerances or reduce dt"
        )


class Lorenz96(AbstractModel):
    """Lorenz-96 ring of N ≥ 4 variables with scalar or per-variable forcing F; one model step advances by dt."""

    forcing: Float[Array, "..."]
    n: int = eqx.field(static=True)
    dt: float = eqx.field(static=True)
    stepper: AbstractStepper = eqx.field(static=True)

    def __init__(
        self, n: int, forcing: Float[ArrayLike, "..."] = 8.0, dt: float = 0.05, stepper: AbstractStepper = RK4()
    ):
        if int(n) != n or n < 4:
            raise InputError(f"Lorenz-96 needs at least N = 4 variables (its stencil spans i−2..i+1); got N = {n}.")
        n = int(n)
        shape = tuple(np.shape(forcing))
        if shape not in ((), (n,)):
            raise GridMismatchError(f"forcing has shape {shape}; give a scalar or a vector of shape ({n},).")
        if not isinstance(forcing, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(forcing))):
            raise NonFiniteError("forcing holds NaN or inf; give finite values.")
        check_positive(dt, "dt (time step)")
        if not isinstance(stepper, AbstractStepper):
            raise InputError("stepper must be RK4() or ImplicitDiffrax(...).")
        if isinstance(stepper, RK4) and not isinstance(forcing, jax.core.Tracer):
            dt_max = stepper.stability_limit / (1.0 + float(np.max(np.abs(np.asarray(forcing)))))
            if dt > dt_max:
                raise StabilityError(
                    f"Lorenz-96 RK4: dt = {dt:.4g} exceeds the explicit stability limit {stepper.stability_limit:g} / "
                    f"(1 + max|F|) = {dt_max:.4g}; set dt (time.dt of a case) ≤ {dt_max:.4g} or use ImplicitDiffrax()."
                )
        self.forcing = as_field(forcing)
        self.n = n
        self.dt = float(dt)
        self.stepper = stepper

    def state_shape(self):
        return jax.ShapeDtypeStruct((self.n,), jnp.float64)

    def tendency(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        """Tendency dx/dt of the state under this model's forcing."""
        return lorenz96_tendency(x, self.forcing)

    def failure_hint(self) -> str:
        if isinstance(self.stepper, ImplicitDiffrax):
            return f"{self.stepper.failure()}; or the state or forcing held NaN or inf (give finite values)"
        return "the RK4 steps diverged (reduce dt), or the state or forcing held NaN or inf (give finite values)"

    def step(self, x: Float[Array, " n"], t: ArrayLike = 0.0) -> Float[Array, " n"]:
        """Advance the state by one model step dt (the system is autonomous: t is not used)."""
        self.check_state(x)
        x = jnp.asarray(x, dtype=float)
        x = fail_if(
            x,
            ~jnp.all(jnp.isfinite(x)),
            "the Lorenz-96 state holds NaN or inf; the previous step diverged or the input has missing values.",
            NonFiniteError,
        )
        return self.stepper.advance(lorenz96_tendency, x, self.forcing, self.dt)
