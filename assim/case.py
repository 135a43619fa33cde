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

from assim.config import Case, grid_length
from assim.errors import ConfigError
from assim.covariance import (
    AbstractBackgroundCovariance,
    BlockCovariance,
    DiagonalCovariance,
    SpectralGaussianCovariance,
)
from assim.cost import StrongConstraint4DVar
from assim.weak_constraint import EveryStep, SubWindows, WeakConstraint4DVar
from assim.cycling import Cycling
from assim.diffusion_covariance import DiffusionCovariance, ExactNormalisation, RandomisedNormalisation
from assim.gauss_newton import REASONS, GaussNewton, LevenbergMarquardt, NoDamping
from assim.observations import GriddedObservation, StationObservation
from assim.twin import ObservationNetwork, TwinExperiment, _normal_like, twin_experiment
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
    truth_model: AbstractModel | None = None  # the model that ran the truth, where [truth] sets other parameters
    files: dict = field(default_factory=dict)  # extra datasets written next to analysis.nc (name → xarray.Dataset)


@dataclass
class Outcome:
    """Plain-array results of a run (numpy), ready to be written."""

    truth: np.ndarray | None  # (time, *grid); shallow water: η; None for a case with observations.file
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
    boundary = Periodic() if g.boundary == "periodic" else Neumann()
    if g.file is not None:  # cell centres from the file's x (and y) coordinates
        from assim.grid_file import cartesian_grid_from_file

        return cartesian_grid_from_file(g.file, g.ndim, boundary)
    if case.model.kind == "lorenz96":
        return CartesianGrid((g.n,), (float(g.n),), Periodic(), origin=(-0.5,))  # centres at 0 … n−1
    return CartesianGrid((g.n,) * g.ndim, (grid_length(g),) * g.ndim, boundary)


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
    wind = tuple(jnp.asarray(w) for w in wind)  # `speed` is the model's wind_scale (a discoverable parameter)
    advection = Centred() if m.advection == "centred" else Upwind()
    model = AdvectionDiffusion(grid, wind, m.kappa, dt, scheme, wind_scale=m.speed, advection_scheme=advection)
    return model, truth0


# ---------------------------------------------------------------- physical parameters by name ([discover], [truth])
MAX_PARAMETER_SIZE = 64


def model_parameters(model: AbstractModel) -> dict[str, jax.Array]:
    """The model's physical parameters by field name: its array fields of at most MAX_PARAMETER_SIZE values."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(model):
        value = getattr(model, f.name, None)
        if isinstance(value, (jax.Array, np.ndarray)) and np.size(value) <= MAX_PARAMETER_SIZE:
            out[f.name] = value
    return out


def check_parameter_names(model: AbstractModel, names, section: str, kind: str) -> None:
    """ConfigError naming the first `section.NAME` that is not a parameter of the model, and the valid names."""
    known = model_parameters(model)
    for name in names:
        if name not in known:
            raise ConfigError(f"{section}.{name}: the {kind} model has no parameter {name!r}; "
                              f"use one of {sorted(known)}")  # fmt: skip


def with_parameters(model: AbstractModel, values: dict[str, float]) -> AbstractModel:
    """The model with the named parameters set to the given values (broadcast to each field's shape)."""
    names = tuple(values)
    current = model_parameters(model)
    new = tuple(jnp.broadcast_to(jnp.asarray(values[n], dtype=float), jnp.shape(current[n])) for n in names)
    return eqx.tree_at(lambda m: tuple(getattr(m, n) for n in names), model, new)


def truth_model(case: Case, model: AbstractModel) -> AbstractModel:
    """The model that runs the truth: the case's model, with [truth.parameters] applied (model error)."""
    if case.truth is None:
        return model
    check_parameter_names(model, case.truth.parameters, "truth.parameters", case.model.kind)
    return with_parameters(model, case.truth.parameters)


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


def make_model_error_covariance(case: Case, grid: CartesianGrid) -> AbstractBackgroundCovariance:
    """Q of the case's [weak_constraint]: a B-like covariance of the error of one model step."""
    return make_covariance(case.model_copy(update={"background": case.weak_constraint.q}), grid)


def make_timing(case: Case):
    """Which model-error control forces each step ([weak_constraint.timing])."""
    t = case.weak_constraint.timing
    return SubWindows(t.length) if t.kind == "subwindows" else EveryStep()


def make_solver(case: Case, control=None) -> GaussNewton:
    """Gauss-Newton settings of the case; kind "unrolled": the trained solver for controls shaped like `control`."""
    s = case.solver
    if s.kind == "unrolled":  # control None (no twin yet): only an existing checkpoint's header is checked
        from assim.trained_solver import load_trained

        return load_trained(s, control)
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
    if case.model.kind == "real_fields":  # grid, model, B and network come from the data (assim.real_case)
        from assim import real_case

        model = real_case.check(case)
        truth_model(case, model)
        if case.discover is not None:
            check_parameter_names(model, case.discover.parameters, "discover.parameters", case.model.kind)
        make_solver(case)
        return
    if case.observations.file is not None:  # reads the grid, observation and background files (no truth run)
        from assim import file_case

        file_case.check(case)
        return
    grid = make_grid(case)
    model, _ = make_model(case, grid, spin_up=False)
    truth_model(case, model)
    if case.discover is not None:
        check_parameter_names(model, case.discover.parameters, "discover.parameters", case.model.kind)
    if case.weak_constraint is not None:
        make_model_error_covariance(case, grid)
    make_covariance(case, grid)
    make_solver(case)
    make_operator(case, grid, jax.random.PRNGKey(case.observations.seed))


def build(case: Case, sample: int = 0) -> Experiment:
    """Grid, model, truth, observations, background and solver of window `sample` of a validated case.

    Sample 0 is the case's own window; sample i > 0 (training windows) keeps the observation network and draws
    its own truth (initial state + a draw from B), background and observation noise from fold_in(seed key, i).
    real_fields: sample i ≥ 1 starts from the i-th winter of the data (assim.real_case).
    """
    if case.model.kind == "real_fields":
        from assim import real_case

        return real_case.build(case, sample)
    if case.observations.file is not None:  # observations (and x_b) from files: no truth, no twin
        from assim import file_case

        return file_case.build(case, sample)
    start = time.perf_counter()
    grid = make_grid(case)
    model, truth0 = make_model(case, grid)
    covariance = make_covariance(case, grid)
    k_net, k_twin = jax.random.split(jax.random.PRNGKey(case.observations.seed))
    operator, locations = make_operator(case, grid, k_net)
    n_steps = case.time.n_steps
    network = ObservationNetwork.every(operator, case.observations.every, n_steps, case.observations.noise)
    true_model = truth_model(case, model)
    if sample:
        truth0, k_twin = sample_window(case, true_model, truth0, covariance, sample)
    twin = twin_experiment(k_twin, true_model, truth0, n_steps, network, covariance)
    jax.block_until_ready(twin.truth)
    exp = Experiment(case, grid, model, covariance, make_solver(case, twin.background), twin, locations, network.steps,
                     truth_model=true_model)  # fmt: skip
    exp.timings["build_s"] = time.perf_counter() - start
    return exp


def sample_window(case: Case, model: AbstractModel, truth0, covariance, sample: int):
    """(true initial state, twin key) of training sample `sample` > 0: x^t_0 + B^{1/2} ξ (Lorenz-96: spun up again)."""
    if int(sample) != sample or sample < 0:
        raise ConfigError(f"window sample must be an integer ≥ 0 (got {sample})")
    k_truth, k_twin = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(case.observations.seed), sample))
    draw = covariance.prepare().sqrt(_normal_like(k_truth, truth0))
    truth0 = jax.tree_util.tree_map(jnp.add, truth0, draw)
    if case.model.kind == "lorenz96" and case.model.spin_up:
        truth0 = _integrate(model, truth0, case.model.spin_up)  # back onto the attractor
    return truth0, k_twin


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


_trajectory = eqx.filter_jit(lambda problem, control: problem.trajectory(control))


def _run_window(exp: Experiment) -> Outcome:
    case, twin = exp.case, exp.twin
    n_steps = case.time.n_steps
    problem = StrongConstraint4DVar(exp.model, twin.background, exp.covariance, twin.observations, n_steps=n_steps)
    weak = case.weak_constraint
    extra = {}
    if weak is not None:
        strong = problem
        problem = WeakConstraint4DVar(exp.model, twin.background, exp.covariance,
                                      make_model_error_covariance(case, exp.grid), twin.observations,
                                      n_steps=n_steps, timing=make_timing(case))  # fmt: skip
    start = time.perf_counter()
    result = exp.solver.solve(problem)
    jax.block_until_ready(result.x0)
    exp.timings["solve_s"] = time.perf_counter() - start
    background = _rollout(exp.model, twin.background, n_steps)
    if weak is None:
        analysis = _rollout(exp.model, result.x0, n_steps)
    else:
        analysis = _trajectory(problem, result.v)  # forced by the estimated model errors
        eta = problem.model_errors(result.v)
        extra = {"weak_constraint": True, "model_error_controls": int(problem.n_model_errors),
                 "model_error_rms": _rmse(eta, jax.tree_util.tree_map(jnp.zeros_like, eta))}  # fmt: skip
        if weak.compare_strong:
            start = time.perf_counter()
            fit = exp.solver.solve(strong)
            strong_run = _rollout(exp.model, fit.x0, n_steps)
            exp.timings["strong_solve_s"] = time.perf_counter() - start
            extra.update({
                "strong_analysis_rmse": _rmse(_primary(strong_run)[0], _primary(twin.truth)[0]),
                "strong_analysis_trajectory_rmse": _rmse(_primary(strong_run), _primary(twin.truth)),
                "strong_converged": bool(fit.converged),
                "strong_final_cost": float(np.asarray(fit.diagnostics.cost)[int(fit.diagnostics.n_outer)]),
            })  # fmt: skip
    return window_outcome(exp, result, background, analysis, extra)


def window_outcome(exp: Experiment, result, background, analysis, extra: dict) -> Outcome:
    """Outcome of one solved window: trajectories, departures, solver diagnostics and metrics (plus `extra`)."""
    case, twin = exp.case, exp.twin
    n_steps = case.time.n_steps
    truth = twin.truth
    obs = twin.observations[0]
    d = result.diagnostics
    k = int(d.n_outer) + 1
    names = ("cost", "cost_background", "cost_observation", "gradient_norm", "cg_iterations", "accepted", "damping")
    diagnostics = {name: np.asarray(getattr(d, name))[:k] for name in names}
    values = np.where(np.asarray(obs.mask), np.asarray(obs.values), np.nan)  # masked: missing, not 0
    extra = dict(extra)
    innovation = values - _apply(obs.operator, background, exp.obs_steps)
    residual = values - _apply(obs.operator, analysis, exp.obs_steps)
    errors_against_truth = {}
    if truth is not None:  # a case with observations.file has no truth: departures and χ² only
        for c, roles in _components(truth=truth, background=background, analysis=analysis).items():
            extra[f"background_rmse_{c}"] = _rmse(roles["background"][0], roles["truth"][0])
            extra[f"analysis_rmse_{c}"] = _rmse(roles["analysis"][0], roles["truth"][0])
        errors_against_truth = {
            "background_rmse": _rmse(_primary(background)[0], _primary(truth)[0]),
            "analysis_rmse": _rmse(_primary(analysis)[0], _primary(truth)[0]),
            "background_trajectory_rmse": _rmse(_primary(background), _primary(truth)),
            "analysis_trajectory_rmse": _rmse(_primary(analysis), _primary(truth)),
        }
    valid = np.asarray(obs.mask)
    sigma = np.asarray(obs.error.sigma)
    metrics = {
        "mode": "window",
        **errors_against_truth,
        "observation_noise": (case.observations.noise if case.observations.noise is not None
                              else float(np.sqrt(np.mean(sigma[valid] ** 2)))),  # a file's errors: their RMS
        "n_observations": int(obs.report.n_valid),
        "n_observations_masked": int(np.sum(~valid)),
        "innovation_rms": float(np.sqrt(np.nanmean(innovation**2))),
        "analysis_residual_rms": float(np.sqrt(np.nanmean(residual**2))),
        "innovation_chi2": float(np.sum((innovation / sigma)[valid] ** 2) / max(int(valid.sum()), 1)),  # (d/σ)²
        "residual_chi2": float(np.sum((residual / sigma)[valid] ** 2) / max(int(valid.sum()), 1)),
        "analysis_chi2": 2 * float(diagnostics["cost"][-1]) / max(int(valid.sum()), 1),  # 2 J(x_a) / p
        "converged": bool(result.converged),
        "reason": result.message(),
        "outer_iterations": int(d.n_outer),
        "cg_iterations": int(np.sum(diagnostics["cg_iterations"])),
        "final_cost": float(diagnostics["cost"][-1]),
        "initial_cost": float(diagnostics["cost"][0]),
        **extra,
    }
    steps = np.arange(n_steps + 1)
    components = _components(truth=truth, background=background, analysis=analysis) if truth is not None else {}
    return Outcome(None if truth is None else _primary(truth), _primary(background), _primary(analysis), steps, values,
                   innovation, residual, diagnostics, metrics, components)  # fmt: skip


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
