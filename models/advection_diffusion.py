"""Advection–diffusion ∂c/∂t + ∇·(v c) = ∇·(κ∇c) of a tracer in a prescribed, possibly unsteady wind."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import equinox as eqx
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from models.base import AbstractModel, as_field, check_positive
from models.errors import GridMismatchError, InputError, NonFiniteError, StabilityError
from models.grid import AbstractGrid, CartesianGrid, Open
from models.helmholtz import solve_helmholtz
from models.linear_solve import implicit_solve
from models.nondivergent import AbstractFluxCorrection, NoFluxCorrection
from models.operators import (
    AbstractAdvectionScheme,
    Upwind,
    advective_flux,
    diffusion,
    diffusion_flux_difference,
    diffusion_weights,
    face_velocity,
)
from models.preconditioners import (
    AbstractPreconditioner,
    SpectralPreconditioner,
    helmholtz_diagonal,
)
from models.time_schemes import AbstractThetaScheme, BackwardEuler


class IMEX(eqx.Module):
    """Explicit upwind advection (CFL-limited), then implicit diffusion by a θ-scheme solved with CG."""

    diffusion: AbstractThetaScheme = BackwardEuler()


def advective_flux_difference(
    grid: AbstractGrid,
    c: Float[Array, "..."],
    fluxes: tuple[Float[Array, "..."], ...],
    scheme: AbstractAdvectionScheme,
    inflow: Float[Array, "..."] | None = None,
) -> Float[Array, "..."]:
    """Net advective outflow V·∇·(v c) of each cell, given face volume fluxes v_f·A_f (inflow: Open axes)."""
    total = 0.0
    for axis, flux in enumerate(fluxes):
        total = total + jnp.diff(advective_flux(grid, c, flux, axis, scheme, inflow), axis=axis)
    return cast(Array, total)  # an array: the grid has at least one axis


def outflow_rate(grid: AbstractGrid, fluxes: tuple[Float[Array, "..."], ...]) -> Float[Array, "..."]:
    """Volume flux leaving each cell through all its faces (the diagonal of upwind advection times V)."""
    total = 0.0
    for axis, flux in enumerate(fluxes):
        f = jnp.moveaxis(flux, axis, 0)
        total = total + jnp.moveaxis(jnp.maximum(f[1:], 0.0) - jnp.minimum(f[:-1], 0.0), 0, axis)
    return jnp.broadcast_to(total, grid.shape)


class TransportJacobi(AbstractPreconditioner):
    """Inverse diagonal of the implicit operator (V/V̄)(I + θΔt(∇·(v·) − ∇·(κ∇))), advection taken upwind.

    Without face fluxes it is the Jacobi preconditioner of the diffusion part alone.
    For centred advection it uses the upwind diagonal, which is positive by construction.
    """

    def inverse(
        self,
        grid: AbstractGrid,
        coef: Float[ArrayLike, ""],
        kappa: Float[ArrayLike, "..."],
        fluxes: tuple[Float[Array, "..."], ...] | None = None,
    ) -> Callable[[Array], Array]:
        """Approximate inverse; `fluxes` are the face volume fluxes v_f·A_f of the implicit advection."""
        diag = helmholtz_diagonal(grid, coef, kappa)
        if fluxes is not None:
            mean_vol = jnp.mean(jnp.broadcast_to(jnp.asarray(grid.cell_volume()), grid.shape))
            diag = diag + coef * outflow_rate(grid, fluxes) / mean_vol
        inv = 1.0 / diag
        return lambda r: inv * r


def default_preconditioner(grid: AbstractGrid) -> AbstractPreconditioner:
    """Spectral (FFT/DCT/DST) of the diffusion part on Cartesian grids, Jacobi of the whole operator elsewhere."""
    return SpectralPreconditioner() if isinstance(grid, CartesianGrid) else TransportJacobi()


def _floor_significant(x: float, digits: int = 6) -> float:
    """x rounded down to `digits` significant digits (so that a suggested time step really is stable)."""
    exponent = math.floor(math.log10(x)) - digits + 1
    return math.floor(x / 10.0**exponent * (1.0 + 1e-12)) * 10.0**exponent


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_velocity(grid: AbstractGrid, velocity, times) -> tuple[tuple[Array, ...], tuple[float, ...] | None]:
    if not isinstance(velocity, (tuple, list)) or len(velocity) != grid.ndim:
        raise GridMismatchError(
            f"give the velocity as a tuple of {grid.ndim} cell-centred components, one per axis {grid.dims} "
            f"(on a LatLonGrid: (meridional v, zonal u) in m/s)."
        )
    expected = ()  # the shape of a time-varying component (set below when times are given)
    if times is not None:
        times = tuple(float(s) for s in np.atleast_1d(np.asarray(times, dtype=float)))
        if not np.all(np.isfinite(times)) or (len(times) > 1 and not np.all(np.diff(times) > 0)):
            raise InputError(f"velocity sample times must be finite and strictly increasing; got {times}.")
        expected = (len(times),) + grid.shape
    out = []
    for name, comp in zip(grid.dims, velocity):
        shape = tuple(np.shape(comp))
        if times is None:
            grid.check_field(comp, f"velocity component along {name!r}")
        elif shape != expected:
            raise GridMismatchError(
                f"time-varying velocity component along {name!r} has shape {shape}; give shape {expected} "
                f"(one field per sample time), or pass times=None for a steady wind of shape {grid.shape}."
            )
        if _concrete(comp) and not np.all(np.isfinite(np.asarray(comp))):
            raise NonFiniteError(f"velocity component along {name!r} holds NaN or inf; fill missing winds first.")
        comp = as_field(comp)
        out.append(comp if times is not None else jnp.broadcast_to(comp, grid.shape))
    return tuple(out), times


class AdvectionDiffusion(AbstractModel):
    """Tracer transport ∂c/∂t + ∇·(s v c) = ∇·(κ∇c) in conservative finite-volume form.

    `velocity` holds one cell-centred component per grid axis (on a LatLonGrid: meridional v
    along axis 0, zonal u along axis 1, in m/s), either steady (each of the grid's shape) or
    sampled at `times` (a leading time axis; linear in time between samples, held constant
    outside them). `kappa` (≥ 0, scalar or field), `velocity` and the scalar `wind_scale` s
    are differentiable fields. Dirichlet walls are inflow boundaries, Neumann walls are
    closed, periodic axes wrap. `Open()` axes are open boundaries: inflow carries in the
    value of `inflow` (a differentiable cell field of boundary values, or a scalar) in the
    cell beside the face, outflow leaves with the interior value (upwind), and diffusion
    sees a zero-flux wall. `flux_correction=NonDivergentProjection()` makes the face fluxes
    discretely non-divergent (winds from data are not), so a uniform field stays uniform.
    On a masked grid (`grid.mask`) coasts are closed: no advective or diffusive flux crosses a
    face beside a masked cell (its face velocity is zero), and masked cells keep their value.

    `scheme` chooses the time stepping: a θ-scheme (`BackwardEuler()`, `CrankNicolson()`)
    treats advection and diffusion implicitly together (nonsymmetric: lineax GMRES by
    default; lineax 0.1.1's BiCGStab breaks down on a zero right-hand side or an exact
    preconditioner), or `IMEX()` advances upwind advection explicitly and solves diffusion
    implicitly with CG. IMEX refuses a time step above its advective CFL limit.
    """

    grid: AbstractGrid = eqx.field(static=True)
    velocity: tuple[Float[Array, "..."], ...]
    kappa: Float[Array, "..."]
    wind_scale: Float[Array, ""]
    dt: float = eqx.field(static=True)
    times: tuple[float, ...] | None = eqx.field(static=True)
    scheme: AbstractThetaScheme | IMEX = eqx.field(static=True)
    advection_scheme: AbstractAdvectionScheme = eqx.field(static=True)
    solver: lx.AbstractLinearSolver = eqx.field(static=True)
    preconditioner: AbstractPreconditioner = eqx.field(static=True)
    inflow: Float[Array, "..."] | None
    flux_correction: AbstractFluxCorrection = eqx.field(static=True)

    def __init__(
        self,
        grid: AbstractGrid,
        velocity: tuple[Float[ArrayLike, "..."], ...],
        kappa: Float[ArrayLike, "..."],
        dt: float,
        scheme: AbstractThetaScheme | IMEX = BackwardEuler(),
        *,
        times: tuple[float, ...] | None = None,
        wind_scale: Float[ArrayLike, ""] = 1.0,
        advection_scheme: AbstractAdvectionScheme = Upwind(),
        solver: lx.AbstractLinearSolver | None = None,
        preconditioner: AbstractPreconditioner | None = None,
        inflow: Float[ArrayLike, "..."] | None = None,
        flux_correction: AbstractFluxCorrection = NoFluxCorrection(),
    ):
        check_positive(dt, "dt (time step)")
        if not isinstance(flux_correction, AbstractFluxCorrection):
            raise InputError("flux_correction must be NoFluxCorrection() or NonDivergentProjection().")
        if any(isinstance(b, Open) for b in grid.boundaries):
            if inflow is None:
                raise InputError(
                    "the grid has Open() boundaries: give inflow=<boundary values> (a scalar or a field of shape "
                    f"{grid.shape}) for the tracer that inflow carries in."
                )
            grid.check_field(inflow, "inflow (boundary values)")
            if _concrete(inflow) and not np.all(np.isfinite(np.asarray(inflow, dtype=float))):
                raise NonFiniteError("inflow (boundary values) holds NaN or inf; fill missing values first.")
            inflow = jnp.broadcast_to(as_field(inflow), grid.shape)
        elif inflow is not None:
            raise InputError("inflow (boundary values) applies to Open() boundaries only; the grid has none.")
        if not isinstance(scheme, (AbstractThetaScheme, IMEX)):
            raise InputError("scheme must be BackwardEuler(), CrankNicolson() or IMEX().")
        if not isinstance(advection_scheme, AbstractAdvectionScheme):
            raise InputError("advection_scheme must be Upwind() or Centred().")
        velocity, times = _check_velocity(grid, velocity, times)
        grid.check_field(kappa, "kappa (diffusivity)")
        if _concrete(kappa):
            k = np.asarray(kappa, dtype=float)
            if not np.all(np.isfinite(k)):
                raise NonFiniteError("kappa (diffusivity) holds NaN or inf; give finite values.")
            if np.any(k < 0):
                raise InputError(
                    f"kappa (diffusivity) must be ≥ 0 everywhere (minimum is {k.min():.3g}); use 0 for pure advection."
                )
        if np.shape(wind_scale) != ():
            raise InputError(f"wind_scale is one number multiplying the wind; got shape {np.shape(wind_scale)}.")
        if _concrete(wind_scale) and not np.isfinite(float(np.asarray(wind_scale))):
            raise NonFiniteError("wind_scale is NaN or inf; give a finite number.")
        if isinstance(scheme, IMEX):
            if not isinstance(advection_scheme, Upwind):
                raise StabilityError(
                    "IMEX advances advection explicitly, where centred fluxes are unconditionally unstable: "
                    "use advection_scheme=Upwind() or a fully implicit scheme (BackwardEuler(), CrankNicolson())."
                )
            solver = solver if solver is not None else lx.CG(rtol=1e-10, atol=1e-10)
        else:
            if isinstance(solver, lx.CG):
                raise InputError(
                    "the implicit advection–diffusion operator is nonsymmetric, so CG does not apply: "
                    "use lx.GMRES(...) or lx.BiCGStab(...), or scheme=IMEX() to solve only diffusion with CG."
                )
            solver = solver if solver is not None else lx.GMRES(rtol=1e-10, atol=1e-10, restart=20)
        self.grid = grid
        self.velocity = velocity
        self.kappa = as_field(kappa)
        self.wind_scale = as_field(wind_scale)
        self.dt = float(dt)
        self.times = times
        self.scheme = scheme
        self.advection_scheme = advection_scheme
        self.solver = solver
        self.preconditioner = preconditioner if preconditioner is not None else default_preconditioner(grid)
        self.inflow = inflow
        self.flux_correction = flux_correction
        if isinstance(scheme, IMEX) and all(_concrete(v) for v in velocity) and _concrete(self.wind_scale):
            courant = self.courant_number()
            if courant > 1.0 + 1e-12:
                raise StabilityError(
                    f"IMEX advances advection explicitly and its Courant number is {courant:.4g} > 1 at dt = "
                    f"{self.dt:.6g}: use dt ≤ {_floor_significant(self.dt / courant):.6g}, "
                    "or a fully implicit scheme (BackwardEuler(), CrankNicolson())."
                )

    def state_shape(self):
        return jax.ShapeDtypeStruct(self.grid.shape, jnp.float64)

    def velocity_at(self, t: ArrayLike) -> tuple[Float[Array, "..."], ...]:
        """Cell-centred wind components at time t (linear between samples, constant outside), before wind_scale."""
        if self.times is None:
            return self.velocity
        if len(self.times) == 1:
            return tuple(v[0] for v in self.velocity)
        times = jnp.asarray(self.times)
        t = jnp.asarray(t, dtype=float)
        i = jnp.clip(jnp.searchsorted(times, t, side="right") - 1, 0, len(self.times) - 2)
        w = jnp.clip((t - times[i]) / (times[i + 1] - times[i]), 0.0, 1.0)
        return tuple((1.0 - w) * v[i] + w * v[i + 1] for v in self.velocity)

    def volume_fluxes(self, t: ArrayLike) -> tuple[Float[Array, "..."], ...]:
        """Face volume fluxes s·v_f·A_f at time t on the n+1 faces normal to each axis (zero on closed walls)."""
        faces = face_velocity(self.grid, self.velocity_at(t))
        fluxes = tuple(vf * jnp.asarray(self.grid.face_area(a)) for a, vf in enumerate(faces))
        return tuple(self.wind_scale * f for f in self.flux_correction(self.grid, fluxes))

    def courant_number(self) -> float:
        """Largest advective Courant number Δt·(outflow volume flux)/V over cells and wind samples."""
        samples = (0.0,) if self.times is None else self.times
        vol = np.broadcast_to(np.asarray(self.grid.cell_volume()), self.grid.shape)
        rates = [np.asarray(outflow_rate(self.grid, self.volume_fluxes(s))) for s in samples]
        return max(float(np.max(self.dt * r / vol)) for r in rates)

    def _net_inflow(self, c: Array, fluxes, weights) -> Array:
        """V·(∇·(κ∇c) − ∇·(v c)): net inflow of tracer into each cell (boundary inflow included)."""
        return diffusion_flux_difference(self.grid, c, weights) - advective_flux_difference(
            self.grid, c, fluxes, self.advection_scheme, self.inflow
        )

    def tendency(self, c: Float[Array, "..."], t: ArrayLike = 0.0) -> Float[Array, "..."]:
        """Right-hand side ∇·(κ∇c) − ∇·(s v c) at time t."""
        vol = jnp.asarray(self.grid.cell_volume())
        return self._net_inflow(c, self.volume_fluxes(t), diffusion_weights(self.grid, self.kappa)) / vol

    def _preconditioner_inverse(self, coef: float, fluxes) -> Callable[[Array], Array] | None:
        if isinstance(self.preconditioner, TransportJacobi):
            return self.preconditioner.inverse(self.grid, coef, self.kappa, fluxes)
        return self.preconditioner.inverse(self.grid, coef, self.kappa)

    def _theta_step(self, c: Array, t: ArrayLike) -> tuple[Array, Array]:
        assert isinstance(self.scheme, AbstractThetaScheme)  # step sends IMEX to _imex_step
        theta, dt = self.scheme.theta, self.dt
        vol = jnp.broadcast_to(jnp.asarray(self.grid.cell_volume()), self.grid.shape)
        mean_vol = jnp.mean(vol)
        weight = vol / mean_vol
        weights = diffusion_weights(self.grid, self.kappa)
        new_fluxes = self.volume_fluxes(jnp.asarray(t, dtype=float) + dt)
        affine = self._net_inflow(jnp.zeros_like(c), new_fluxes, weights)  # inflow through Dirichlet walls
        b = weight * c + (theta * dt / mean_vol) * affine
        if theta < 1:
            b = b + ((1.0 - theta) * dt / mean_vol) * self._net_inflow(c, self.volume_fluxes(t), weights)

        def matvec(x):
            return weight * x - (theta * dt / mean_vol) * (self._net_inflow(x, new_fluxes, weights) - affine)

        return implicit_solve(
            matvec, b, self.solver, preconditioner=self._preconditioner_inverse(theta * dt, new_fluxes)
        )

    def _imex_step(self, c: Array, t: ArrayLike) -> tuple[Array, Array]:
        assert isinstance(self.scheme, IMEX)  # step sends the θ-schemes to _theta_step
        theta, dt = self.scheme.diffusion.theta, self.dt
        vol = jnp.asarray(self.grid.cell_volume())
        rhs = c - dt * advective_flux_difference(self.grid, c, self.volume_fluxes(t), Upwind(), self.inflow) / vol
        if theta < 1:
            rhs = rhs + (1.0 - theta) * dt * diffusion(self.grid, c, self.kappa)
        return solve_helmholtz(self.grid, rhs, theta * dt, self.kappa, self.solver, self.preconditioner)

    def step_with_stats(self, c: Float[Array, "..."], t: ArrayLike = 0.0) -> tuple[Float[Array, "..."], Array]:
        """One step of the tracer concentration and the Krylov steps its solve took (lineax's count)."""
        new, steps = self._imex_step(c, t) if isinstance(self.scheme, IMEX) else self._theta_step(c, t)
        if self.grid.mask is not None:  # masked rows are the identity: keep those cells exactly
            new = jnp.where(jnp.asarray(self.grid.mask), new, c)
        return new, steps

    def step(self, c: Float[Array, "..."], t: ArrayLike = 0.0) -> Float[Array, "..."]:
        """Advance the tracer concentration from time t to t + dt."""
        return self.step_with_stats(c, t)[0]


__all__ = [
    "IMEX",
    "AdvectionDiffusion",
    "TransportJacobi",
    "advective_flux_difference",
    "default_preconditioner",
    "outflow_rate",
]
