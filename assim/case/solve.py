"""Solve a built case: one strong- or weak-constraint window, or cycled windows, into an `Outcome` of numpy arrays.

The `Outcome` holds the trajectories (NaN on masked cells), departures, solver diagnostics and the
metrics that `assim.io.netcdf` writes: RMSEs against the truth where there is one (sea cells only),
innovation and residual χ², convergence and iteration counts.
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from assim.case.experiment import (
    Experiment,
    Outcome,
    _components,
    _primary,
    make_model_error_covariance,
    make_timing,
)
from assim.problems.analysis import _trajectory as _trajectory  # noqa: F401  (for assim.case.discover)
from assim.problems.analysis import analyse
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.weak_constraint import WeakConstraint4DVar
from assim.solvers.cycling import Cycling
from assim.solvers.gauss_newton import REASONS
from models.rollout import rollout

_rollout = eqx.filter_jit(rollout)  # n_steps (a Python int) is static


def _rmse(a, b) -> float:
    """RMSE over every component of two states or trajectories."""
    sq = [np.sum((np.asarray(x) - np.asarray(y)) ** 2) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                       jax.tree_util.tree_leaves(b))]  # fmt: skip
    return float(np.sqrt(sum(sq) / sum(np.size(x) for x in jax.tree_util.tree_leaves(a))))


def _at(tree, index):
    return jax.tree_util.tree_map(lambda x: x[index], tree)


def _apply(operator, trajectory, steps) -> np.ndarray:
    return np.asarray(operator.apply_window(_at(trajectory, np.asarray(steps))))


def departures(exp: Experiment, background, analysis) -> dict[str, np.ndarray]:
    """y, y − H(background), y − H(analysis), validity, σ and component of every observation (masked: NaN).

    One set: arrays on (obs_time, obs) as the set holds them; several sets: one row per observation, set by
    set (time-major), in the order of `assim.io.observation_files.observation_rows`."""
    sets = exp.twin.observations
    parts = []
    for obs in sets:
        steps = exp.obs_steps if len(sets) == 1 else obs.steps
        valid = np.asarray(obs.mask)
        values = np.where(valid, np.asarray(obs.values), np.nan)  # masked: missing, not 0
        component = "" if obs.operator.component is None else str(obs.operator.component)
        parts.append({"values": values, "innovation": values - _apply(obs.operator, background, steps),
                      "residual": values - _apply(obs.operator, analysis, steps), "valid": valid,
                      "sigma": np.broadcast_to(np.asarray(obs.error.sigma), valid.shape),
                      "component": np.full(valid.shape, component, dtype=object)})  # fmt: skip
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([np.reshape(p[k], -1) for p in parts]) for k in parts[0]}


def _pooled(dep: dict[str, np.ndarray], cost: float | None = None, suffix: str = "", where=None) -> dict:
    """Counts, RMS and χ² of the departures over every observation (or those `where` is true), keys + `suffix`."""
    valid = dep["valid"] if where is None else dep["valid"] & where
    p = max(int(valid.sum()), 1)
    sigma = dep["sigma"]
    out = {
        f"n_observations_masked{suffix}": int(np.sum(~dep["valid"] if where is None else ~dep["valid"] & where)),
        f"innovation_rms{suffix}": float(np.sqrt(np.mean(dep["innovation"][valid] ** 2))) if valid.any() else np.nan,
        f"analysis_residual_rms{suffix}": float(np.sqrt(np.mean(dep["residual"][valid] ** 2)))
        if valid.any()
        else np.nan,
        f"innovation_chi2{suffix}": float(np.sum((dep["innovation"] / sigma)[valid] ** 2) / p),  # (d/σ)²
        f"residual_chi2{suffix}": float(np.sum((dep["residual"] / sigma)[valid] ** 2) / p),
    }
    if where is not None:
        out[f"n_observations{suffix}"] = int(valid.sum())
    if cost is not None:
        out["analysis_chi2"] = 2 * cost / p  # 2 J(x_a) / p
    return out


def _per_component(dep: dict[str, np.ndarray]) -> dict:
    """Pooled metrics of each observed component, where the observations see several (e.g. innovation_chi2_u)."""
    names = list(dict.fromkeys(np.reshape(dep["component"], -1)))
    if len(names) < 2:
        return {}
    out = {}
    for c in names:
        out.update(_pooled(dep, suffix=f"_{c or 'state'}", where=dep["component"] == c))
    return out


def run(exp: Experiment) -> Outcome:
    """Solve the case: one strong-constraint window over time.n_steps, or cycled windows."""
    return _run_cycling(exp) if exp.case.cycling is not None else _run_window(exp)


def _run_window(exp: Experiment) -> Outcome:
    case, twin = exp.case, exp.twin
    n_steps = case.time.n_steps
    strong = StrongConstraint4DVar(exp.model, twin.background, exp.covariance, twin.observations, n_steps=n_steps)
    weak = case.weak_constraint
    extra = {}
    weak_problem = None if weak is None else WeakConstraint4DVar(
        exp.model, twin.background, exp.covariance, make_model_error_covariance(case, exp.grid), twin.observations,
        n_steps=n_steps, timing=make_timing(case))  # fmt: skip
    window = analyse(exp.solver, strong if weak_problem is None else weak_problem)
    result, background, analysis = window.result, window.background, window.analysis
    exp.timings["solve_s"] = window.solve_s
    if weak is not None and weak_problem is not None:
        eta = weak_problem.model_errors(result.v)
        extra = {"weak_constraint": True, "model_error_controls": int(weak_problem.n_model_errors),
                 "model_error_rms": _rmse(eta, jax.tree_util.tree_map(jnp.zeros_like, eta))}  # fmt: skip
        if weak.compare_strong:
            start = time.perf_counter()
            strong_window = analyse(exp.solver, strong)
            fit, strong_run = strong_window.result, strong_window.analysis
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
    d = result.diagnostics
    k = int(d.n_outer) + 1
    names = ("cost", "cost_background", "cost_observation", "gradient_norm", "cg_iterations", "accepted", "damping")
    diagnostics = {name: np.asarray(getattr(d, name))[:k] for name in names}
    dep = departures(exp, background, analysis)  # every observation set, pooled
    values, innovation, residual = dep["values"], dep["innovation"], dep["residual"]
    extra = dict(extra)
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
    valid, sigma = dep["valid"], dep["sigma"]
    pooled = _pooled(dep, cost=float(diagnostics["cost"][-1]))
    metrics = {
        "mode": "window",
        **errors_against_truth,
        "observation_noise": (
            case.observations.noise
            if case.observations.noise is not None
            else float(np.sqrt(np.mean(sigma[valid] ** 2)))
        ),  # a file's errors: their RMS
        "n_observations": sum(int(obs.report.n_valid) for obs in twin.observations),
        "n_observations_masked": pooled.pop("n_observations_masked"),
        "innovation_rms": pooled.pop("innovation_rms"),
        "analysis_residual_rms": pooled.pop("analysis_residual_rms"),
        "innovation_chi2": pooled.pop("innovation_chi2"),
        "residual_chi2": pooled.pop("residual_chi2"),
        "analysis_chi2": pooled.pop("analysis_chi2"),
        **({"observation_sets": len(twin.observations)} if len(twin.observations) > 1 else {}),
        **_per_component(dep),
        "converged": bool(result.converged),
        "reason": result.message(),
        "outer_iterations": int(d.n_outer),
        "cg_iterations": int(np.sum(diagnostics["cg_iterations"])),
        "final_cost": float(diagnostics["cost"][-1]),
        "initial_cost": float(diagnostics["cost"][0]),
        **(result.metrics() if hasattr(result, "metrics") else {}),  # a certified learned analysis: its certificate
        **extra,
    }
    steps = np.arange(n_steps + 1)
    roles = {"background": background, "analysis": analysis}
    if truth is not None:
        roles = {"truth": truth, **roles}
    components = _components(**roles)  # shallow water: u and v (without a truth: background and analysis)

    def on_domain(x):  # NaN on masked cells
        return x if x is None or mask is None else np.where(mask, x, np.nan)

    return Outcome(on_domain(None if truth is None else _primary(truth)), on_domain(_primary(background)),
                   on_domain(_primary(analysis)), steps, values, innovation, residual, diagnostics, metrics,
                   components)  # fmt: skip


def _stitched(exp: Experiment, starts_states) -> np.ndarray:
    """One trajectory over the experiment: window w's state run until window w + 1 starts (the last one to the end)."""
    c, n_steps = exp.case.cycling, exp.case.time.n_steps
    assert c is not None, "a cycling case"
    pieces = []
    for w in range(c.n_windows):
        last = w == c.n_windows - 1
        length = n_steps - w * c.shift if last else c.shift
        run = exp.model.check_result(
            _rollout(exp.model, _at(starts_states, w), int(length)), f"the forecast from window {w}"
        )
        pieces.append(_at(run, slice(0, length + last)))
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *pieces)


def _run_cycling(exp: Experiment) -> Outcome:
    case, twin = exp.case, exp.twin
    c = case.cycling
    assert c is not None, "a cycling case"
    cycling = Cycling(c.window, c.shift, c.n_windows, exp.solver, observation_use=c.build())
    start = time.perf_counter()
    result = cycling.run(exp.model, twin.background, exp.covariance, twin.observations, truth=twin.truth)
    jax.block_until_ready(result.analyses)
    exp.timings["solve_s"] = time.perf_counter() - start
    truth = twin.truth
    starts = np.arange(c.n_windows) * c.shift
    filter_steps = np.asarray(result.filter_steps)
    d = result.diagnostics
    names = ("background_rmse", "analysis_rmse", "filter_background_rmse", "filter_analysis_rmse", "free_run_rmse",
             "innovation_mean", "innovation_variance", "innovation_chi2", "analysis_chi2", "n_observations",
             "observation_weight", "converged", "reason", "n_outer", "cg_iterations")  # fmt: skip
    diagnostics = {name: np.asarray(getattr(d, name)) for name in names if getattr(d, name) is not None}
    # departures along the cycle (every observation set): each window's background / analysis forecast until
    # the next window starts
    dep = departures(exp, _stitched(exp, result.backgrounds), _stitched(exp, result.analyses))
    values, innovation, residual = dep["values"], dep["innovation"], dep["residual"]
    pooled = _pooled(dep)
    summary = result.summary()

    def mean_rmse(states, steps) -> float:  # main field (shallow water: η), averaged over windows
        return float(np.mean([_rmse(x, t) for x, t in zip(_primary(states), _primary(truth)[steps])]))

    free = _primary(exp.model.check_result(_rollout(exp.model, twin.background, int(starts[-1])), "the free run"))[
        starts
    ]
    metrics = {
        "mode": "cycling",
        "observation_use": c.observation_use,
        "background_rmse": mean_rmse(result.backgrounds, starts),
        "analysis_rmse": mean_rmse(result.analyses, starts),
        "filter_background_rmse": mean_rmse(result.filter_backgrounds, filter_steps),
        "filter_analysis_rmse": mean_rmse(result.filter_analyses, filter_steps),
        "free_run_rmse": float(np.mean([_rmse(x, t) for x, t in zip(free, _primary(truth)[starts])])),
        "observation_noise": case.observations.noise,
        "n_observations": int(np.sum(diagnostics["n_observations"])),
        "innovation_chi2": summary["innovation_chi2"],
        "analysis_chi2": summary["analysis_chi2"],
        "innovation_rms": pooled["innovation_rms"],
        "analysis_residual_rms": pooled["analysis_residual_rms"],
        **_per_component(dep),
        "converged": bool(np.all(diagnostics["converged"])),
        "converged_fraction": summary["converged_fraction"],
        "n_not_converged": summary["n_not_converged"],
        "windows_not_converged": [int(w) for w in d.not_converged()],
        "reason": "; ".join(sorted({_message(exp.solver, int(r)) for r in diagnostics["reason"]})),
        "outer_iterations": int(np.sum(diagnostics["n_outer"])),
        "cg_iterations": int(np.sum(diagnostics["cg_iterations"])),
        "n_windows": c.n_windows,
    }
    filtered = {"steps": filter_steps, "background": _primary(result.filter_backgrounds),
                "analysis": _primary(result.filter_analyses)}  # fmt: skip
    return Outcome(_primary(truth), _primary(result.backgrounds), _primary(result.analyses), starts, values,
                   innovation, residual, diagnostics, metrics,
                   _components(truth=truth, background=result.backgrounds, analysis=result.analyses),
                   filtered)  # fmt: skip


def _message(solver, reason: int) -> str:
    """Why a window's solver stopped (a trained solver runs its fixed layers: no convergence test)."""
    from assim.learned.trained_solver import TrainedSolver

    return "ran the trained layers (no convergence test)" if isinstance(solver, TrainedSolver) else REASONS[reason]
