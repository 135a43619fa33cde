"""Rotating shallow water on an Arakawa C-grid: semi-implicit gravity waves, explicit Coriolis and advection.

Equations (surface elevation η, total depth h = H + η over a bottom at −H):

    ∂u/∂t = −g ∂η/∂x + f v − u·∇u,    ∂v/∂t = −g ∂η/∂y − f u − u·∇v,    ∂η/∂t = −∇·(h u).

Layout on a 2-D `CartesianGrid` (axis 0 = y, axis 1 = x), all three fields stored as (ny, nx):
η[j, i] at the centre of cell (j, i), u[j, i] on its east face, v[j, i] on its north face.
x is periodic; y is periodic or a closed channel (`Neumann()` walls), where the north-wall
face v[-1, :] is zero and the south wall face is implied.

Time stepping: each of the stages of `AbstractExplicitStages` spans a fraction c·Δt of the step,
takes the Coriolis and advection tendencies of the previous stage explicitly, and treats the
gravity-wave terms −g∇η and −∇·(h u) with a θ-weighting implicitly, eliminating the velocities
into one symmetric positive-definite Helmholtz equation for η

    η' − g θ² τ² ∇·(h_f ∇η') = η − τ ∇·(h_f [(1−θ) u + θ u*])

solved matrix-free by CG (`implicit_solve`, gradients by the implicit function theorem). The new
η is then recomputed from the flux-form continuity equation with the new velocities, so the
total mass Σ η V is conserved to round-off whatever the CG tolerance. Face depths h_f come from
the stage's base state, so the continuity flux is second order in time for θ = ½.

Stability (measured on the linearised step about rest, 8×8 grids, gravity-wave CFL 1–4): the
gravity-wave part alone is neutral for θ = ½ and damping for θ > ½, at any CFL. The explicit
Coriolis force acting on implicitly propagated waves adds a weak growth for θ = ½ (in a channel
≈ 2.5e-4 (RK3) to 5e-4 (predictor–corrector) per step at f·Δt = 0.1, gravity CFL 2), removed by any
off-centring θ ≥ 0.51 (`OffCentred(0.55)`). With `PredictorCorrector` slow (inertial, Rossby)
modes keep the two-stage growth ≈ (ωΔt)⁴/8 per step; `RungeKutta3()` with `OffCentred(0.55)` has
no growing mode (spectral radius 1 to round-off). The default is therefore `OffCentred(0.55)`;
pass `CrankNicolson()` for a neutral, non-dissipative gravity-wave step over short windows.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from models.base import AbstractModel, as_field, check_positive
from models.errors import InputError, StabilityError
from models.grid import CartesianGrid, Neumann, Periodic
from models.linear_solve import implicit_solve
from models.preconditioners import AbstractPreconditioner, SpectralPreconditioner
from models.shallow_water_parts import AbstractCoriolis as AbstractCoriolis
from models.shallow_water_parts import AbstractExplicitStages as AbstractExplicitStages
from models.shallow_water_parts import BetaPlane as BetaPlane
from models.shallow_water_parts import FPlane as FPlane
from models.shallow_water_parts import PredictorCorrector as PredictorCorrector
from models.shallow_water_parts import RungeKutta3 as RungeKutta3
from models.shallow_water_parts import SWState as SWState
from models.shallow_water_parts import (
    _check_scalar,
    _east,
    _north,
    _save_helmholtz_solutions,
    _south,
    _west,
)
from models.time_schemes import AbstractThetaScheme, OffCentred

# --------------------------------------------------------------------------------------------------
# The model


class ShallowWater(AbstractModel):
    """Rotating shallow water on a C-grid: θ-implicit gravity waves (CG Helmholtz solve), explicit Coriolis, advection."""

    grid: CartesianGrid = eqx.field(static=True)
    H: Float[Array, "..."]
    g: Float[Array, ""]
    coriolis: AbstractCoriolis
    dt: float = eqx.field(static=True)
    scheme: AbstractThetaScheme = eqx.field(static=True)
    stages: AbstractExplicitStages = eqx.field(static=True)
    solver: lx.AbstractLinearSolver = eqx.field(static=True)
    preconditioner: AbstractPreconditioner = eqx.field(static=True)

    def __init__(
        self,
        grid: CartesianGrid,
        H: Float[ArrayLike, "..."],
        dt: float,
        g: Float[ArrayLike, ""] = 9.81,
        coriolis: AbstractCoriolis = FPlane(0.0),
        scheme: AbstractThetaScheme = OffCentred(0.55),
        stages: AbstractExplicitStages = PredictorCorrector(),
        solver: lx.AbstractLinearSolver = lx.CG(rtol=1e-10, atol=1e-10),
        preconditioner: AbstractPreconditioner | None = None,
        max_speed: float | None = None,
    ):
        """`max_speed`, if given, bounds |u| and |v| for the advective stability check at construction."""
        if not isinstance(grid, CartesianGrid) or grid.ndim != 2:
            raise InputError(
                "ShallowWater needs a 2-D CartesianGrid (ny, nx); build one with CartesianGrid((ny, nx), (Ly, Lx), ...)."
            )
        if grid.mask is not None:
            raise InputError("ShallowWater does not support domain masks; use an unmasked grid (grid.with_mask(None)).")
        by, bx = grid.boundaries
        if not isinstance(bx, Periodic) or not isinstance(by, (Periodic, Neumann)):
            raise InputError(
                "ShallowWater runs doubly periodic, boundaries=Periodic(), or as a zonal channel, "
                "boundaries=(Neumann(), Periodic()) (closed walls in y, periodic in x)."
            )
        if not isinstance(coriolis, AbstractCoriolis):
            raise InputError("coriolis must be an FPlane(f0) or BetaPlane(f0, beta, y0).")
        if not isinstance(stages, AbstractExplicitStages):
            raise InputError("stages must be PredictorCorrector() or RungeKutta3().")
        if not isinstance(scheme, AbstractThetaScheme):
            raise InputError("scheme must be a θ-scheme: CrankNicolson(), BackwardEuler() or OffCentred(θ).")
        theta = scheme.theta
        if not 0.5 <= theta <= 1.0:
            raise InputError(f"the implicitness θ of the gravity-wave terms must lie in [0.5, 1]; got {theta}.")
        grid.check_field(H, "H (resting depth)")
        check_positive(H, "H (resting depth)", "Drying is not supported: give a positive depth everywhere.")
        _check_scalar(g, "g (gravity)")
        check_positive(g, "g (gravity)")
        check_positive(dt, "dt (time step)")
        self.grid = grid
        self.H = as_field(H)
        self.g = as_field(g)
        self.coriolis = coriolis
        self.dt = float(dt)
        self.scheme = scheme
        self.stages = stages
        self.solver = solver
        self.preconditioner = preconditioner if preconditioner is not None else SpectralPreconditioner()
        if max_speed is not None:
            check_positive(max_speed, "max_speed (largest flow speed)")
        self._check_explicit_stability(max_speed or 0.0, max_speed or 0.0)

    # ---------------------------------------------------------------- geometry

    @property
    def periodic_y(self) -> bool:
        return isinstance(self.grid.boundaries[0], Periodic)

    def _wall_mask(self) -> np.ndarray:
        """1 on v faces that carry flow, 0 on the north wall of a channel."""
        mask = np.ones(self.grid.shape)
        if not self.periodic_y:
            mask[-1] = 0.0
        return mask

    def _y(self) -> tuple[np.ndarray, np.ndarray]:
        """Northward coordinate of cell centres (and u faces) and of north faces (v), as (ny, 1) columns."""
        ny = self.grid.shape[0]
        dy = self.grid.spacing[0]
        y0 = self.grid.origin[0]
        centres = y0 + (np.arange(ny) + 0.5) * dy
        return centres[:, None], (centres + 0.5 * dy)[:, None]

    def coriolis_parameter(self) -> tuple[Float[Array, "ny 1"], Float[Array, "ny 1"]]:
        """Coriolis parameter f at the rows of u faces (cell centres) and of v faces."""
        yc, yv = self._y()
        return self.coriolis.parameter(yc), self.coriolis.parameter(yv)

    def state_shape(self):
        spec = jax.ShapeDtypeStruct(self.grid.shape, jnp.float64)
        return SWState(spec, spec, spec)  # pyright: ignore[reportArgumentType]  (leaves are shape structs here)

    # ---------------------------------------------------------------- checks

    def max_stable_dt(self, max_speed_x: float, max_speed_y: float) -> float:
        """Largest time step the explicit stages accept for the given flow speeds (concrete parameters)."""
        fc, fv = self.coriolis_parameter()
        fmax = float(max(np.max(np.abs(np.asarray(fc))), np.max(np.abs(np.asarray(fv)))))
        dy, dx = self.grid.spacing
        rate = fmax + max_speed_x / dx + max_speed_y / dy
        return math.inf if rate == 0 else self.stages.stability_limit / rate

    def _check_explicit_stability(self, speed_x, speed_y) -> None:
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(self.coriolis)):
            return
        if isinstance(speed_x, jax.core.Tracer) or isinstance(speed_y, jax.core.Tracer):
            return
        dt_max = self.max_stable_dt(float(speed_x), float(speed_y))
        if self.dt > dt_max:
            fc, fv = self.coriolis_parameter()
            fmax = float(max(np.max(np.abs(np.asarray(fc))), np.max(np.abs(np.asarray(fv)))))
            dy, dx = self.grid.spacing
            raise StabilityError(
                f"dt = {self.dt:.4g} exceeds the stability limit of the explicit Coriolis and advection terms "
                f"(|f|·dt = {fmax * self.dt:.3g}, advective CFL max|u|dt/dx + max|v|dt/dy = "
                f"{self.dt * (speed_x / dx + speed_y / dy):.3g}; {type(self.stages).__name__} accepts a sum of "
                f"{self.stages.stability_limit:.3g}): use dt ≤ {dt_max:.4g}"
                + (" or stages=RungeKutta3()." if isinstance(self.stages, PredictorCorrector) else ".")
            )

    def check_state(self, state: SWState) -> None:
        """Raise if a concrete state has the wrong layout, NaN, a non-positive depth, wall flow or too fast a flow."""
        if not isinstance(state, SWState):
            raise InputError("give the shallow-water state as SWState(eta, u, v).")
        super().check_state(state)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in state):
            return
        eta, u, v = (np.asarray(a) for a in state)
        if not self.periodic_y and np.any(v[-1] != 0):
            raise InputError("in a channel v[-1, :] lies on the north wall and must be zero; set state.v[-1] = 0.")
        if not isinstance(self.H, jax.core.Tracer):
            depth = np.asarray(self.H) + eta
            if np.any(depth <= 0):
                raise InputError(
                    f"total depth H + η must be positive everywhere (minimum {depth.min():.3g}); drying is not supported."
                )
        self._check_explicit_stability(float(np.max(np.abs(u))), float(np.max(np.abs(v))))

    # ---------------------------------------------------------------- operators

    def face_depths(self, eta: Float[Array, "ny nx"]) -> tuple[Float[Array, "ny nx"], Float[Array, "ny nx"]]:
        """Total depth h = H + η on u faces and v faces (zero on a channel's north wall)."""
        h = jnp.broadcast_to(self.H, self.grid.shape) + eta
        hu = 0.5 * (h + _east(h))
        hv = 0.5 * (h + _north(h, self.periodic_y, mirror=True)) * self._wall_mask()
        return hu, hv

    def _gradient(self, eta: Array) -> tuple[Array, Array]:
        """Face-normal gradient of a centred field: ∂/∂x on u faces, ∂/∂y on v faces (zero on walls)."""
        dy, dx = self.grid.spacing
        gx = (_east(eta) - eta) / dx
        gy = (_north(eta, self.periodic_y, mirror=True) - eta) / dy
        return gx, gy

    def _divergence(self, flux_x: Array, flux_y: Array) -> Array:
        """Net outflow per area of face-normal fluxes on u and v faces (the south wall carries none)."""
        dy, dx = self.grid.spacing
        return (flux_x - _west(flux_x)) / dx + (flux_y - _south(flux_y, self.periodic_y, mirror=False)) / dy

    def explicit_tendency(self, state: SWState) -> tuple[Float[Array, "ny nx"], Float[Array, "ny nx"]]:
        """Explicit momentum tendency (∂u/∂t, ∂v/∂t): C-grid Coriolis (energy neutral) and centred advection u·∇u."""
        _, u, v = state
        dy, dx = self.grid.spacing
        per = self.periodic_y
        _, fv = self.coriolis_parameter()

        def to_u(q):  # 4-point mean of a v-face field onto u faces (no flow through the south wall)
            qx = 0.5 * (q + _east(q))
            return 0.5 * (qx + _south(qx, per, mirror=False))

        def to_v(q):  # 4-point mean of a u-face field onto v faces
            qx = 0.5 * (q + _west(q))
            return 0.5 * (qx + _north(qx, per, mirror=True))

        v_at_u = to_u(v)
        u_at_v = to_v(u)
        du = to_u(fv * v) - (
            u * (_east(u) - _west(u)) / (2 * dx)
            + v_at_u * (_north(u, per, mirror=True) - _south(u, per, mirror=True)) / (2 * dy)
        )
        dv = -fv * u_at_v - (
            u_at_v * (_east(v) - _west(v)) / (2 * dx)
            + v * (_north(v, per, mirror=False) - _south(v, per, mirror=False)) / (2 * dy)
        )
        return du, dv * self._wall_mask()

    def mass(self, state: SWState) -> Float[Array, ""]:
        """Total volume Σ (H + η) V of the fluid."""
        h = jnp.broadcast_to(self.H, self.grid.shape) + state.eta
        return jnp.sum(h) * float(self.grid.cell_volume())

    # ---------------------------------------------------------------- time stepping

    def _stage(self, start: SWState, base: SWState, fraction: Float[Array, ""]) -> tuple[SWState, Array]:
        """One stage over τ = c·Δt from `start`, with explicit tendencies and face depths of `base`."""
        theta = self.scheme.theta
        tau = fraction * self.dt
        g = self.g
        mask = self._wall_mask()
        du, dv = self.explicit_tendency(base)
        hu, hv = self.face_depths(base.eta)
        gx0, gy0 = self._gradient(start.eta)
        # velocities without the implicit pressure gradient
        u_star = start.u + tau * (du - (1.0 - theta) * g * gx0)
        v_star = (start.v + tau * (dv - (1.0 - theta) * g * gy0)) * mask

        def continuity(u_new, v_new):
            fx = hu * ((1.0 - theta) * start.u + theta * u_new)
            fy = hv * ((1.0 - theta) * start.v + theta * v_new)
            return start.eta - tau * self._divergence(fx, fy)

        coef = g * (theta * tau) ** 2

        def matvec(e):
            ex, ey = self._gradient(e)
            return e - coef * self._divergence(hu * ex, hv * ey)

        mean_depth = jnp.mean(jnp.broadcast_to(self.H, self.grid.shape) + base.eta)
        precond = self.preconditioner.inverse(self.grid, jax.lax.stop_gradient(coef), jax.lax.stop_gradient(mean_depth))
        eta_new, iters = implicit_solve(
            matvec, continuity(u_star, v_star), self.solver, preconditioner=precond, symmetric=True
        )
        gx, gy = self._gradient(eta_new)
        u_new = u_star - g * theta * tau * gx
        v_new = (v_star - g * theta * tau * gy) * mask
        # flux-form continuity with the new velocities: mass conserved to round-off
        return SWState(continuity(u_new, v_new), u_new, v_new), iters

    def step_with_stats(self, state: SWState, t: ArrayLike = 0.0) -> tuple[SWState, Int[Array, ""]]:
        """One semi-implicit step and the total number of CG iterations of its Helmholtz solves."""
        # Reverse mode keeps, per stage, only the stage's inputs and its Helmholtz solution; the explicit
        # stencils (a few fused passes over the grid) are recomputed in the adjoint instead of storing ~19
        # intermediate fields per stage, which the rollout's scan would stack, copy and reload every step
        # (at 128²: about 10 % less gradient time and half the gradient's temporary memory).
        stage_of = jax.checkpoint(
            lambda model, base, fraction: model._stage(state, base, fraction),
            policy=_save_helmholtz_solutions,
            prevent_cse=False,
        )

        def stage(carry, fraction):  # one compiled stage body, scanned over the stage fractions
            base, total = carry
            new, iters = stage_of(self, base, fraction)
            return (new, total + iters), None

        zero = jnp.zeros((), dtype=jnp.int64 if jax.config.read("jax_enable_x64") else jnp.int32)
        (new, total), _ = jax.lax.scan(stage, (state, zero), jnp.asarray(self.stages.fractions))
        return new, total

    def step(self, state: SWState, t: ArrayLike = 0.0) -> SWState:
        """Advance the shallow-water state (η, u, v) by one time step."""
        return self.step_with_stats(state, t)[0]


def geostrophic_jet(model: ShallowWater, u_profile: Float[ArrayLike, " ny"], eta_mean: float = 0.0) -> SWState:
    """Zonal jet u(y), v = 0, with η in exact discrete geostrophic balance f ū = −g δ_y η (C-grid averaging).

    On a doubly periodic domain the balance closes only if Σ f_v (u_j + u_{j+1}) = 0 (e.g. a
    zero-mean u on an f-plane). η has mean `eta_mean`.
    """
    ny, nx = model.grid.shape
    u_profile = jnp.asarray(u_profile, dtype=float)
    if u_profile.shape != (ny,):
        raise InputError(f"give the jet profile at the {ny} rows of u faces; got shape {u_profile.shape}.")
    _, fv = model.coriolis_parameter()
    fv = jnp.broadcast_to(fv[:, 0], (ny,))
    dy = model.grid.spacing[0]
    u_next = jnp.roll(u_profile, -1)
    jump = -dy * fv * 0.5 * (u_profile + u_next) / model.g  # η_{j+1} − η_j across each v face
    if model.periodic_y:
        closure = jnp.sum(jump)
        if not isinstance(closure, jax.core.Tracer):
            scale = float(jnp.sum(jnp.abs(jump)))
            if abs(float(closure)) > 1e-12 * max(scale, 1e-300):
                raise InputError(
                    "a doubly periodic domain has no geostrophic η for this jet: Σ f(u_j + u_{j+1}) must vanish "
                    "(use a zero-mean u on an f-plane, or a channel)."
                )
    eta_rows = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jump[:-1])])
    eta_rows = eta_rows - jnp.mean(eta_rows) + eta_mean
    eta = jnp.broadcast_to(eta_rows[:, None], (ny, nx))
    u = jnp.broadcast_to(u_profile[:, None], (ny, nx))
    return SWState(eta, u, jnp.zeros((ny, nx)))
