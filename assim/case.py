"""Build and run a validated case: grid, model, truth, synthetic observations, B, solver; window or cycling.

`build(case)` gives an `Experiment` (the problem objects and the twin); `run(experiment)`
solves it and returns an `Outcome` of plain numpy arrays and numbers for `assim.io`.
Keys: `PRNGKey(observations.seed)` is split into the network's key and the twin's key
(`assim.twin` folds the twin key per network), so a case reproduces exactly from its seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from assim.config import Case
from assim.covariance import (
    AbstractBackgroundCovariance,
    BlockCovariance,
    DiagonalCovariance,
    SpectralGaussianCovariance,
)
from assim.cost import StrongConstraint4DVar
from assim.cycling import Cycling
from assim.diffusion_covariance import DiffusionCovariance, ExactNormalisation, RandomisedNormalisation
from assim.gauss_newton import REASONS, GaussNewton, LevenbergMarquardt, NoDamping
from assim.observations import GriddedObservation, StationObservation
from assim.twin import ObservationNetwork, TwinExperiment, twin_experiment
from models import CartesianGrid, Neumann, Periodic
from models.advection_diffusion import AdvectionDiffusion
from models.base import AbstractModel
from models.burgers import Burgers
from models.diffusion import Diffusion
from models.lorenz96 import Lorenz96
from models.operators import Centred, Upwind
from models.rollout import integrate, rollout
from models.shallow_water import FPlane, ShallowWater, SWState
from models.time_schemes import BackwardEuler, CrankNicolson

_rollout = eqx.filter_jit(rollout)  # n_steps (a Python int) is static
_integrate = eqx.filter_jit(integrate)
SCHEMES = {"backward_euler": BackwardEuler(), "crank_nicolson": CrankNicolson()}


@dataclass
class Experiment:
    """Everything built from a case: grid, model, B, solver, the twin and the observation locations."""

    case: Case
    grid: CartesianGrid
    model: AbstractModel
    covariance: AbstractBackgroundCovariance
    solver: GaussNewton
    twin: TwinExperiment
    obs_locations: np.ndarray  # (n_obs, ndim) coordinates of the observed points
    obs_steps: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Outcome:
    """Plain-array results of a run (numpy), ready to be written."""

    truth: np.ndarray  # (time, *grid); shallow water: η
    background: np.ndarray  # (time, *grid): background forecast (window) or backgrounds at window starts (cycling)
    analysis: np.ndarray  # (time, *grid): analysis trajectory (window) or analyses at window starts (cycling)
    state_steps: np.ndarray  # model steps of background/analysis along their time axis
    obs_values: np.ndarray  # (obs_time, obs)
    obs_innovation: np.ndarray  # y − H(background trajectory)
    obs_residual: np.ndarray  # y − H(analysis trajectory)
    diagnostics: dict[str, np.ndarray]
    metrics: dict
    components: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # shallow water: u, v


def _primary(tree) -> np.ndarray:
    """The main field of a state or trajectory (shallow water: η)."""
    return np.asarray(tree.eta if isinstance(tree, SWState) else tree)


def _components(**trees) -> dict[str, dict[str, np.ndarray]]:
    """Secondary fields by component, then by role: {"u": {"truth": …, …}, "v": …} (shallow water only)."""
    first = next(iter(trees.values()))
    if not isinstance(first, SWState):
        return {}
    return {c: {role: np.asarray(getattr(t, c)) for role, t in trees.items()} for c in ("u", "v")}


def make_grid(case: Case) -> CartesianGrid:
    """The case's Cartesian grid (lorenz96: a periodic ring of unit-spaced variables)."""
    g = case.grid
    if case.model.kind == "lorenz96":
        return CartesianGrid((g.n,), (float(g.n),), Periodic(), origin=(-0.5,))  # centres at 0 … n−1
    boundary = Periodic() if g.boundary == "periodic" else Neumann()
    return CartesianGrid((g.n,) * g.ndim, (g.length,) * g.ndim, boundary)


def _bump(grid: CartesianGrid, initial) -> np.ndarray:
    axes = np.meshgrid(*grid.coords().values(), indexing="ij")
    r2 = sum((a - c) ** 2 for a, c in zip(axes, initial.centre))
    x = axes[-1]
    length = grid.lengths[-1]
    return initial.amplitude * np.exp(-r2 / (2 * initial.width**2)) + initial.wave * np.sin(2 * np.pi * x / length) ** 2


def make_model(case: Case, grid: CartesianGrid, spin_up: bool = True) -> tuple[AbstractModel, jax.Array]:
    """The model and the truth's initial state (lorenz96: spun up unless `spin_up` is False)."""
    m, dt = case.model, case.time.dt
    if m.kind == "lorenz96":
        model = Lorenz96(grid.shape[0], m.forcing, dt)
        x0 = jnp.full(grid.shape, m.forcing).at[0].add(0.01)
        return model, _integrate(model, x0, m.spin_up) if m.spin_up and spin_up else x0
    truth0 = jnp.asarray(_bump(grid, m.initial))
    if m.kind == "shallow_water":  # at rest, with a bump in the free surface
        zero = jnp.zeros(grid.shape)
        return ShallowWater(grid, m.depth, dt, m.g, FPlane(m.f0)), SWState(truth0, zero, zero)
    scheme = SCHEMES[m.scheme]
    if m.kind == "diffusion":
        return Diffusion(grid, m.kappa, dt, scheme), truth0
    if m.kind == "burgers":
        return Burgers(grid, m.nu, dt, scheme), truth0
    # advection_diffusion: a cellular flow u = sin(2πx)cos(2πy), v = −cos(2πx)sin(2πy), scaled by `speed`
    length = grid.lengths[-1]
    if grid.ndim == 2:
        y, x = np.meshgrid(*grid.coords().values(), indexing="ij")
        k = 2 * np.pi / length
        wind = (-np.cos(k * x) * np.sin(k * y), np.sin(k * x) * np.cos(k * y))
    else:
        wind = (np.ones(grid.shape),)
    wind = tuple(jnp.asarray(m.speed * w) for w in wind)
    advection = Centred() if m.advection == "centred" else Upwind()
    return AdvectionDiffusion(grid, wind, m.kappa, dt, scheme, advection_scheme=advection), truth0


def make_covariance(case: Case, grid: CartesianGrid) -> AbstractBackgroundCovariance:
    """B of the case."""
    b = case.background

    def one(variance):
        if b.kind == "spectral_gaussian":
            return SpectralGaussianCovariance(grid, variance, b.length_scale)
        if b.kind == "diffusion":
            norm = ExactNormalisation() if grid.ndim <= 2 else RandomisedNormalisation()
            return DiffusionCovariance(grid, variance, b.length_scale, b.n_iterations, norm,
                                       lx.CG(rtol=1e-10, atol=1e-10))  # fmt: skip
        return DiagonalCovariance(grid, variance)

    if case.model.kind == "shallow_water":
        velocity = b.velocity_variance if b.velocity_variance is not None else b.variance
        return BlockCovariance(SWState(one(b.variance), one(velocity), one(velocity)))
    return one(b.variance)


def make_solver(case: Case) -> GaussNewton:
    """Gauss-Newton settings of the case."""
    s = case.solver
    damping = (
        LevenbergMarquardt(s.initial, s.acceptance, s.max_damping) if s.kind == "levenberg_marquardt" else NoDamping()
    )
    return GaussNewton(damping, s.max_outer, s.cg_max_steps, s.cg_tol, s.gtol, s.ftol)


def make_operator(case: Case, grid: CartesianGrid, key: jax.Array):
    """Observation operator and the coordinates of its observed points."""
    net = case.observations.network
    component = "eta" if case.model.kind == "shallow_water" else None
    centres = np.stack([a.reshape(-1) for a in np.meshgrid(*grid.coords().values(), indexing="ij")], axis=-1)
    if net.kind == "random_fraction":
        cells = np.sort(np.asarray(jax.random.choice(key, grid.size, (int(net.fraction * grid.size),), replace=False)))
        return GriddedObservation(grid, cells, component), centres[cells]
    if net.kind == "regular":
        mask = np.zeros(grid.shape, bool)
        mask[(slice(None, None, net.spacing),) * grid.ndim] = True
        cells = np.flatnonzero(mask)
        return GriddedObservation(grid, cells, component), centres[cells]
    if net.points is not None:
        points = np.asarray(net.points, dtype=float)
    else:
        points = np.asarray(grid.origin) + np.asarray(jax.random.uniform(key, (net.count, grid.ndim))) * np.asarray(
            grid.lengths
        )
    return StationObservation(grid, points, component), points


def check(case: Case) -> None:
    """Construct the grid, model, B, solver and observation operator (no truth run): their own checks apply."""
    grid = make_grid(case)
    make_model(case, grid, spin_up=False)
    make_covariance(case, grid)
    make_solver(case)
    make_operator(case, grid, jax.random.PRNGKey(case.observations.seed))


def build(case: Case) -> Experiment:
    """Grid, model, truth, observations, background and solver of a validated case."""
    start = time.perf_counter()
    grid = make_grid(case)
    model, truth0 = make_model(case, grid)
    covariance = make_covariance(case, grid)
    k_net, k_twin = jax.random.split(jax.random.PRNGKey(case.observations.seed))
    operator, locations = make_operator(case, grid, k_net)
    n_steps = case.time.n_steps
    network = ObservationNetwork.every(operator, case.observations.every, n_steps, case.observations.noise)
    twin = twin_experiment(k_twin, model, truth0, n_steps, network, covariance)
    jax.block_until_ready(twin.truth)
    exp = Experiment(case, grid, model, covariance, make_solver(case), twin, locations, network.steps)
    exp.timings["build_s"] = time.perf_counter() - start
    return exp


def _rmse(a, b) -> float:
    """RMSE over every component of two states or trajectories."""
    sq = [np.sum((np.asarray(x) - np.asarray(y)) ** 2) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                       jax.tree_util.tree_leaves(b))]  # fmt: skip
    return float(np.sqrt(sum(sq) / sum(np.size(x) for x in jax.tree_util.tree_leaves(a))))


def _at(tree, index):
    return jax.tree_util.tree_map(lambda x: x[index], tree)


def _apply(operator, trajectory, steps) -> np.ndarray:
    return np.asarray(operator.apply_window(_at(trajectory, np.asarray(steps))))


def run(exp: Experiment) -> Outcome:
    """Solve the case: one strong-constraint window over time.n_steps, or cycled windows."""
    return _run_cycling(exp) if exp.case.cycling is not None else _run_window(exp)


def _run_window(exp: Experiment) -> Outcome:
    case, twin = exp.case, exp.twin
    n_steps = case.time.n_steps
    problem = StrongConstraint4DVar(exp.model, twin.background, exp.covariance, twin.observations, n_steps=n_steps)
    start = time.perf_counter()
    result = exp.solver.solve(problem)
    jax.block_until_ready(result.x0)
    exp.timings["solve_s"] = time.perf_counter() - start
    truth = twin.truth
    background = _rollout(exp.model, twin.background, n_steps)
    analysis = _rollout(exp.model, result.x0, n_steps)
    obs = twin.observations[0]
    d = result.diagnostics
    k = int(d.n_outer) + 1
    names = ("cost", "cost_background", "cost_observation", "gradient_norm", "cg_iterations", "accepted", "damping")
    diagnostics = {name: np.asarray(getattr(d, name))[:k] for name in names}
    values = np.asarray(obs.values)
    extra = {}
    innovation = values - _apply(obs.operator, background, exp.obs_steps)
    residual = values - _apply(obs.operator, analysis, exp.obs_steps)
    for c, roles in _components(truth=truth, background=background, analysis=analysis).items():
        extra[f"background_rmse_{c}"] = _rmse(roles["background"][0], roles["truth"][0])
        extra[f"analysis_rmse_{c}"] = _rmse(roles["analysis"][0], roles["truth"][0])
    metrics = {
        "mode": "window",
        "background_rmse": _rmse(_primary(background)[0], _primary(truth)[0]),
        "analysis_rmse": _rmse(_primary(analysis)[0], _primary(truth)[0]),
        "background_trajectory_rmse": _rmse(_primary(background), _primary(truth)),
        "analysis_trajectory_rmse": _rmse(_primary(analysis), _primary(truth)),
        "observation_noise": case.observations.noise,
        "n_observations": int(obs.report.n_valid),
        "innovation_rms": float(np.sqrt(np.mean(innovation**2))),
        "analysis_residual_rms": float(np.sqrt(np.mean(residual**2))),
        "converged": bool(result.converged),
        "reason": result.message(),
        "outer_iterations": int(d.n_outer),
        "cg_iterations": int(np.sum(diagnostics["cg_iterations"])),
        "final_cost": float(diagnostics["cost"][-1]),
        "initial_cost": float(diagnostics["cost"][0]),
        **extra,
    }
    steps = np.arange(n_steps + 1)
    return Outcome(_primary(truth), _primary(background), _primary(analysis), steps, values, innovation, residual,
                   diagnostics, metrics, _components(truth=truth, background=background, analysis=analysis))  # fmt: skip


def _stitched(exp: Experiment, starts_states) -> np.ndarray:
    """One trajectory over the experiment: window w's state run until window w + 1 starts (the last one to the end)."""
    c, n_steps = exp.case.cycling, exp.case.time.n_steps
    pieces = []
    for w in range(c.n_windows):
        last = w == c.n_windows - 1
        length = n_steps - w * c.shift if last else c.shift
        run = _rollout(exp.model, _at(starts_states, w), int(length))
        pieces.append(_at(run, slice(0, length + last)))
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *pieces)


def _run_cycling(exp: Experiment) -> Outcome:
    case, twin = exp.case, exp.twin
    c = case.cycling
    cycling = Cycling(c.window, c.shift, c.n_windows, exp.solver)
    start = time.perf_counter()
    result = cycling.run(exp.model, twin.background, exp.covariance, twin.observations, truth=twin.truth)
    jax.block_until_ready(result.analyses)
    exp.timings["solve_s"] = time.perf_counter() - start
    truth = twin.truth
    starts = np.arange(c.n_windows) * c.shift
    d = result.diagnostics
    names = ("background_rmse", "analysis_rmse", "free_run_rmse", "innovation_mean", "innovation_variance",
             "innovation_chi2", "analysis_chi2", "n_observations", "converged", "reason", "n_outer", "cg_iterations")
    diagnostics = {name: np.asarray(getattr(d, name)) for name in names}
    obs = twin.observations[0]
    values = np.asarray(obs.values)
    # departures along the cycle: each window's background / analysis forecast until the next window starts
    innovation = values - _apply(obs.operator, _stitched(exp, result.backgrounds), exp.obs_steps)
    analysis_run = _stitched(exp, result.analyses)
    residual = values - _apply(obs.operator, analysis_run, exp.obs_steps)
    summary = result.summary()
    truth_at = _primary(truth)[starts]

    def mean_rmse(states) -> float:  # main field (shallow water: η), averaged over windows
        return float(np.mean([_rmse(x, t) for x, t in zip(_primary(states), truth_at)]))

    free = _primary(_rollout(exp.model, twin.background, int(starts[-1])))[starts]
    metrics = {
        "mode": "cycling",
        "background_rmse": mean_rmse(result.backgrounds),
        "analysis_rmse": mean_rmse(result.analyses),
        "free_run_rmse": float(np.mean([_rmse(x, t) for x, t in zip(free, truth_at)])),
        "observation_noise": case.observations.noise,
        "n_observations": int(np.sum(diagnostics["n_observations"])),
        "innovation_chi2": summary["innovation_chi2"],
        "analysis_chi2": summary["analysis_chi2"],
        "innovation_rms": float(np.sqrt(np.mean(innovation**2))),
        "analysis_residual_rms": float(np.sqrt(np.mean(residual**2))),
        "converged": bool(np.all(diagnostics["converged"])),
        "converged_fraction": summary["converged_fraction"],
        "reason": "; ".join(sorted({REASONS[int(r)] for r in diagnostics["reason"]})),
        "outer_iterations": int(np.sum(diagnostics["n_outer"])),
        "cg_iterations": int(np.sum(diagnostics["cg_iterations"])),
        "n_windows": c.n_windows,
    }
    return Outcome(_primary(truth), _primary(result.backgrounds), _primary(result.analyses), starts, values,
                   innovation, residual, diagnostics, metrics,
                   _components(truth=truth, background=result.backgrounds, analysis=result.analyses))  # fmt: skip
