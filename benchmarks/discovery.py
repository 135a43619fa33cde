"""Calibration of `assim discover`'s Laplace posterior: coverage of its 95 % intervals over twin seeds (issue 16).

Run: python benchmarks/discovery.py [--seeds 50] [--cases diffusion_kappa advdiff_kappa advdiff_wind lorenz96_forcing]
Writes benchmarks/results/discovery.json (DESIGN.md convention).

For each case and seed: the true parameter is drawn from the prior, the truth runs from a fixed initial state,
observations get N(0, σ²) noise and the background x_b = x_t + B^{1/2}ξ (so B is the true background error),
then joint state–parameter Levenberg–Marquardt and the Gauss-Newton (Laplace) posterior, as `assim discover`.
Standardised error z = (estimate − truth) / posterior std. Two interval conventions are scored: in the control
space p (log θ for log-normal priors, where the Laplace posterior is Gaussian: p̂ ± 1.96 σ_p) and in θ
(θ̂ ± 1.96 σ_θ with the delta-method σ_θ that `assim discover` reports). One jit per case, a loop over seeds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402,F401  (float64)
from assim.covariances.covariance import DiagonalCovariance, SpectralGaussianCovariance  # noqa: E402
from assim.observations.operators import GriddedObservation  # noqa: E402
from assim.problems.identifiability import identifiability  # noqa: E402
from assim.problems.parameter_control import (  # noqa: E402
    GaussianPrior,
    LogNormalPrior,
    ParameterControl4DVar,
    parameter_posterior,
)
from assim.problems.twin import ObservationNetwork, twin_experiment  # noqa: E402
from assim.solvers.gauss_newton import GaussNewton, LevenbergMarquardt  # noqa: E402
from benchmarks.common import print_targets, target, write_results  # noqa: E402
from benchmarks.model_factories import _smooth  # noqa: E402
from models import CartesianGrid, Periodic  # noqa: E402
from models.advection_diffusion import AdvectionDiffusion  # noqa: E402
from models.diffusion import Diffusion  # noqa: E402
from models.lorenz96 import Lorenz96  # noqa: E402
from models.operators import Centred  # noqa: E402
from models.time_schemes import CrankNicolson  # noqa: E402

N = 16
GRID = CartesianGrid((N, N), (1.0, 1.0), Periodic())
GN = GaussNewton(damping=LevenbergMarquardt(), max_outer=20, cg_max_steps=200, cg_tol=1e-8, gtol=1e-6)
POSTERIOR_CG = lx.CG(rtol=1e-10, atol=1e-10, max_steps=500)
L96_GRID = CartesianGrid((40,), (1.0,), Periodic())
SELECT = {"kappa": lambda m: m.kappa, "wind_scale": lambda m: m.wind_scale, "forcing": lambda m: m.forcing}


def _network(shape, fraction, steps, sigma, seed=1):
    size = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(size, max(1, int(round(fraction * size))), replace=False))
    grid = GRID if len(shape) == 2 else L96_GRID
    return ObservationNetwork(GriddedObservation(grid, idx), steps, sigma)


def _advdiff(kappa, wind_scale):
    y, x = np.meshgrid(*GRID.coords().values(), indexing="ij")
    u = np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y)
    v = -np.cos(2 * np.pi * x) * np.sin(2 * np.pi * y)
    return AdvectionDiffusion(GRID, (jnp.asarray(v), jnp.asarray(u)), kappa, 1.0 / 32, CrankNicolson(),
                              advection_scheme=Centred(), wind_scale=wind_scale)  # fmt: skip


def cases() -> dict:
    """name → (model factory of θ, parameter name, prior, x_t0, B, network, n_steps, settings)."""
    spectral = SpectralGaussianCovariance(GRID, 0.01, 0.08)
    x0 = _smooth(GRID, 1)
    tight = lx.CG(rtol=1e-12, atol=1e-12, max_steps=200)
    l96_x0 = 8.0 + jax.random.normal(jax.random.PRNGKey(5), (40,))
    l96_x0 = jax.jit(lambda x: jax.lax.fori_loop(0, 200, lambda _, s: Lorenz96(40, 8.0, 0.05).step(s), x))(l96_x0)
    return {
        "diffusion_kappa": (
            lambda th: Diffusion(GRID, th, 1.0 / 32, CrankNicolson(), solver=tight),
            "kappa",
            LogNormalPrior(2e-3, 0.5),
            x0,
            spectral,
            _network(GRID.shape, 0.25, range(2, 17, 2), 0.02),
            16,
            "16² periodic diffusion, Crank-Nicolson, dt 1/32, 16 steps; 25 % of cells every 2 "
            "steps, σ_o 0.02; spectral B σ_b 0.1, ℓ 0.08; κ ~ lognormal(2e-3, 0.5)",
        ),
        "advdiff_kappa": (
            lambda th: _advdiff(th, 1.0),
            "kappa",
            LogNormalPrior(2e-3, 0.5),
            x0,
            spectral,
            _network(GRID.shape, 0.25, range(2, 17, 2), 0.02),
            16,
            "16² cellular-flow advection-diffusion, CN centred, dt 1/32, 16 steps, wind scale 1 known; "
            "25 % of cells every 2 steps, σ_o 0.02; spectral B σ_b 0.1, ℓ 0.08; κ ~ lognormal(2e-3, 0.5)",
        ),
        "advdiff_wind": (
            lambda th: _advdiff(2e-3, th),
            "wind_scale",
            LogNormalPrior(1.0, 0.3),
            x0,
            spectral,
            _network(GRID.shape, 0.25, range(2, 17, 2), 0.02),
            16,
            "as advdiff_kappa with κ = 2e-3 known; wind scale ~ lognormal(1, 0.3)",
        ),
        "lorenz96_forcing": (
            lambda th: Lorenz96(40, th, 0.05),
            "forcing",
            GaussianPrior(8.0, 0.5),
            l96_x0,
            DiagonalCovariance(L96_GRID, 0.1),
            _network((40,), 0.5, range(1, 11), 0.5),
            10,
            "Lorenz-96 N = 40, RK4 dt 0.05, 10 steps from a spun-up state; every other variable "
            "every step, σ_o 0.5; diagonal B σ_b² 0.1; F ~ N(8, 0.5²)",
        ),
    }


def run_case(name, spec, n_seeds, log):
    make, pname, prior, x0, cov, net, n_steps, settings = spec
    where = SELECT[pname]
    start = time.perf_counter()
    rows = []
    for seed in range(n_seeds):
        key = jax.random.PRNGKey(1000 + seed)
        p_true = float(jax.random.normal(jax.random.fold_in(key, 7)))
        theta_true = float(prior.parameter(jnp.asarray(p_true)))
        twin = twin_experiment(key, make(jnp.asarray(theta_true)), x0, n_steps, net, cov)
        problem = ParameterControl4DVar(make(prior.parameter(jnp.asarray(0.0))), where, prior, twin.background, cov,
                                        twin.observations, n_steps=n_steps)  # fmt: skip
        result = GN.solve(problem)
        post = parameter_posterior(problem, result.v, POSTERIOR_CG)
        ident = identifiability(problem, post)
        p_hat, sp = float(result.v.p[0]), float(np.sqrt(post.control_covariance[0, 0]))
        th_hat, st = float(post.value[0]), float(post.std[0])
        rows.append({"seed": seed, "truth": theta_true, "control_truth": p_true, "estimate": th_hat, "std": st,
                     "control_estimate": p_hat, "control_std": sp, "z": (th_hat - theta_true) / st,
                     "control_z": (p_hat - p_true) / sp, "converged": bool(result.converged),
                     "outer_iterations": int(result.diagnostics.n_outer),
                     "posterior_cg_iterations": int(post.cg_iterations[0]),
                     "state_correlation": float(ident.state_correlation[0]),
                     "unconstrained": bool(ident.unconstrained[0])})  # fmt: skip
        if seed == 0:
            log(f"{name}: first seed (with compilation) {time.perf_counter() - start:.1f} s")
    elapsed = time.perf_counter() - start
    z, cz = np.array([r["z"] for r in rows]), np.array([r["control_z"] for r in rows])
    ok = np.array([r["converged"] for r in rows])
    entry = {
        "settings": settings, "parameter": pname, "prior": prior_summary(prior), "seeds": n_seeds,
        "converged": int(ok.sum()), "wall_s": elapsed,
        "coverage_95_control": float(np.mean(np.abs(cz) <= 1.959964)),
        "coverage_95_parameter": float(np.mean(np.abs(z) <= 1.959964)),
        "std_standardised_error_control": float(np.std(cz, ddof=1)),
        "std_standardised_error_parameter": float(np.std(z, ddof=1)),
        "mean_standardised_error_control": float(np.mean(cz)),
        "mean_std_ratio_to_prior_control": float(np.mean([r["control_std"] for r in rows])),
        "mean_state_correlation": float(np.mean([r["state_correlation"] for r in rows])),
        "unconstrained_seeds": int(sum(r["unconstrained"] for r in rows)),
        "per_seed": rows,
    }  # fmt: skip
    log(f"{name}: {n_seeds} seeds in {elapsed:.0f} s; coverage (p) {entry['coverage_95_control']:.2f}, "
        f"(θ) {entry['coverage_95_parameter']:.2f}; sd(z) (p) {entry['std_standardised_error_control']:.2f}, "
        f"(θ) {entry['std_standardised_error_parameter']:.2f}; converged {ok.sum()}/{n_seeds}")  # fmt: skip
    return entry


def prior_summary(prior) -> dict:
    if isinstance(prior, LogNormalPrior):
        return {"kind": "lognormal", "median": float(prior.median), "log_std": float(prior.log_std)}
    return {"kind": "gaussian", "mean": float(prior.mean), "std": float(prior.std)}


NOT_MEASURED = [
    "field: correlation with the true diffusivity field on a 64² twin where posterior std < ½ prior std ≥ 0.9",
    "field: posterior std field within a factor 1.5 of a sampled reference on a small case",
    "learned model error: next-window forecast error reduced by ≥ 50 % on unseen windows",
    "cost: field discovery at 128² ≤ 3× the state-only 4D-Var of the same window",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--cases", nargs="*", default=None)
    parser.add_argument("--output", default="discovery")
    args = parser.parse_args(argv)
    specs = cases()
    chosen = args.cases or list(specs)
    load = {"start": os.getloadavg()}
    results, targets = {}, []
    for name in chosen:
        results[name] = entry = run_case(name, specs[name], args.seeds, lambda s: print(s, flush=True))
        for space in ("control", "parameter"):
            cov, sd = entry[f"coverage_95_{space}"], entry[f"std_standardised_error_{space}"]
            label = "p (log θ for log-normal)" if space == "control" else "θ, delta method (as assim discover)"
            targets.append(target(f"{name}: coverage of the nominal 95 % intervals in {label}", cov, ">=", 0.90))
            targets.append(target(f"{name}: coverage of the nominal 95 % intervals in {label}", cov, "<=", 0.99))
            targets.append(target(f"{name}: std of the standardised errors in {label}", sd, ">=", 0.8))
            targets.append(target(f"{name}: std of the standardised errors in {label}", sd, "<=", 1.25))
    load["end"] = os.getloadavg()
    extra = {"targets_not_measured": list(NOT_MEASURED),"settings": vars(args), "command": " ".join(["python", *sys.argv]), "load_average_1_5_15min": load,
             "protocol": __doc__.split("\n\n", 2)[2].strip(),
             "machine_load": "2-core machine shared with other jobs: wall times are noisy"}  # fmt: skip
    path = write_results(args.output, results, targets, extra=extra)
    print_targets([t for t in targets if t["value"] is not None], path)


if __name__ == "__main__":
    main()
