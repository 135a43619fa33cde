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
import numpy as np

from assim.config import Case
from assim.model_parameters import (  # noqa: F401  (re-exported for the commands)
    MAX_PARAMETER_SIZE,
    check_parameter_names,
    model_parameters,
    truth_model,
    with_parameters,
)
from assim.errors import ConfigError
from assim.covariance import (
    AbstractBackgroundCovariance,
)
from assim.cost import StrongConstraint4DVar
from assim.weak_constraint import WeakConstraint4DVar
from assim.cycling import Cycling
from assim.gauss_newton import REASONS, GaussNewton
from assim.twin import ObservationNetwork, TwinExperiment, _normal_like, twin_experiment
from models import CartesianGrid, Neumann, Periodic
from models.base import AbstractModel
from models.rollout import integrate, rollout
from models.shallow_water import SWState
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
    state_attrs: dict = field(default_factory=dict)  # the state variable's name, units, standard_name ([data] cases)
    provenance: dict = field(default_factory=dict)  # where the data came from and how it reached the grid
    start: object = None  # np.datetime64 of the window start, where the data have dates


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
    """The case's Cartesian grid: grid.file's coordinates, or the model's grid of the [grid] table."""
    g = case.grid
    if g.file is not None:  # cell centres from the file's x (and y) coordinates
        from assim.grid_file import cartesian_grid_from_file

        return cartesian_grid_from_file(g.file, g.ndim, Periodic() if g.boundary == "periodic" else Neumann())
    return case.model.grid_for(g)


def make_model(case: Case, grid: CartesianGrid, spin_up: bool = True) -> tuple[AbstractModel, jax.Array]:
    """The model and the truth's initial state (lorenz96: spun up unless `spin_up` is False)."""
    return case.model.build(grid, case.time.dt, spin_up)


def make_covariance(case: Case, grid: CartesianGrid) -> AbstractBackgroundCovariance:
    """B of the case: the [background] kind for each field of the model's state."""
    return case.model.covariance(case.background, grid)


def make_model_error_covariance(case: Case, grid: CartesianGrid) -> AbstractBackgroundCovariance:
    """Q of the case's [weak_constraint]: a B-like covariance of the error of one model step."""
    return make_covariance(case.model_copy(update={"background": case.weak_constraint.q}), grid)


def make_timing(case: Case):
    """Which model-error control forces each step ([weak_constraint.timing])."""
    return case.weak_constraint.timing.build()


def make_solver(case: Case, control=None, shape=None) -> GaussNewton:
    """The case's solver for controls shaped like `control` (None: validation, for controls of grid shape `shape`)."""
    key = jax.random.fold_in(jax.random.PRNGKey(case.observations.seed), 104729)  # preconditioner probes
    return case.solver.build(control, key, shape)


def make_operator(case: Case, grid: CartesianGrid, key: jax.Array):
    """Observation operator and the coordinates of its observed points."""
    return case.observations.network.build(grid, key, case.model.component)


def check(case: Case) -> None:
    """Construct the grid, model, B, solver and observation operator (no truth run): their own checks apply."""
    if case.data is not None:  # grid, model fields, B and network come from the data (assim.data_case)
        from assim import data_case

        model = data_case.check(case)
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
    make_solver(case, shape=grid.shape)
    make_operator(case, grid, jax.random.PRNGKey(case.observations.seed))


def build(case: Case, sample: int = 0) -> Experiment:
    """Grid, model, truth, observations, background and solver of window `sample` of a validated case.

    Sample 0 is the case's own window; sample i > 0 (training windows) keeps the observation network and draws
    its own truth (initial state + a draw from B), background and observation noise from fold_in(seed key, i).
    [data]: sample i ≥ 1 starts from the i-th sample of data.samples (assim.data_case).
    """
    if case.data is not None:
        from assim import data_case

        return data_case.build(case, sample)
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
    draw = covariance.prepare().sqrt(_normal_like(k_truth, covariance.zero_control(truth0)))
    truth0 = jax.tree_util.tree_map(jnp.add, truth0, draw)
    return case.model.resample(model, truth0), k_twin  # lorenz96: back onto the attractor


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
    mask = exp.grid.mask  # errors at active cells only; masked cells hold NaN in the outputs
    rmse = _rmse if mask is None else (lambda a, b: _rmse(np.asarray(a)[..., mask], np.asarray(b)[..., mask]))
    if truth is not None:  # a case with observations.file has no truth: departures and χ² only
        for c, roles in _components(truth=truth, background=background, analysis=analysis).items():
            extra[f"background_rmse_{c}"] = _rmse(roles["background"][0], roles["truth"][0])
            extra[f"analysis_rmse_{c}"] = _rmse(roles["analysis"][0], roles["truth"][0])
        errors_against_truth = {
            "background_rmse": rmse(_primary(background)[0], _primary(truth)[0]),
            "analysis_rmse": rmse(_primary(analysis)[0], _primary(truth)[0]),
            "background_trajectory_rmse": rmse(_primary(background), _primary(truth)),
            "analysis_trajectory_rmse": rmse(_primary(analysis), _primary(truth)),
        }
        if mask is not None:
            extra["masked_cells"] = int(np.sum(~mask))
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

    def on_domain(x):  # NaN on masked cells
        return x if x is None or mask is None else np.where(mask, x, np.nan)

    return Outcome(on_domain(None if truth is None else _primary(truth)), on_domain(_primary(background)),
                   on_domain(_primary(analysis)), steps, values, innovation, residual, diagnostics, metrics,
                   components)  # fmt: skip


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
