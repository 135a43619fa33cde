"""Parameter discovery of a case: joint state–parameter 4D-Var, posterior std from the Gauss-Newton Hessian.

`discover(exp)` solves `ParameterControl4DVar` for the parameters named in the case's
[discover] table (model field names, each with a Gaussian or log-normal prior), then the
Laplace posterior (`parameter_posterior`: matrix-free CG solves with H = J_rᵀJ_r). The
truth of a twin is the value of each parameter in the model that ran the truth.
`discover_case(path, ...)` is `assim discover`: it writes discovery.json, discovery.nc,
parameters.png (and the state/convergence figures) and summary.md, all atomically.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import lineax as lx
import numpy as np
import xarray as xr

from assim.case import build as case_module
from assim.case.config import Case, load_case_for_outputs
from assim.case.experiment import Experiment, Outcome
from assim.case.memory import preflight
from assim.case.parameters import check_parameter_names, model_parameters
from assim.case.schema import DiscoverConfig
from assim.case.solve import _trajectory, window_outcome
from assim.errors import ConfigError
from assim.problems.identifiability import UNCONSTRAINED_THRESHOLD, identifiability, pattern_rms
from assim.problems.parameter_control import (
    ParameterControl4DVar,
    parameter_posterior,
)


@dataclass
class Discovery:
    """Result of a discovery run: the state outcome and one record per parameter (plain numbers)."""

    outcome: Outcome
    parameters: dict[str, dict]  # name → prior, estimate, std, truth, z-score …
    correlation: np.ndarray  # posterior correlation of the parameters (in `parameters` order)
    convergence: dict
    identifiability: dict | None = None  # Schur / block eigenvalues, threshold, estimators (plain numbers)


@functools.lru_cache(maxsize=None)
def _selector(names: tuple[str, ...]):
    """`where` of the named model fields: one function per set of names, so that jit caches across runs."""
    return lambda m: tuple(getattr(m, n) for n in names)


def _prior(config):
    return config.build()


def _prior_summary(config) -> dict:
    """Prior central value, std of θ and its 68 % interval (log-normal: the median and exact quantiles)."""
    return config.summary()


def _check(case: Case) -> DiscoverConfig:
    """The case's [discover] table, after checking that the case is one discovery can run."""
    if case.discover is None:
        example = "--set 'discover.parameters.kappa={kind=\"lognormal\", median=1e-3, log_std=1.0}'"
        raise ConfigError(f"discover: the case has no [discover] table; add [discover.parameters.NAME] with a prior, "
                          f"e.g. {example}")  # fmt: skip
    if case.cycling is not None:
        raise ConfigError("cycling: assim discover estimates parameters over one window; remove [cycling]")
    if case.weak_constraint is not None:
        raise ConfigError("weak_constraint: assim discover is strong-constraint; remove [weak_constraint]")
    if case.solver.kind not in ("gauss_newton", "levenberg_marquardt"):
        raise ConfigError(f"solver.kind: assim discover needs the Gauss-Newton Hessian (got {case.solver.kind!r}); "
                          "use kind = 'levenberg_marquardt' or 'gauss_newton'")  # fmt: skip
    return case.discover


def discover(exp: Experiment) -> Discovery:
    """Estimate the case's [discover] parameters with the state, and their Gauss-Newton posterior."""
    case, twin = exp.case, exp.twin
    d = _check(case)
    names = tuple(d.parameters)
    check_parameter_names(exp.model, names, "discover.parameters", case.model.kind)
    truths = model_parameters(exp.truth_model if exp.truth_model is not None else exp.model)
    where = _selector(names)
    priors = tuple(_prior(d.parameters[n]) for n in names)
    for n, prior in zip(names, priors):
        shape = tuple(np.shape(truths[n]))
        if shape != prior.shape:
            raise ConfigError(f"discover.parameters.{n}: the model's {n} has shape {shape}; discovery estimates "
                              "scalar parameters, so give the model a scalar value")  # fmt: skip
    n_steps = case.time.n_steps
    problem = ParameterControl4DVar(exp.model, where, priors, twin.background, exp.covariance, twin.observations,
                                    n_steps=n_steps)  # fmt: skip
    start = time.perf_counter()
    result = exp.solver.solve(problem)
    solver = lx.CG(rtol=d.posterior_cg_tol, atol=d.posterior_cg_tol, max_steps=d.posterior_cg_max_steps)
    posterior = parameter_posterior(problem, result.v, solver)
    ident = identifiability(problem, posterior)
    jax.block_until_ready((posterior.std, ident.correlation))
    exp.timings["solve_s"] = time.perf_counter() - start
    background = _trajectory(problem, problem.zero_control())  # x_b under the prior parameters
    analysis = _trajectory(problem, result.v)
    estimate = [float(np.asarray(v)) for v in posterior.value]
    std = [float(np.asarray(s)) for s in posterior.std]
    iterations = np.asarray(posterior.cg_iterations)
    posterior_converged = bool(np.all(iterations < d.posterior_cg_max_steps))
    rms = np.asarray(pattern_rms(ident))
    records = {}
    for i, n in enumerate(names):
        prior = _prior_summary(d.parameters[n])
        truth = float(np.asarray(truths[n]))
        z = (estimate[i] - truth) / std[i] if std[i] > 0 else math.inf
        records[n] = {
            "prior": prior,
            "estimate": estimate[i],
            "std": std[i],
            "truth": truth,
            "z_score": z,
            "prior_z_score": (prior["central"] - truth) / prior["std"],
            "error": estimate[i] - truth,
            "prior_error": prior["central"] - truth,
            "std_reduction": std[i] / prior["std"],
            "posterior_cg_iterations": int(iterations[i]),
            "unconstrained": bool(ident.unconstrained[i]),
            "control_std_ratio": float(ident.std_ratio[i]),
            "state_correlation": float(ident.state_correlation[i]),
            "state_pattern_rms": float(rms[i]),
        }
    cov = np.asarray(posterior.covariance)
    scale = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    correlation = cov / scale[:, None] / scale[None, :]
    diag = result.diagnostics
    k = int(diag.n_outer)
    convergence = {
        "converged": bool(result.converged),
        "reason": result.message(),
        "outer_iterations": k,
        "cg_iterations": int(np.sum(np.asarray(diag.cg_iterations)[: k + 1])),
        "initial_cost": float(np.asarray(diag.cost)[0]),
        "final_cost": float(np.asarray(diag.cost)[k]),
        "final_gradient_norm": float(np.asarray(diag.gradient_norm)[k]),
        "posterior_converged": posterior_converged,
        "posterior_cg_iterations": iterations.tolist(),
    }
    extra = {f"{n}_{key}": r[key] for n, r in records.items() for key in ("estimate", "std", "truth", "z_score")}
    outcome = window_outcome(exp, result, background, analysis, {"discovered": ",".join(names), **extra})
    outcome.metrics["mode"] = "discovery"
    identifiable = {
        "unconstrained_threshold": UNCONSTRAINED_THRESHOLD,
        "schur_eigenvalues": np.asarray(ident.schur_eigenvalues).tolist(),
        "parameter_block_eigenvalues": np.asarray(ident.block_eigenvalues).tolist(),
        "unconstrained": [n for n in names if records[n]["unconstrained"]],
        "estimators": IDENTIFIABILITY_ESTIMATORS,
    }
    return Discovery(outcome, records, correlation, convergence, identifiable)


IDENTIFIABILITY_ESTIMATORS = {
    "unconstrained": f"posterior std of the control p (log θ for log-normal priors) ≥ {UNCONSTRAINED_THRESHOLD} × "
    "its prior std 1",
    "control_std_ratio": "posterior std / prior std of the control p",
    "state_correlation": "multiple correlation of p_i with the initial-state control v: √(1 − [H_pp⁻¹]_ii / [H⁻¹]_ii)",
    "state_pattern_rms": "RMS of cov(x_0, p_i) / std(p_i) = B^½ [H⁻¹]_vp e_i / √[H⁻¹]_ii (state units)",
    "schur_eigenvalues": "eigenvalues of S = H_pp − H_pv H_vv⁻¹ H_vp = ([H⁻¹]_pp)⁻¹, the marginal posterior "
    "precision of p (≥ 1: prior 1 + data)",
    "parameter_block_eigenvalues": "eigenvalues of H_pp (precision of p with the state held fixed)",
}


def to_dataset(exp: Experiment, found: Discovery, case_text: str) -> xr.Dataset:
    """The run's CF dataset (analysis under the estimated parameters) plus the parameters as variables."""
    from assim.io.netcdf import to_dataset as state_dataset

    ds = state_dataset(exp, found.outcome, case_text)
    names = list(found.parameters)
    ds = ds.assign_coords(parameter=xr.Variable(("parameter",), np.asarray(names, dtype=object),
                                                {"long_name": "discovered model parameter"}))  # fmt: skip
    rec = found.parameters

    def column(key, sub=None):
        return np.asarray([rec[n][key] if sub is None else rec[n][key][sub] for n in names], dtype=float)

    ds["parameter_estimate"] = ("parameter", column("estimate"), {"long_name": "posterior (Gauss-Newton) estimate"})
    ds["parameter_std"] = ("parameter", column("std"),
                           {"long_name": "posterior standard deviation from the Gauss-Newton Hessian"})  # fmt: skip
    ds["parameter_prior"] = ("parameter", column("prior", "central"), {"long_name": "prior central value"})
    ds["parameter_prior_std"] = ("parameter", column("prior", "std"), {"long_name": "prior standard deviation"})
    ds["parameter_truth"] = ("parameter", column("truth"), {"long_name": "true value (twin experiment)"})
    ds["parameter_correlation"] = (("parameter", "parameter_b"), found.correlation,
                                   {"long_name": "posterior correlation of the parameters"})  # fmt: skip
    ident = found.identifiability or {}
    if ident:
        est = ident["estimators"]
        ds["parameter_unconstrained"] = ("parameter", column("unconstrained").astype(np.int8),
                                         {"long_name": "1: not constrained by the data", "flag_values": [0, 1],
                                          "comment": est["unconstrained"]})  # fmt: skip
        ds["parameter_state_correlation"] = ("parameter", column("state_correlation"),
                                             {"long_name": "multiple correlation with the initial-state control",
                                              "comment": est["state_correlation"]})  # fmt: skip
        ds["parameter_control_std_ratio"] = ("parameter", column("control_std_ratio"),
                                             {"long_name": est["control_std_ratio"]})  # fmt: skip
        ds["parameter_schur_eigenvalues"] = ("parameter_eigen", np.asarray(ident["schur_eigenvalues"]),
                                             {"long_name": est["schur_eigenvalues"]})  # fmt: skip
    for n in names:
        r = rec[n]
        attrs = {"long_name": f"discovered {n}", "posterior_std": r["std"], "truth": r["truth"],
                 "z_score": r["z_score"], "prior_kind": r["prior"]["kind"], "prior_central": r["prior"]["central"],
                 "prior_std": r["prior"]["std"]}  # fmt: skip
        name = n if n not in ds.variables else f"parameter_{n}"
        ds[name] = xr.Variable((), r["estimate"], attrs)
    ds.attrs["title"] = f"assim parameter discovery: {exp.case.name}"
    ds.attrs["source"] = ds.attrs["source"].replace("strong-constraint 4D-Var", "joint state-parameter 4D-Var")
    ds.attrs["discovery"] = json.dumps({"parameters": rec, "convergence": found.convergence,
                                        "identifiability": found.identifiability})  # fmt: skip
    return ds


def summary_markdown(exp: Experiment, found: Discovery) -> str:
    """The run's summary with a table of the discovered parameters."""
    from assim.io.netcdf import summary_markdown as state_summary

    c = found.convergence
    lines = ["## Discovered parameters", "", "| parameter | prior | estimate ± std | truth | z-score | std / prior std "
             "| corr. with state | constrained |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for n, r in found.parameters.items():
        p = r["prior"]
        prior = (f"lognormal(median {p['median']:.4g}, log-std {p['log_std']:.3g})" if p["kind"] == "lognormal"
                 else f"N({p['mean']:.4g}, {p['std']:.4g}²)")  # fmt: skip
        lines.append(f"| {n} | {prior} | {r['estimate']:.4g} ± {r['std']:.2g} | {r['truth']:.4g} | "
                     f"{r['z_score']:+.2f} | {r['std_reduction']:.3g} | {r.get('state_correlation', math.nan):.2f} | "
                     f"{'NO (unconstrained)' if r.get('unconstrained') else 'yes'} |")  # fmt: skip
    lines += [
        "",
        f"Gauss-Newton: {c['reason']} after {c['outer_iterations']} outer iterations "
        f"({c['cg_iterations']} CG); posterior CG iterations {c['posterior_cg_iterations']}"
        + ("" if c["posterior_converged"] else " (NOT converged: raise discover.posterior_cg_max_steps)"),
        "",
    ]
    ident = found.identifiability
    if ident:
        eig = ", ".join(f"{e:.3g}" for e in ident["schur_eigenvalues"])
        lines += [f"Marginal posterior precision of the parameter controls (Schur complement) eigenvalues: {eig} "
                  f"(1 = prior only). Unconstrained: posterior std ≥ {ident['unconstrained_threshold']} × prior std "
                  "in control space" + (f"; flagged: {', '.join(ident['unconstrained'])}" if ident["unconstrained"]
                                        else "; none flagged") + ".", ""]  # fmt: skip
    return state_summary(exp, found.outcome) + "\n".join(lines)


def discover_case(
    path: str | Path, overrides: Sequence[str] = (), out_dir: str | Path | None = None, quiet: bool = False
) -> int:
    """`assim discover`: every output appears (renamed from a temporary name) only if the whole run succeeds."""
    from assim.case.run import NOT_CONVERGED
    from assim.io.netcdf import (
        AtomicOutputs,
        json_text,
        package_versions,
        write_dataset,
    )
    from assim.io.outputs import check_directory
    from assim.progress import console, outer_iterations, status

    case, text, overrides = load_case_for_outputs(path, overrides, out_dir)
    preflight(case)  # a case too big for the machine (or --max-memory): refused before the work
    check_directory(case.outputs.directory)  # a file, an unwritable or a busy --out: refused before the work
    d = _check(case)
    from assim import compile_cache

    compile_cache.configure()  # before the first compilation: a repeated run loads its programs
    since = compile_cache.snapshot()
    case_module.check(case)  # parameter names and every object's own checks, before the truth run
    start = time.perf_counter()
    shown = console(False if quiet else None)  # stderr a terminal, not --quiet
    with status(f"{case.name}: truth run and discovery of {', '.join(d.parameters)}", shown):
        exp = case_module.build(case)
        found = discover(exp)
    outer_iterations(case.name, found.outcome.diagnostics, shown)
    directory = Path(case.outputs.directory)
    with AtomicOutputs(directory) as outputs:
        ds = to_dataset(exp, found, text)
        ds.attrs["case_overrides"] = json.dumps(overrides)
        write_dataset(ds, outputs.path("discovery.nc"))
        for name, extra in exp.files.items():  # e.g. the observations of a real-fields case
            write_dataset(extra, outputs.path(name))
        figures = []
        if case.outputs.figures:
            from assim.io.figures import parameters_figure, write_figures

            parameters_figure(case.name, found.parameters, outputs.path("parameters.png"))
            figures = ["parameters.png", *write_figures(exp, found.outcome, outputs.path)]
        exp.timings["total_s"] = time.perf_counter() - start
        exp.timings.update(compile_cache.timings(since))  # of which tracing, lowering, compiling (or cache loads)
        m = found.outcome.metrics
        report = {"case": case.name, "parameters": found.parameters,
                  "correlation": found.correlation.tolist(), "convergence": found.convergence,
                  "identifiability": found.identifiability,
                  "state": {k: m[k] for k in ("background_rmse", "analysis_rmse", "background_trajectory_rmse",
                                              "analysis_trajectory_rmse", "observation_noise", "n_observations")},
                  "timings_s": exp.timings, "compilations": compile_cache.counts(since), "figures": figures,
                  "package_versions": package_versions()}  # fmt: skip
        outputs.write_text("discovery.json", json_text(report))
        outputs.write_text("summary.md", summary_markdown(exp, found))
    if not quiet:
        for n, r in found.parameters.items():
            print(f"{case.name}: {n} = {r['estimate']:.4g} ± {r['std']:.2g} (truth {r['truth']:.4g}, "
                  f"z = {r['z_score']:+.2f}; prior {r['prior']['central']:.4g})")  # fmt: skip
        print(f"{found.convergence['reason']}; wrote {directory}/: discovery.nc, discovery.json, summary.md"
              + "".join(f", {f}" for f in figures))  # fmt: skip
    if not found.convergence["converged"] or not found.convergence["posterior_converged"]:
        import sys

        print(f"assim: warning: {case.name}: not converged ({found.convergence['reason']}; posterior CG "
              f"{'converged' if found.convergence['posterior_converged'] else 'not converged'}); the outputs say so",
              file=sys.stderr)  # fmt: skip
        return NOT_CONVERGED  # outputs written, documented exit status 3
    return 0
