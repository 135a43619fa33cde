"""One registry of everything the package ships that the contract tests check: models, observation operators,
background-covariance square roots and the 4D-Var residual maps.

Each `Entry` names a function under test and builds, on first use, a `Case`: the function `f`, a point `x`, a
tangent `dx`, a cotangent `w`, and for linear operators the hand-written adjoint. `tests/test_contracts.py` tests
each property over every entry that has it (see `Entry.properties`). A new model, operator or covariance is one
entry in `ENTRIES`.

Models are checked as the map (initial state, physical parameters) ↦ state after `N_STEPS` steps, so the
tangent-linear model, its adjoint and the parameter gradients (κ, velocity, wind_scale, inflow, ν, H, g, f0, β,
F) are tested together. Every model configuration appears twice:

- at the constructor's default solver tolerances ("default"): all properties, with the adjoint identity held to
  `default_adjoint_rtol`, a bound derived from the inner-solver tolerance (below);
- at tight solver tolerances ("tight"): the adjoint identity to 1e-12.

Lorenz-96 has no Krylov solve (RK4; the implicit stepper differentiates its stage equations with a dense LU), so
its default configuration is exact and held to 1e-12.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import assim.covariances.covariance
from assim.covariances.component import ComponentCovariance
from assim.covariances.covariance import (
    BlockCovariance,
    DiagonalCovariance,
    SpectralGaussianCovariance,
)
from assim.covariances.diffusion import (
    DiffusionCovariance,
    ExactNormalisation,
    RandomisedNormalisation,
)
from assim.covariances.frozen import FrozenCovariance
from assim.covariances.scaled import ScaledCovariance
from assim.learned.prior import LearnedCovariance, LearnedPrior, SpectralGain, VarianceGain
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import (
    GriddedObservation,
    StationObservation,
    SwathObservation,
)
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.parameter_control import (
    JointControl,
    LogNormalPrior,
    ParameterControl4DVar,
)
from assim.problems.weak_constraint import SubWindows, WeakConstraint4DVar
from models import (
    CartesianGrid,
    ClosedPoles,
    Dirichlet,
    LatLonGrid,
    Neumann,
    Open,
    Periodic,
)
from models.advection_diffusion import IMEX, AdvectionDiffusion
from models.burgers import Burgers
from models.diffusion import Diffusion
from models.lorenz96 import RK4, ImplicitDiffrax, Lorenz96
from models.nondivergent import NonDivergentProjection
from models.operators import Centred, Upwind
from models.rollout import integrate
from models.shallow_water import BetaPlane, FPlane, RungeKutta3, ShallowWater, SWState
from models.time_schemes import BackwardEuler, CrankNicolson

N_STEPS = 10  # model windows: at least 10 steps
TIGHT_ADJOINT = 1e-12  # DESIGN.md: |⟨Lx, y⟩ − ⟨x, Lᵀy⟩| ≤ 1e-12 ‖Lx‖‖y‖ in float64

# The adjoint identity of an n-step window whose steps solve linear systems only to a tolerance τ (lineax's
# test |r_i| ≤ atol + rtol·|b_i|, atol = rtol = τ: a relative residual of about τ): the tangent-linear and the
# adjoint run are each a chain of n such solves, each solution off by up to cond(A)·τ relative to its size, so
# ⟨M′δ, w⟩ and ⟨δ, M′ᵀw⟩ differ by up to 2·n·cond(A)·τ of ‖M′δ‖‖w‖. The step operators here
# (I + θΔt L, Newton Jacobians, the Helmholtz operator) have cond(A) ≲ 50, hence a bound of 100·n·τ.
SOLVE_ERROR_FACTOR = 100.0

TIGHT_CG = lx.CG(rtol=1e-14, atol=1e-14, max_steps=1000)
TIGHT_GMRES = lx.GMRES(rtol=1e-14, atol=1e-14, restart=20, max_steps=200)


def inner_tolerance(model) -> float:
    """Largest rtol/atol of the solves a model step makes (its Krylov solver, Newton, the flux projection)."""
    tols = []
    for solver in (getattr(model, "solver", None), getattr(getattr(model, "flux_correction", None), "solver", None)):
        if solver is not None:
            tols += [float(getattr(solver, "rtol", 0.0)), float(getattr(solver, "atol", 0.0))]
    tols += [float(getattr(model, "rtol", 0.0)), float(getattr(model, "atol", 0.0))]  # Burgers' Newton
    return max(tols)


def default_adjoint_rtol(tolerance: float, n_solves: int) -> float:
    """The adjoint bound a chain of `n_solves` solves to `tolerance` can hold (never below 1e-12)."""
    return max(TIGHT_ADJOINT, SOLVE_ERROR_FACTOR * n_solves * tolerance)


# ----------------------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Case:
    """What an entry builds: f, a point, a tangent, a cotangent (and the explicit adjoint of a linear f)."""

    f: Callable[[Any], Any]
    x: Any
    dx: Any
    w: Any
    adjoint: Callable[[Any], Any] | None = None  # y ↦ Lᵀy, hand-written (linear operators)
    in_axes: Any = 0  # vmap axes of x: 0 for a state or control, (0, None) for (state, parameters)
    adjoint_rtol: float = TIGHT_ADJOINT
    gradient: GradientCase | None = None  # parameter gradients


@dataclass(frozen=True)
class GradientCase:
    """A loss ⟨w, g(θ)⟩ and directions in θ, one per parameter, for the gradient-vs-central-difference test."""

    g: Callable[[Any], Any]
    theta: Any
    w: Any
    directions: dict[str, Any]
    h: float = 1e-3
    rtol: float = 1e-6


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "model", "operator", "covariance" or "residual"
    build: Callable[[], Case] = field(repr=False)
    properties: frozenset[str] = frozenset({"adjoint", "vmap", "jit"})
    epsilons: np.ndarray | None = field(default=None, repr=False)  # Taylor test (nonlinear maps)
    covers: type | None = None  # the shipped class the entry exercises

    def __str__(self):
        return self.name


def _rms(a) -> float:
    a = np.asarray(a, dtype=float)
    r = float(np.sqrt(np.mean(a**2))) if a.size else 0.0
    return r if r > 0 else 1.0


def _normal(key, like, scale=1.0):
    """A random pytree shaped like `like`, each leaf scale × its RMS × N(0, 1)."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(
        treedef, [scale * _rms(a) * jax.random.normal(k, jnp.shape(a)) for k, a in zip(keys, leaves)]
    )


def _unit_normal(key, like):
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def _leaf_directions(zero_like_x, dx, select) -> dict[str, Any]:
    """One direction per leaf of the part of x that `select` picks: that leaf of dx, every other leaf zero."""
    paths = jax.tree_util.tree_flatten_with_path(select(dx))[0]
    out = {}
    for path, _ in paths:
        label = jax.tree_util.keystr(path)

        def only(p, d, label=label):
            return d if jax.tree_util.keystr(p) == label else jnp.zeros_like(d)

        picked = jax.tree_util.tree_map_with_path(only, select(dx))
        out[label] = eqx.tree_at(select, zero_like_x, picked)
    return out


# ----------------------------------------------------------------------------------------- models


def model_case(model, state, seed: int, *, default: bool, state_direction=None, gradient_rtol=1e-5, h=1e-3):
    """The window (state, parameters) ↦ state after N_STEPS steps of `model`, with its tangent and cotangent."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def f(x):
        s, p = x
        return integrate(eqx.combine(p, static), s, N_STEPS)

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    state = jax.tree_util.tree_map(jnp.asarray, state)
    ds = state_direction if state_direction is not None else _normal(k1, state, 0.5)
    dx = (ds, _normal(k2, params, 0.1))
    x = (state, params)
    w = _unit_normal(k3, state)
    zero = jax.tree_util.tree_map(jnp.zeros_like, dx)
    gradient = GradientCase(f, x, w, _leaf_directions(zero, dx, lambda t: t[1]), h=h, rtol=gradient_rtol)
    rtol = default_adjoint_rtol(inner_tolerance(model), N_STEPS) if default else TIGHT_ADJOINT
    return Case(f, x, dx, w, in_axes=(0, None), adjoint_rtol=rtol, gradient=gradient)


def _mesh(grid):
    return np.meshgrid(*grid.coords().values(), indexing="ij")


LINE = CartesianGrid((16,), (1.0,), Dirichlet(0.0))
BOX = CartesianGrid((12, 12), (1.0, 1.0), Periodic())
WALLS = CartesianGrid((12, 10), (1.0, 0.8), (Neumann(), Dirichlet(0.5)))
GLOBE = LatLonGrid(np.arange(-90.0, 91.0, 15.0), np.arange(0.0, 360.0, 30.0), radius=1.0, poles=ClosedPoles())
EARTH = LatLonGrid(np.arange(-90.0, 91.0, 15.0), np.arange(0.0, 360.0, 30.0), poles=ClosedPoles())
CAP = LatLonGrid(np.arange(60.0, 90.1, 5.0), np.arange(-40.0, 40.1, 10.0), boundaries=(Open(), Open()),
                 poles=ClosedPoles())  # fmt: skip


def _field(grid, seed, lo=0.5, hi=1.5):
    return lo + (hi - lo) * jax.random.uniform(jax.random.PRNGKey(seed), grid.shape)


def diffusion(grid, scheme, dt, seed, scalar=False):
    def build(default):
        kw = {} if default else {"solver": TIGHT_CG}
        kappa = jnp.asarray(0.8) if scalar else _field(grid, seed)  # a scalar diffusivity or a field
        model = Diffusion(grid, kappa, dt, scheme, **kw)
        return model_case(model, _field(grid, seed + 1), seed + 2, default=default)

    return build


def _cartesian_wind(grid):
    y, x = _mesh(grid)
    return (0.3 + 0.1 * np.sin(2 * np.pi * x), 0.5 + 0.2 * np.cos(2 * np.pi * y))


def advection_cartesian(grid, scheme, advection, seed):
    def build(default):
        y, x = _mesh(grid)
        kappa = 0.01 * (1.0 + 0.5 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y))
        kw = {} if default else {"solver": TIGHT_CG if isinstance(scheme, IMEX) else TIGHT_GMRES}
        model = AdvectionDiffusion(grid, _cartesian_wind(grid), kappa, 0.05, scheme, advection_scheme=advection, **kw)
        c0 = np.exp(-((x - 0.4) ** 2 + (y - 0.5) ** 2) / (2 * 0.15**2)) + 0.2 * np.cos(2 * np.pi * y)
        return model_case(model, c0, seed, default=default, gradient_rtol=1e-5)

    return build


def advection_globe(scheme, advection, seed):
    """Time-varying wind on the globe, sampled at t = 0 and 4Δt (held constant past the last sample)."""

    def build(default):
        lat, lon = (np.deg2rad(a) for a in _mesh(EARTH))
        dt = 2400.0
        u = np.stack([20.0 * (0.6 + 0.4 * np.cos(lat)), 25.0 * (0.6 + 0.4 * np.cos(lat)) + 3.0 * np.sin(lon)])
        v = np.stack([6.0 + 2.0 * np.sin(lon), 4.0 + 3.0 * np.cos(2 * lon) * np.cos(lat)])
        kappa = 2e6 * (1.0 + 0.5 * np.sin(lon) * np.cos(lat))
        kw = {} if default else {"solver": TIGHT_CG if isinstance(scheme, IMEX) else TIGHT_GMRES}
        model = AdvectionDiffusion(EARTH, (v, u), kappa, dt, scheme, times=(0.0, 4 * dt), advection_scheme=advection,
                                   **kw)  # fmt: skip
        c0 = np.exp(-((lat - 0.3) ** 2 + (lon - 2.0) ** 2) / 0.3) + 0.3 * np.sin(lat)
        return model_case(model, c0, seed, default=default, gradient_rtol=1e-5)

    return build


def advection_open_cap(seed):
    """Open boundaries with inflow values and non-divergent face fluxes on a regional lat-lon cap over the pole."""

    def build(default):
        rng = np.random.default_rng(seed)
        a, b = np.meshgrid(*(np.linspace(0, 1, n) for n in CAP.shape), indexing="ij")
        c = rng.normal(size=4)
        wind = (30.0 * (c[0] + np.sin(3 * a + c[1]) * np.cos(2 * b)), 30.0 * (1.0 + c[2] * a + np.cos(4 * b + c[3])))
        kw = {} if default else {"solver": TIGHT_GMRES}
        projection = NonDivergentProjection() if default else NonDivergentProjection(TIGHT_CG)
        model = AdvectionDiffusion(CAP, wind, 1e4, 3600.0, CrankNicolson(), advection_scheme=Centred(),
                                   inflow=rng.normal(size=CAP.shape), flux_correction=projection, **kw)  # fmt: skip
        return model_case(model, rng.normal(size=CAP.shape), seed, default=default, gradient_rtol=1e-5)

    return build


BURGERS_1D = CartesianGrid((16,), (np.pi,), boundaries=Dirichlet(0.0))
BURGERS_2D = CartesianGrid((12, 12), (2 * np.pi, 2 * np.pi))


def burgers(grid, nu, scheme, seed):
    def build(default):
        kw = {} if default else {"solver": TIGHT_GMRES, "rtol": 1e-13, "atol": 1e-13}
        model = Burgers(grid, nu(grid), 0.5, scheme, **kw)
        shape = grid.shape if grid.ndim == 1 else (2,) + grid.shape
        u = 0.3 * jax.random.normal(jax.random.PRNGKey(seed), shape)
        return model_case(model, u, seed + 1, default=default)

    return build


SW_CHANNEL = CartesianGrid((8, 12), (8.0, 12.0), boundaries=(Neumann(), Periodic()))
SW_PERIODIC = CartesianGrid((8, 8), (8.0, 8.0), boundaries=Periodic())


def shallow_water(grid, coriolis, seed, **options):
    def build(default):
        y, x = _mesh(grid)
        depth = 4.0 * (1.0 + 0.25 * np.sin(2 * np.pi * x / grid.lengths[1]) * np.cos(np.pi * y / grid.lengths[0]))
        kw = {} if default else {"solver": TIGHT_CG}
        model = ShallowWater(grid, depth, 1.0, g=1.0, coriolis=coriolis, **options, **kw)
        keys = jax.random.split(jax.random.PRNGKey(seed), 6)
        wall = jnp.asarray(model._wall_mask())  # no flow through a channel's north wall

        def state(k, eta, vel):
            return SWState(eta * jax.random.normal(k[0], grid.shape), vel * jax.random.normal(k[1], grid.shape),
                           wall * vel * jax.random.normal(k[2], grid.shape))  # fmt: skip

        # small flow: PredictorCorrector's explicit limit |f|Δt + CFL ≤ 0.3 holds along the whole window
        return model_case(model, state(keys[:3], 0.2, 0.02), seed, default=default,
                          state_direction=state(keys[3:], 0.2, 0.02))  # fmt: skip

    return build


# a masked lat-lon grid (8 × 12, periodic in longitude): an island and a meridional wall closing the coasts
MASKED_SEA = np.ones((8, 12), bool)
MASKED_SEA[3:5, 4:7] = False  # an island
MASKED_SEA[:6, 9] = False  # a wall reaching from the south
MASKED_LATLON = LatLonGrid(np.arange(-70.0, 71.0, 20.0), np.arange(0.0, 360.0, 30.0), radius=1.0, mask=MASKED_SEA)


def advection_masked_latlon(seed):
    """Centred advection–diffusion (Crank–Nicolson) on the masked lat-lon grid: no flux through closed coasts."""

    def build(default):
        lat, lon = (np.deg2rad(a) for a in _mesh(MASKED_LATLON))
        wind = (0.2 * np.sin(lon) * np.cos(lat), 0.4 * (0.6 + 0.4 * np.cos(lat)) + 0.1 * np.cos(2 * lon))
        kappa = 0.05 * (1.0 + 0.5 * np.sin(lon) * np.cos(lat))
        kw = {} if default else {"solver": TIGHT_GMRES}
        model = AdvectionDiffusion(MASKED_LATLON, wind, kappa, 0.1, CrankNicolson(), advection_scheme=Centred(), **kw)
        c0 = np.exp(-((lat - 0.3) ** 2 + (lon - 2.0) ** 2) / 0.3) + 0.3 * np.sin(lat)
        return model_case(model, c0, seed, default=default, gradient_rtol=1e-5)

    return build


def lorenz96(forcing, stepper, seed, n=12):
    def build(default):
        x0 = 8.0 + jax.random.normal(jax.random.PRNGKey(seed), (n,))
        f = jnp.asarray(8.0) if forcing == "scalar" else 8.0 + 0.5 * jnp.sin(2 * jnp.pi * jnp.arange(n) / n)
        return model_case(Lorenz96(n, f, 0.01, stepper), x0, seed + 1, default=False, gradient_rtol=1e-7, h=1e-4)

    return build


def _viscosity_field(grid):
    """ν varying along x by ±50 %."""
    return 0.1 * (1.0 + 0.5 * np.broadcast_to(np.sin(grid.coords()["x"]), grid.shape))


def _taylor(top=0.1, n=11):
    return top * 2.0 ** -np.arange(n)  # ten halvings: three decades, two inside the end points


MODEL_PROPERTIES = frozenset({"adjoint", "taylor", "gradient", "vmap", "jit"})

MODELS = {
    # name: (builder(default) → Case, Taylor ε); the class is the name's first word
    "diffusion-be-1d-dirichlet": (diffusion(LINE, BackwardEuler(), 0.002, 10, scalar=True), _taylor()),
    "diffusion-cn-2d-periodic": (diffusion(BOX, CrankNicolson(), 0.005, 20), _taylor()),
    "diffusion-be-2d-walls": (diffusion(WALLS, BackwardEuler(), 0.005, 30), _taylor()),
    "diffusion-cn-latlon": (diffusion(GLOBE, CrankNicolson(), 0.1, 40), _taylor()),
    "advection-cn-centred-walls": (advection_cartesian(WALLS, CrankNicolson(), Centred(), 50), _taylor()),
    "advection-imex-walls": (advection_cartesian(WALLS, IMEX(), Upwind(), 70), _taylor()),
    "advection-be-upwind-latlon": (advection_globe(BackwardEuler(), Upwind(), 80), _taylor()),
    "advection-imex-cn-latlon": (advection_globe(IMEX(CrankNicolson()), Upwind(), 90), _taylor()),
    "advection-cn-open-projected-cap": (advection_open_cap(100), _taylor()),
    "burgers-be-1d": (burgers(BURGERS_1D, lambda g: 0.1, BackwardEuler(), 110), _taylor(0.3)),
    "burgers-cn-2d-field": (burgers(BURGERS_2D, _viscosity_field, CrankNicolson(), 120), _taylor(0.3)),
    "diffusion-cn-masked-latlon": (diffusion(MASKED_LATLON, CrankNicolson(), 0.1, 170), _taylor()),
    "advection-cn-centred-masked-latlon": (advection_masked_latlon(180), _taylor()),
    "shallow-water-beta-channel": (shallow_water(SW_CHANNEL, BetaPlane(0.1, 0.005, y0=4.0), 130), _taylor()),
    "shallow-water-f-plane-rk3": (shallow_water(SW_PERIODIC, FPlane(0.1), 140, stages=RungeKutta3()), _taylor()),
}
EXACT_MODELS = {  # no inner solver tolerance: the default configuration is held to 1e-12
    "lorenz96-rk4-scalar": (lorenz96("scalar", RK4(), 150), _taylor()),
    "lorenz96-implicit-vector": (lorenz96("vector", ImplicitDiffrax(), 160), _taylor()),
}


# ------------------------------------------------------------------------------ observation operators

OBS_PERIODIC = CartesianGrid((8, 10), (2.0, 1.0), Periodic(), origin=(-1.0, 0.0))
OBS_WALLED = CartesianGrid((8, 10), (2.0, 1.0), Neumann())
OBS_LINE = CartesianGrid((12,), (3.0,), Periodic())
OBS_LATLON = LatLonGrid(np.arange(-80.0, 81.0, 20.0), np.arange(0.0, 360.0, 30.0), radius=1.0)


def _points(grid, n, seed, pad=0.0):
    rng = np.random.default_rng(seed)
    if isinstance(grid, LatLonGrid):
        return np.stack([rng.uniform(-89.0, 89.0, n), rng.uniform(-180.0, 540.0, n)], axis=-1)
    lo, hi = np.asarray(grid.origin) - pad, np.asarray(grid.origin) + np.asarray(grid.lengths) + pad
    return rng.uniform(lo, hi, size=(n, grid.ndim))


def static_operator(grid, make, seed):
    def build():
        op = make()
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        x = jax.random.normal(k1, grid.shape)
        return Case(op.apply, x, x, jax.random.normal(k2, (op.n_obs,)), adjoint=op.adjoint)

    return build


def swath_operator(grid, seed, n_times=3, n_obs=7):
    def build():
        op = SwathObservation(grid, np.stack([_points(grid, n_obs, seed + t) for t in range(n_times)]))
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        x = jax.random.normal(k1, (n_times,) + grid.shape)
        return Case(op.apply_window, x, x, jax.random.normal(k2, (n_times, n_obs)), adjoint=op.adjoint_window)

    return build


OPERATORS = {
    "gridded": static_operator(
        OBS_PERIODIC,
        lambda: GriddedObservation(OBS_PERIODIC, np.random.default_rng(1).choice(OBS_PERIODIC.size, 30, False)),
        1,
    ),
    "stations-periodic": static_operator(
        OBS_PERIODIC, lambda: StationObservation(OBS_PERIODIC, _points(OBS_PERIODIC, 40, 2, 0.5)), 2
    ),
    "stations-walled": static_operator(
        OBS_WALLED, lambda: StationObservation(OBS_WALLED, _points(OBS_WALLED, 40, 3, 0.2)), 3
    ),
    "stations-1d": static_operator(OBS_LINE, lambda: StationObservation(OBS_LINE, _points(OBS_LINE, 9, 4, 1.0)), 4),
    "stations-latlon": static_operator(
        OBS_LATLON, lambda: StationObservation(OBS_LATLON, _points(OBS_LATLON, 40, 5)), 5
    ),
    "stations-masked-latlon": static_operator(
        MASKED_LATLON, lambda: StationObservation(MASKED_LATLON, _points(MASKED_LATLON, 30, 8)), 8
    ),
    "swath-cartesian": swath_operator(OBS_PERIODIC, 6),
    "swath-latlon": swath_operator(OBS_LATLON, 7),
}


# ------------------------------------------------------------------------------ background covariances

COV_PERIODIC = CartesianGrid((8, 8), (1.0, 1.0), Periodic())
COV_WALLED = CartesianGrid((8, 6), (1.0, 0.8), (Neumann(), Dirichlet(0.0)))
COV_LATLON = LatLonGrid(np.arange(-75.0, 76.0, 25.0), np.arange(0.0, 360.0, 30.0), radius=1.0)
COV_VARIANCE = 0.5 + jax.random.uniform(jax.random.PRNGKey(0), COV_PERIODIC.shape)
PREPARE = eqx.filter_jit(lambda c: c.prepare())


def covariance_case(make, seed, *, parameters=None, default_solver=False):
    """(builder, whether it has a gradient case): see `_covariance_case`."""
    return _covariance_case(make, seed, parameters=parameters, default_solver=default_solver), parameters is not None


def _covariance_case(make, seed, *, parameters=None, default_solver=False):
    """B^{1/2} as a linear operator of the control vector, with its hand-written adjoint (B^{1/2})ᵀ.

    `parameters` selects the differentiable fields (variance, length scale) for the gradient test, through the
    covariance's `prepare()` (so the normalisation's dependence on them is differentiated too).
    """

    def build():
        cov = make()
        prepared = PREPARE(cov)
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
        shape = jax.eval_shape(prepared.sqrt_adjoint, _state_like(cov))
        v = _unit_normal(k1, shape)
        w = _unit_normal(k2, _state_like(cov))
        gradient = None
        if parameters is not None:
            theta, static = eqx.partition(cov, eqx.is_inexact_array)

            def g(th):
                return eqx.combine(th, static).prepare().sqrt(v)

            dtheta = _normal(k3, theta, 0.3)
            zero = jax.tree_util.tree_map(jnp.zeros_like, dtheta)
            gradient = GradientCase(g, theta, w, _leaf_directions(zero, dtheta, parameters), h=1e-5, rtol=1e-6)
        rtol = TIGHT_ADJOINT
        if default_solver:  # M/2 CG solves each way (and, for the transpose check, their autodiff transposes)
            rtol = default_adjoint_rtol(max(cov.solver.rtol, cov.solver.atol), cov.n_iterations)
        return Case(prepared.sqrt, v, v, w, adjoint=prepared.sqrt_adjoint, adjoint_rtol=rtol, gradient=gradient)

    return build


def _state_like(cov):
    if MaskedCovariance is not None and isinstance(cov, MaskedCovariance):
        return jnp.zeros(cov.shape)
    if isinstance(cov, BlockCovariance):
        return tuple(_state_like(b) for b in cov.blocks)
    if isinstance(cov, ComponentCovariance):
        return jnp.zeros((len(cov.blocks),) + cov.blocks[0].grid.shape)
    if isinstance(cov, (ScaledCovariance, LearnedCovariance)):
        return _state_like(cov.base)
    if isinstance(cov, FrozenCovariance):
        return _state_like(cov.prepared)
    return jnp.zeros(cov.grid.shape)


def _diffusion_covariances(default):
    kw = {} if default else {"solver": TIGHT_CG}
    return {
        "diffusion-periodic-exact": lambda: DiffusionCovariance(COV_PERIODIC, COV_VARIANCE, 0.15, 4, **kw),
        "diffusion-walls-exact": lambda: DiffusionCovariance(COV_WALLED, 0.7, 0.2, 4, ExactNormalisation(), **kw),
        "diffusion-latlon-randomised": lambda: DiffusionCovariance(
            COV_LATLON, 0.7, 0.5, 4, RandomisedNormalisation(jax.random.PRNGKey(1), n_samples=50), **kw
        ),
    }


# B restricted to the sea cells of a domain mask (control = packed active cells); looked up by name so that the
# registry also loads in a tree without it
MaskedCovariance = getattr(assim.covariances.covariance, "MaskedCovariance", None)
COV_SEA = np.ones(COV_PERIODIC.shape, bool)
COV_SEA[2:5, 3:6] = False  # an island
COV_SEA[:, 0] = False  # a coast

_VARIANCE_AND_LENGTH = lambda c: (c.variance, c.length_scale)  # noqa: E731

COVARIANCES = {
    "diagonal": covariance_case(lambda: DiagonalCovariance(COV_PERIODIC, COV_VARIANCE), 1),
    "spectral-2d": covariance_case(
        lambda: SpectralGaussianCovariance(COV_PERIODIC, COV_VARIANCE, 0.15), 2, parameters=_VARIANCE_AND_LENGTH
    ),
    "block": covariance_case(
        lambda: BlockCovariance(
            (DiagonalCovariance(COV_PERIODIC, 4.0), SpectralGaussianCovariance(COV_PERIODIC, 1.0, 0.2))
        ),
        3,
    ),
    "scaled-spectral": covariance_case(
        lambda: ScaledCovariance(SpectralGaussianCovariance(COV_PERIODIC, COV_VARIANCE, 0.2), 0.3), 4
    ),
    "component": covariance_case(
        lambda: ComponentCovariance(
            (SpectralGaussianCovariance(COV_PERIODIC, COV_VARIANCE, 0.15), DiagonalCovariance(COV_PERIODIC, 2.0))
        ),
        5,
    ),
}
if MaskedCovariance is not None:
    COVARIANCES["masked-spectral"] = covariance_case(
        lambda: MaskedCovariance(SpectralGaussianCovariance(COV_PERIODIC, COV_VARIANCE, 0.15), COV_SEA), 6
    )
    COVARIANCES["masked-diffusion-latlon"] = covariance_case(  # a diffusion B on the sea cells of a masked lat-lon grid
        lambda: MaskedCovariance.on_grid(DiffusionCovariance(
            MASKED_LATLON, 0.7, 0.5, 4, RandomisedNormalisation(jax.random.PRNGKey(2), n_samples=20), solver=TIGHT_CG
        )),
        7,
    )  # fmt: skip


def _learned_latlon():
    """A learned prior (random, non-identity spectral and per-cell variance gains) on a masked lat-lon diffusion B."""
    base = MaskedCovariance.on_grid(
        DiffusionCovariance(
            MASKED_LATLON, 0.7, 0.5, 4, RandomisedNormalisation(jax.random.PRNGKey(3), n_samples=20), solver=TIGHT_CG
        )
    )
    spectral, variance = SpectralGain(MASKED_LATLON.shape, 6), VarianceGain(MASKED_LATLON.shape)
    k1, k2 = jax.random.split(jax.random.PRNGKey(4))
    spectral = eqx.tree_at(lambda g: g.log_gain, spectral, 0.5 * jax.random.normal(k1, (6,)))
    variance = eqx.tree_at(lambda g: g.log_scale, variance, 0.3 * jax.random.normal(k2, MASKED_LATLON.shape))
    return LearnedPrior((spectral, variance), MASKED_LATLON.shape, MASKED_LATLON.mask).covariance(base)


COVARIANCES["frozen-masked-latlon"] = covariance_case(
    lambda: FrozenCovariance(MaskedCovariance.on_grid(DiffusionCovariance(
        MASKED_LATLON, 0.7, 0.5, 4, RandomisedNormalisation(jax.random.PRNGKey(5), n_samples=20), solver=TIGHT_CG))),
    9,
)  # fmt: skip
COVARIANCES["learned-masked-latlon"] = covariance_case(
    _learned_latlon, 8, parameters=lambda c: (c.prior.gains[0].log_gain, c.prior.gains[1].log_scale)
)
for _i, (_name, _make) in enumerate(_diffusion_covariances(default=True).items()):
    COVARIANCES[f"{_name}@default"] = covariance_case(
        _make, 10 + _i, default_solver=True, parameters=_VARIANCE_AND_LENGTH if _i == 0 else None
    )
for _i, (_name, _make) in enumerate(_diffusion_covariances(default=False).items()):
    COVARIANCES[f"{_name}@tight"] = covariance_case(_make, 20 + _i)


# ------------------------------------------------------------------------------ 4D-Var residual maps

L96_RING = CartesianGrid((8,), (8.0,), Periodic())


def _l96_window():
    model = Lorenz96(8, 8.0, 0.05)
    truth = integrate(model, 8.0 + jax.random.normal(jax.random.PRNGKey(0), (8,)), 20)
    steps = (0, 2, 4)
    op = GriddedObservation(L96_RING, np.arange(0, 8, 2))
    traj = [integrate(model, truth, s) for s in steps]
    values = jnp.stack([op.apply(t) for t in traj]) + 0.3 * jax.random.normal(jax.random.PRNGKey(1), (3, 4))
    obs = ObservationSet(op, steps, values, 0.3)
    cov = SpectralGaussianCovariance(L96_RING, 0.5, 1.0)
    return model, truth + 0.5, cov, obs


def strong_residual():
    model, background, cov, obs = _l96_window()
    problem = StrongConstraint4DVar(model, background, cov, obs, n_steps=4).prepared()
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
    v = 0.3 * jax.random.normal(k1, (8,))
    w = _unit_normal(k3, jax.eval_shape(problem.residual, v))
    return Case(problem.residual, v, jax.random.normal(k2, (8,)), w)


def weak_residual():
    model, background, cov, obs = _l96_window()
    q = ScaledCovariance(DiagonalCovariance(L96_RING, 1.0), 0.1)
    problem = WeakConstraint4DVar(model, background, cov, q, obs, n_steps=4, timing=SubWindows(2)).prepared()
    zero = problem.zero_control()
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    c = jax.tree_util.tree_map(lambda a: 0.3 * a, _unit_normal(k1, zero))
    w = _unit_normal(k3, jax.eval_shape(problem.residual, c))
    return Case(problem.residual, c, _unit_normal(k2, zero), w)


def parameter_residual():
    grid = CartesianGrid((12,), (1.0,), Periodic())
    model = Diffusion(grid, 0.01, 0.05, solver=TIGHT_CG)
    x = grid.coords()["x"]
    background = jnp.asarray(np.sin(2 * np.pi * x) + 0.5 * np.cos(6 * np.pi * x))
    op = GriddedObservation(grid, np.arange(0, 12, 2))
    values = jax.random.normal(jax.random.PRNGKey(4), (3, 6))
    obs = ObservationSet(op, (2, 4, 6), values, 0.1)
    cov = SpectralGaussianCovariance(grid, 0.1, 0.1)
    problem = ParameterControl4DVar(model, lambda m: m.kappa, LogNormalPrior(0.01, 1.0), background, cov, obs)
    problem = problem.prepared()
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
    c = JointControl(0.3 * jax.random.normal(k1, grid.shape), (jnp.asarray(0.4),))
    dc = JointControl(jax.random.normal(k2, grid.shape), (jnp.asarray(1.0),))
    w = _unit_normal(k3, jax.eval_shape(problem.residual, c))
    return Case(problem.residual, c, dc, w)


RESIDUALS = {
    "strong-4dvar-lorenz96": strong_residual,
    "weak-4dvar-lorenz96": weak_residual,
    "parameter-control-diffusion": parameter_residual,
}


# ----------------------------------------------------------------------------------------- the registry


MODEL_CLASSES = {"diffusion": Diffusion, "advection": AdvectionDiffusion, "burgers": Burgers,
                 "shallow-water": ShallowWater, "lorenz96": Lorenz96}  # fmt: skip
OPERATOR_CLASSES = {"gridded": GriddedObservation, "stations": StationObservation, "swath": SwathObservation}
COVARIANCE_CLASSES = {"frozen": FrozenCovariance, "learned": LearnedCovariance, "masked": MaskedCovariance, "diagonal": DiagonalCovariance, "spectral": SpectralGaussianCovariance, "block": BlockCovariance,
                      "scaled": ScaledCovariance, "component": ComponentCovariance,
                      "diffusion": DiffusionCovariance}  # fmt: skip
RESIDUAL_CLASSES = {"strong": StrongConstraint4DVar, "weak": WeakConstraint4DVar, "parameter": ParameterControl4DVar}


def _class(table, name):
    return next(cls for prefix, cls in table.items() if name.startswith(prefix))


def _entries() -> list[Entry]:
    out = []
    for name, (build, eps) in MODELS.items():
        cls = _class(MODEL_CLASSES, name)
        out.append(Entry(f"{name}@default", "model", functools.partial(build, True), MODEL_PROPERTIES, eps, cls))
        out.append(Entry(f"{name}@tight", "model", functools.partial(build, False), frozenset({"adjoint"}), None, cls))
    for name, (build, eps) in EXACT_MODELS.items():
        cls = _class(MODEL_CLASSES, name)
        out.append(Entry(f"{name}@default", "model", functools.partial(build, True), MODEL_PROPERTIES, eps, cls))
    for name, build in OPERATORS.items():
        props = frozenset({"adjoint", "transpose", "vmap", "jit"})
        out.append(Entry(name, "operator", build, props, None, _class(OPERATOR_CLASSES, name)))
    for name, (build, has_parameters) in COVARIANCES.items():
        props = {"adjoint"} if name.endswith("@tight") else {"adjoint", "transpose", "vmap", "jit"}
        props |= {"gradient"} if has_parameters else set()
        out.append(Entry(name, "covariance", build, frozenset(props), None, _class(COVARIANCE_CLASSES, name)))
    for name, build in RESIDUALS.items():
        props = frozenset({"adjoint", "taylor", "vmap", "jit"})
        out.append(Entry(name, "residual", build, props, _taylor(), _class(RESIDUAL_CLASSES, name)))
    return out


ENTRIES: list[Entry] = _entries()
BY_NAME = {e.name: e for e in ENTRIES}
assert len(BY_NAME) == len(ENTRIES), "entry names must be unique"


def having(prop: str) -> list[Entry]:
    """The entries a property applies to."""
    return [e for e in ENTRIES if prop in e.properties]


# ------------------------------------------------------------------------------ shared compiled programs
# Each entry's case and programs are built once and shared by every property that needs them.


@functools.cache
def case(name: str) -> Case:
    return BY_NAME[name].build()


@functools.cache
def _program(name: str) -> Callable:
    """One compiled program per entry, (x, δ, w) ↦ f(x), the tangent f′(x)δ, the autodiff adjoint f′(x)ᵀw (the
    linearisation transposed, or reverse mode for a linear operator) and, for a linear operator, its
    hand-written adjoint Lᵀw."""
    c = case(name)

    def run(x, dx, w):
        if c.adjoint is not None:  # linear: Lδ by applying L (no forward-mode rule needed, e.g. for a custom_vjp)
            fx, pullback = jax.vjp(c.f, x)
            return {"fx": fx, "tangent": c.f(dx), "pullback": pullback(w)[0], "adjoint": c.adjoint(w)}
        fx, linear = jax.linearize(c.f, x)
        return {"fx": fx, "tangent": linear(dx), "pullback": jax.linear_transpose(linear, x)(w)[0]}

    return jax.jit(run)


@functools.cache
def derivatives(name: str) -> dict[str, Any]:
    """The entry's program at its own point, tangent and cotangent."""
    c = case(name)
    return _program(name)(c.x, c.dx, c.w)


def jitted(name: str) -> Callable:
    """x ↦ f(x) under jit: the primal output of the entry's compiled program (no second compilation; the extra
    tangent and adjoint work is cheap on these grids)."""
    c = case(name)
    return lambda x: _program(name)(x, c.dx, c.w)["fx"]


def gradient_of(name: str):
    """∇θ⟨w, g(θ)⟩ of an entry's gradient case (for models g is f: the adjoint run is shared)."""
    c = case(name)
    if c.gradient.g is c.f:
        return derivatives(name)["pullback"]
    return _gradient_program(name)


@functools.cache
def _gradient_program(name: str):
    gc = case(name).gradient
    return jax.jit(lambda th, w: jax.vjp(gc.g, th)[1](w)[0])(gc.theta, gc.w)


@functools.cache
def gradient_loss(name: str) -> Callable:
    c = case(name)
    gc = c.gradient
    return jitted(name) if gc.g is c.f else jax.jit(gc.g)


def clear() -> None:
    """Drop every built case and compiled program (at the end of a test module)."""
    for cached in (case, _program, derivatives, _gradient_program, gradient_loss):
        cached.cache_clear()


def batch(name: str, scales=(0.0, 0.5, 1.0)):
    """(list of inputs, the same stacked for vmap): the state (or control) moved along its tangent."""
    c = case(name)
    if c.in_axes == 0:
        xs = [jax.tree_util.tree_map(lambda a, d, s=s: a + s * d, c.x, c.dx) for s in scales]
        return xs, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
    states = [jax.tree_util.tree_map(lambda a, d, s=s: a + s * d, c.x[0], c.dx[0]) for s in scales]
    return [(s, c.x[1]) for s in states], (jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states), c.x[1])


def unstack(tree, n):
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], tree) for i in range(n)]


def vmapped(name: str):
    c = case(name)
    return jax.jit(jax.vmap(c.f, in_axes=(c.in_axes,)))
