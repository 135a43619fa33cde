"""Learned unrolled Gauss-Newton (K ≤ 4 layers, trained without truth) against classical Gauss-Newton; hypergradient cost.

Run: python benchmarks/unrolled.py [--cases advection_diffusion burgers lorenz96] [--hypergradients]
Writes benchmarks/results/unrolled.json (DESIGN.md convention).

Every case is a set of twin windows (independent truths → noisy observations → perturbed backgrounds) of the same
model and B as benchmarks/fourdvar.py, and its observing network except for 2-D Burgers (denser: `burgers_bench`).
Windows are split into training, validation and test sets (disjoint truths, observation noise and backgrounds). The learned solver (`UnrolledGaussNewton`: per-layer μ_k, α_k,
λ_k, a periodic conv-net increment correction and a learned first guess) is trained on the training windows with the
masking + KKT losses only (no truth), early-stopped on the validation windows, and scored on the test windows against:
(b) classical Gauss-Newton run to convergence (the cheapest CG tolerance of a sweep at which every test window reaches
J ≤ J*(1 + 1e-6), J* the best cost of the sweep), and (c) classical Gauss-Newton stopped at the learned solver's
evaluation budget (every (outer, CG) split of the budget tried; the one with the lowest mean cost J reported).

Model runs are counted from each algorithm's structure (and checked against the solvers' diagnostics):
- learned: per layer 1 forward (linearisation) + 1 adjoint (J_dᵀd) + c CG steps × (1 TL + 1 adjoint); the learned first
  guess adds 1 forward + 1 adjoint (−∇J(0)); the final gradient of the diagnostics adds 1 forward + 1 adjoint.
- classical: per outer iteration 1 forward + 1 adjoint (linearisation, gradient) and CG's n Hessian products from
  zero (`ZeroStartCG`) × (1 TL + 1 adjoint); Levenberg-Marquardt adds 1 forward (trial cost) per step and takes the
  predicted reduction from CG's identity (no run);
  the last linearisation (convergence test) counts too.
`evaluations` = TL + adjoint runs (the issue's measure); forward runs are reported beside them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("EQX_ON_ERROR", "nan")  # a failed Newton solve gives NaN (counted), not an abort

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
from jaxtyping import Array  # noqa: E402

import models  # noqa: E402,F401  (float64)
from assim.covariances.component import ComponentCovariance  # noqa: E402
from assim.covariances.covariance import SpectralGaussianCovariance  # noqa: E402
from assim.errors import InputError  # noqa: E402
from assim.learned.hypergradients import Implicit, OneStep, Truncated, Unrolled  # noqa: E402
from assim.learned.losses import (  # noqa: E402
    KKTResidual,
    MaskedMisfit,
    RandomSplit,
    WeightedSum,
    window_loss,
)
from assim.learned.networks import AbstractControlNetwork, ConvNetwork  # noqa: E402
from assim.learned.preconditioner import SpectralScaling  # noqa: E402
from assim.learned.training import (  # noqa: E402
    Trainer,
    TrainResult,
    adam,
    stack_windows,
    train,
    validation_loss,
)
from assim.learned.unrolled import UnrolledGaussNewton  # noqa: E402
from assim.observations.operators import GriddedObservation  # noqa: E402
from assim.problems.cost import StrongConstraint4DVar  # noqa: E402
from assim.problems.twin import ObservationNetwork, twin_experiment  # noqa: E402
from assim.solvers.gauss_newton import GaussNewton, LevenbergMarquardt, NoDamping  # noqa: E402
from assim.solvers.innovation_preconditioner import InnovationSpectral  # noqa: E402
from assim.solvers.preconditioner import (  # noqa: E402
    NoPreconditioner,
    ProbedSpectral,
    probed_scaling,
)
from benchmarks.common import RESULTS, print_targets, target, write_results  # noqa: E402
from benchmarks.fourdvar import (  # noqa: E402
    RELATIVE_COST_TOLERANCE,
    advection_diffusion_case,
    lorenz96_case,
)
from models import CartesianGrid, Periodic  # noqa: E402
from models.burgers import Burgers  # noqa: E402
from models.rollout import rollout  # noqa: E402

RMSE_WITHIN = 1.05  # learned RMSE ≤ 1.05 × converged classical RMSE
EVALUATION_FRACTION = 0.25  # learned model runs ≤ 1/4 of converged classical
CLEARLY_BETTER = 0.95  # "clearly better" than classical at the same budget: RMSE at least 5% lower


# ---------------------------------------------------------------------------------------------
# Cases: a twin-window generator per model
# ---------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """A family of twin windows (model, B, observing networks, truth sampler) and the learned solver's settings."""

    name: str
    model: Any
    covariance: Any
    networks: tuple
    n_steps: int
    sample_truth: Callable  # key -> true initial state
    damping: Any  # classical damping
    layers: int
    cg_steps: int
    make_networks: Callable  # key -> (correction, first guess)
    setup: dict
    cg_tolerances: tuple = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6)
    train_steps: int = 150
    learning_rate: float = 3e-2
    batch_size: int = 4
    n_train: int = 32
    n_validation: int = 8
    n_test: int = 16
    kkt_weight: float = 1.0  # 0: masking loss only
    mask_weight: float = 1.0  # 0: KKT residual only
    kkt_weights: tuple = ()  # more than one: train one solver per KKT weight (× learning rate), select as below
    first_guess: bool = True
    patience: int = 4  # validations without improvement before early stopping
    learning_rates: tuple = ()  # more than one: train one solver per rate, keep the lowest validation loss
    preconditioner: Callable | None = None  # training windows -> initial learned CG preconditioner (None: plain CG)
    free_preconditioner: Any = None  # a classical inner preconditioner costing no model run, also tried at the budget
    test_seed: int = 300  # a case whose design was explored on the seed-300 windows is scored on fresh ones


def _rms(x) -> Array:
    leaves = jax.tree_util.tree_leaves(x)
    mean_square = sum(jnp.sum(leaf**2) for leaf in leaves) / sum(leaf.size for leaf in leaves)
    safe = jnp.where(mean_square > 0, mean_square, 1.0)
    return jnp.where(mean_square > 0, jnp.sqrt(safe), 1.0)


class RMSNormalised(AbstractControlNetwork):
    """A control network on its inputs divided by their RMS; output × the RMS of input `output_scale` (None: × 1).

    Keeps the tanh layers out of saturation whatever the inputs' scale (−∇J(0) of Lorenz-96 has RMS 7–50 while
    the analysis increment has RMS ≈ 0.5), and makes the correction C(v, δ) relative to the increment δ.
    """

    network: AbstractControlNetwork
    output_scale: int | None = eqx.field(static=True)
    n_inputs: int = eqx.field(static=True)

    def __init__(self, network: AbstractControlNetwork, output_scale: int | None = None):
        if output_scale is not None and not 0 <= output_scale < network.n_inputs:
            raise InputError(
                f"output_scale must index one of the {network.n_inputs} inputs or be None; got {output_scale}."
            )
        self.network = network
        self.output_scale = output_scale
        self.n_inputs = network.n_inputs

    def __call__(self, *controls):
        scales = [_rms(c) for c in controls]
        out = self.network(*(jax.tree_util.tree_map(lambda x, s=s: x / s, c) for c, s in zip(controls, scales)))
        factor = 1.0 if self.output_scale is None else scales[self.output_scale]
        return jax.tree_util.tree_map(lambda y: factor * y, out)


def _conv_nets(ndim: int, components: int = 1, width: int = 8, depth: int = 2, normalise: bool = False):
    """(correction C(v, δ), first guess G(−∇J(0))) conv nets; `normalise`: inputs by their RMS (`RMSNormalised`)."""

    def make(key):
        k1, k2 = jax.random.split(key)
        corr = ConvNetwork(2, ndim, width, depth, components=components, key=k1)
        guess = ConvNetwork(1, ndim, width, depth, components=components, key=k2)
        if normalise:
            return RMSNormalised(corr, output_scale=1), RMSNormalised(guess)
        return corr, guess

    return make


def advection_diffusion_bench(n: int = 64, layers: int = 1, cg_steps: int = 2) -> Bench:
    """Tracer in a cellular flow (fourdvar's IMEX model, B and 5% network at n × n); truths ~ Gaussian(ℓ = 0.08)."""
    case = advection_diffusion_case(n)
    p = case.problem
    grid = p.model.grid
    truth_cov = SpectralGaussianCovariance(grid, 1.0, 0.08).prepare()
    obs = p.observations[0]
    net = ObservationNetwork(obs.operator, obs.steps, case.sigma_o)
    sample = lambda key: truth_cov.sqrt(jax.random.normal(key, grid.shape))  # noqa: E731
    return Bench(f"advection_diffusion_{n}_K{layers}_cg{cg_steps}", p.model, p.covariance, (net,), p.n_steps, sample, NoDamping(),
                 layers, cg_steps, _conv_nets(2), {**case.setup, "truth": "SpectralGaussian(σ=1, ℓ=0.08) per window"},
                 cg_tolerances=(1e-1, 1e-2, 1e-4), train_steps=60, learning_rate=1e-2, n_train=16, n_validation=4,
                 n_test=8, preconditioner=lambda windows: probed_scaling(
                     _first(windows), ProbedSpectral((n, n), 8, 4, 1.0, key=jax.random.PRNGKey(11))))  # fmt: skip


def burgers_bench(
    n: int = 16,
    layers: int = 1,
    cg_steps: int = 7,
    sigma_o: float = 0.1,
    train_steps: int = 150,
    probed: bool = False,
    n_train: int = 32,
    learning_rates: tuple = (1e-2,),
    fraction: float = 0.5,
) -> Bench:
    """2-D Burgers (fourdvar's model and B, ν scaled to keep the cell Reynolds number 1.6 at n × n); half the cells observed.

    The Newton-Krylov step's derivatives come from the implicit function theorem as a primitive's jvp rule that is
    itself differentiable to any order, so the tangent-linear and adjoint models can be differentiated with respect
    to a learned linearisation point and through the KKT loss: training uses masking + KKT (weight 1) and a learned
    first guess, as for the other models. Design point K = 1 layer × 7 CG steps (17 TL + adjoint runs) with a learned
    `SpectralScaling` CG preconditioner started at P = I (`probed=True`: from a probed fit of one training window's
    Hessian, as advection-diffusion; it did not help truncated CG in the exploration); Adam at 1e-2, 150 steps, 32 training windows.
    Observing design, chosen so that the target can be reached: 50% of the cells of each velocity component every
    other step, σ_o = 0.1 (σ_b = 0.2), denser than fourdvar's network. With fourdvar's 10% at σ_o = 0.2
    (`fraction=0.1, sigma_o=0.2`) this 4D-Var problem is so well conditioned that classical GN at 6 runs is within 1%
    of its converged RMSE (0.1725 vs 0.1710 at 16², background 0.195): a solver 5% better than it at any budget would
    have to beat the converged 4D-Var analysis itself. Here classical GN at 5–16 runs (≤ 9% of its converged runs)
    is 9–60% above its converged RMSE (benchmarks/results/unrolled_exploration/). The design (density, σ_o, CG steps,
    training length) was explored on the seed-300 windows, so this case is scored on 16 fresh windows (seed 500).
    `free_preconditioner`: classical GN at the same budget is also run with `InnovationSpectral` (6 uniform radial
    bins, the setting of the exploration's diagnostics; not tuned), which costs no model run.
    """
    grid = CartesianGrid((n, n), (1.0, 1.0), Periodic())
    h = 1.0 / n
    dt = 0.5 * h
    nu = 0.64 / n  # = 0.01 at n = 64 (fourdvar): cell Reynolds number U h / ν ≈ 1.6 at every n
    tol = 1e-8
    model = Burgers(grid, nu, dt, solver=lx.GMRES(rtol=tol, atol=tol, restart=20, max_steps=100), rtol=tol, atol=tol)
    sigma_b, length, n_steps = 0.2, 0.08, 10
    block = SpectralGaussianCovariance(grid, sigma_b**2, length)
    cov = ComponentCovariance([block, block])
    field_cov = SpectralGaussianCovariance(grid, 1.0, 0.1).prepare()
    rng = np.random.default_rng(10)
    steps = tuple(range(2, n_steps + 1, 2))
    nets = tuple(
        ObservationNetwork(GriddedObservation(grid, np.sort(rng.choice(grid.size, int(fraction * grid.size), replace=False)),
                                              component=c), steps, sigma_o)
        for c in range(2)
    )  # fmt: skip

    def sample(key):
        k1, k2 = jax.random.split(key)
        return jnp.stack([field_cov.sqrt(jax.random.normal(k, grid.shape)) for k in (k1, k2)])

    setup = {
        "grid": [n, n], "state_shape": [2, n, n], "window_steps": n_steps, "dt": dt, "nu": nu, "newton_gmres_tol": tol,
        "scheme": "backward Euler, Newton-Krylov (GMRES), IFT tangent/adjoint", "observation_steps": list(steps),
        "observed_fraction_per_time": fraction, "sigma_b": sigma_b, "length_scale_b": length, "sigma_o": sigma_o,
        "control_size": 2 * n * n, "B": "ComponentCovariance of SpectralGaussianCovariance per velocity component",
        "truth": "SpectralGaussian(σ=1, ℓ=0.1) per component per window",
    }  # fmt: skip
    return Bench(f"burgers2d_{n}", model, cov, nets, n_steps, sample, LevenbergMarquardt(), layers, cg_steps,
                 _conv_nets(2, components=2), {**setup, "training_loss": "masking + KKT (weight 1.0)"},
                 cg_tolerances=(1e-1, 1e-2), train_steps=train_steps, learning_rate=1e-2, n_train=n_train, n_validation=4,
                 n_test=16, test_seed=500, kkt_weight=1.0, first_guess=True, learning_rates=learning_rates,
                 preconditioner=(lambda windows: probed_scaling(
                     _first(windows), ProbedSpectral((n, n), 8, 4, 1.0, key=jax.random.PRNGKey(11))))
                 if probed else (lambda windows: SpectralScaling((n, n))),
                 free_preconditioner=InnovationSpectral((n, n), 6, 1.0))  # fmt: skip


def lorenz96_bench(
    layers: int = 3,
    cg_steps: int = 3,
    sigma_o: float | None = None,
    learning_rates: tuple = (1e-3, 3e-3),
    train_steps: int = 300,
    normalise: bool = False,
    mask_weight: float = 1.0,
    kkt_weights: tuple = (1.0, 10.0),
) -> Bench:
    """Lorenz-96 N = 40 (fourdvar's window, B and network); truths from independent attractor spin-ups.

    Design point K = 3 layers × 3 CG steps (23 TL + adjoint runs, ≈ 11% of converged classical GN), where classical
    GN at the same budget is still ≈ 12% above the converged RMSE. Training: Adam at each of `learning_rates`
    (warm-up, cosine decay, clip 1) for `train_steps` steps of 16 windows from 256, validated every 10 steps on 64
    windows (step 0 included). Loss: masking + w × KKT residual for each w of `kkt_weights` (the KKT residual
    measures the distance to the 4D-Var stationary point that converged GN reaches); among the (w, rate) candidates
    the lowest held-out masked misfit on the validation windows is kept (`run_case`). At the earlier default (3e-2,
    batch 4, 16 validation windows, patience 4) Adam moved the conv nets' weights by ≈ 3e-2 per step, i.e. the
    first guess and the increment by O(1) in control units per step: the validation loss rose from step 10 on
    (K = 4) or diverged to NaN (K = 2) and 16 validation windows were too few to select parameters reliably.
    """
    case = lorenz96_case()
    p = case.problem
    obs = p.observations[0]
    sigma = case.sigma_o if sigma_o is None else sigma_o
    net = ObservationNetwork(obs.operator, obs.steps, sigma)
    spin_up = jax.jit(lambda key: rollout(p.model, 8.0 + 0.01 * jax.random.normal(key, (40,)), 500)[-1])
    sample = lambda key: spin_up(key)  # noqa: E731  (as fourdvar.lorenz96_truth, compiled once)
    setup = {**case.setup, "sigma_o": sigma, "truth": "RK4 spin-up of 500 steps from a perturbed rest state per window",
             "networks": "ConvNetwork(width 16, depth 2, tanh, zero last layer)" + (" on RMS-normalised inputs" if normalise else "")}  # fmt: skip
    return Bench(f"lorenz96_40_K{layers}_cg{cg_steps}", p.model, p.covariance, (net,), p.n_steps, sample,
                 LevenbergMarquardt(), layers, cg_steps, _conv_nets(1, width=16, normalise=normalise), setup,
                 train_steps=train_steps, learning_rate=learning_rates[0], batch_size=16, n_train=256, n_validation=64,
                 n_test=32, patience=30, learning_rates=tuple(learning_rates), mask_weight=mask_weight,
                 kkt_weight=kkt_weights[0], kkt_weights=tuple(kkt_weights))  # fmt: skip


@eqx.filter_jit
def _background_cost(problem):
    return problem.cost(problem.zero_control())


def make_windows(bench: Bench, seed: int, count: int, skipped: list | None = None):
    """`count` twin windows from seed: (stacked prepared problems, stacked true initial states).

    A draw whose truth or background trajectory is not finite (e.g. Burgers' Newton solve failing on a steep truth;
    `EQX_ON_ERROR=nan` turns the failure into NaN) is skipped and the next index drawn; skipped indices are appended
    to `skipped`.
    """
    problems, truths = [], []
    i = 0
    while len(problems) < count:
        if i >= 2 * count + 16:
            raise InputError(
                f"{bench.name}: only {len(problems)} of the first {i} twin draws of seed {seed} are finite; "
                "the model fails on these truths (reduce dt or the truth amplitude)."
            )
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        truth0 = bench.sample_truth(jax.random.fold_in(key, 0))
        twin = twin_experiment(
            jax.random.fold_in(key, 1), bench.model, truth0, bench.n_steps, bench.networks, bench.covariance
        )
        problem = StrongConstraint4DVar(bench.model, twin.background, bench.covariance, twin.observations,
                                        n_steps=bench.n_steps).prepared()  # fmt: skip
        finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(twin.truth))
        if finite and bool(jnp.isfinite(_background_cost(problem))):
            problems.append(problem)
            truths.append(truth0)
        elif skipped is not None:
            skipped.append(i)
        i += 1
    return stack_windows(problems), jnp.stack(truths)


# ---------------------------------------------------------------------------------------------
# Solvers on stacked windows
# ---------------------------------------------------------------------------------------------


def _rmse(x0, truths):
    axes = tuple(range(1, truths.ndim))
    return jnp.sqrt(jnp.mean((x0 - truths) ** 2, axis=axes))


@eqx.filter_jit
def _solve_unrolled(solver, windows):
    return eqx.filter_vmap(lambda p: solver.solve(p), in_axes=0)(windows)


@eqx.filter_jit
def _solve_classical(solver, windows):
    return eqx.filter_vmap(lambda p: solver.solve(p), in_axes=0)(windows)


@eqx.filter_jit
def _costs(windows, v):
    return eqx.filter_vmap(lambda p, c: p.cost(c))(windows, v)


def _final_counts(d) -> dict:
    """Total forward / TL / adjoint runs of each window (diagnostics at the last outer iterate)."""
    idx = d.n_outer[:, None]
    take = lambda a: np.asarray(jnp.take_along_axis(a, idx, axis=1)[:, 0])  # noqa: E731
    fwd, tl, ad = take(d.forward_evaluations), take(d.tangent_linear_evaluations), take(d.adjoint_evaluations)
    return {"forward": float(fwd.mean()), "tangent_linear": float(tl.mean()), "adjoint": float(ad.mean()),
            "evaluations": float((tl + ad).mean()), "evaluations_max": float((tl + ad).max())}  # fmt: skip


def unrolled_counts(solver: UnrolledGaussNewton) -> dict:
    """Model runs of the K-layer solver from its structure (incl. the diagnostics' final gradient)."""
    k, c, fg = solver.n_layers, solver.cg_steps, int(solver.first_guess is not None)
    fwd, tl, ad = k + fg + 1, k * c, k + fg + 1 + k * c
    return {"forward": fwd, "tangent_linear": tl, "adjoint": ad, "evaluations": tl + ad}


def score_unrolled(solver, windows, truths) -> dict:
    """Test-window analysis RMSE, cost and model runs of an unrolled solver."""
    result = _solve_unrolled(solver, windows)
    rmse = np.asarray(_rmse(result.x0, truths))
    counts = unrolled_counts(solver)
    diag = _final_counts(result.diagnostics)
    assert diag["evaluations"] == counts["evaluations"], (diag, counts)  # structure = diagnostics
    d = result.diagnostics
    return {"analysis_rmse": float(rmse.mean()), "analysis_rmse_per_window": rmse.tolist(),
            "final_cost": float(jnp.mean(d.cost[:, -1])),
            "gradient_reduction": float(jnp.mean(d.gradient_norm[:, -1] / d.gradient_norm[:, 0])),
            **counts}  # fmt: skip


def score_classical(solver: GaussNewton, windows, truths) -> tuple[dict, np.ndarray]:
    result = _solve_classical(solver, windows)
    rmse = np.asarray(_rmse(result.x0, truths))
    cost = np.asarray(_costs(windows, result.v))
    entry = {"analysis_rmse": float(rmse.mean()), "analysis_rmse_per_window": rmse.tolist(),
             "final_cost": float(cost.mean()), "converged_flags": int(jnp.sum(result.converged)),
             "outer_iterations": float(jnp.mean(result.diagnostics.n_outer)),
             "cg_iterations": float(jnp.mean(jnp.sum(result.diagnostics.cg_iterations, axis=1))),
             **_final_counts(result.diagnostics)}  # fmt: skip
    return entry, cost


def classical_converged(bench: Bench, windows, truths, log) -> dict:
    """Sweep the CG tolerance (tight outer tolerances); the cheapest setting reaching J*(1 + 1e-6) on every window."""
    runs = {}
    for tol in bench.cg_tolerances:
        solver = GaussNewton(damping=bench.damping, max_outer=40, cg_max_steps=500, cg_tol=tol, gtol=1e-8, ftol=1e-10)
        t0 = time.perf_counter()
        runs[tol] = score_classical(solver, windows, truths)
        log(
            f"  classical cg_tol={tol:g}: rmse {runs[tol][0]['analysis_rmse']:.4f}, evals {runs[tol][0]['evaluations']:.1f}, "
            f"cost {runs[tol][0]['final_cost']:.6f} ({time.perf_counter() - t0:.1f}s)"
        )
    best = np.min(np.stack([c for _, c in runs.values()]), axis=0)
    goal = best * (1 + RELATIVE_COST_TOLERANCE)
    tried = []
    for tol, (entry, cost) in runs.items():
        tried.append({"cg_tol": tol, "reached_on_every_window": bool(np.all(cost <= goal)), **entry})
    ok = [t for t in tried if t["reached_on_every_window"]]
    chosen = min(ok, key=lambda t: t["evaluations"])
    return {"chosen": chosen, "settings_tried": tried, "best_cost_mean": float(best.mean())}


def classical_at_budget(bench: Bench, budget: float, windows, truths, log, preconditioner=None) -> dict:
    """Classical GN with exactly-truncated CG (cg_tol = 0) at ≤ `budget` TL + adjoint runs: every outer/CG split.

    `preconditioner`: an inner-loop preconditioner that costs no model run (e.g. `InnovationSpectral`), else plain CG.
    """
    tried = []
    tag = "" if preconditioner is None else f" ({type(preconditioner).__name__})"
    for outer in range(1, 9):
        # per outer step 2c Hessian runs (CG from zero) + 1 adjoint (gradient); plus the final gradient's adjoint
        per_step_fixed = 1
        c = int((budget - 1 - outer * per_step_fixed) // (2 * outer))
        if c < 1:
            break
        solver = GaussNewton(damping=bench.damping, max_outer=outer, cg_max_steps=c, cg_tol=0.0, gtol=0.0, ftol=0.0,
                             preconditioner=NoPreconditioner() if preconditioner is None else preconditioner)  # fmt: skip
        entry, _ = score_classical(solver, windows, truths)
        assert entry["evaluations_max"] <= budget, (entry, budget)
        tried.append({"max_outer": outer, "cg_steps": c, **entry})
        log(
            f"  classical{tag} at budget: {outer} outer × {c} CG: rmse {entry['analysis_rmse']:.4f}, "
            f"evals {entry['evaluations']:.0f}, cost {entry['final_cost']:.6f}"
        )
    chosen = min(tried, key=lambda t: t["final_cost"])
    return {"chosen": chosen, "selection": "lowest mean cost J (no truth used)", "settings_tried": tried}


def training_loss(kkt_weight: float = 1.0, mask_weight: float = 1.0):
    """Masked held-out misfit + KKT residual (masking only when kkt_weight = 0, KKT only when mask_weight = 0): no truth."""
    if kkt_weight == 0:
        return MaskedMisfit()
    if mask_weight == 0:
        return KKTResidual()
    return WeightedSum([(mask_weight, MaskedMisfit()), (kkt_weight, KKTResidual())])


def train_solver(
    bench: Bench,
    solver,
    train_w,
    val_w,
    key,
    steps: int | None = None,
    log=print,
    learning_rate: float | None = None,
    kkt_weight: float | None = None,
):
    """Train on masking + KKT (Adam, cosine schedule, clipping, early stopping on validation windows).

    The initial parameters are validated too (step 0, the same validation split as `train` uses): when no trained
    iterate beats them, the initial solver is returned (`train` itself starts its best validation at +inf).
    """
    steps = bench.train_steps if steps is None else steps
    lr = bench.learning_rate if learning_rate is None else learning_rate
    kkt = bench.kkt_weight if kkt_weight is None else kkt_weight
    trainer = Trainer(training_loss(kkt, bench.mask_weight), adam(lr, steps, warmup_steps=min(10, steps // 10), clip_norm=1.0),
                      RandomSplit(0.2), Unrolled(), batch_size=bench.batch_size, validate_every=10,
                      patience=bench.patience, checkpoint_every=10**9)  # fmt: skip
    every = max(steps // 10, 1)
    quiet = lambda s: log(s) if int(s.split()[1].split("/")[0]) % every == 0 else None  # noqa: E731
    t0 = time.perf_counter()
    initial = float(validation_loss(trainer, solver, val_w, None, jax.random.fold_in(key, 2**31 - 1)))
    log(f"  lr {lr:g}: validation at step 0 {initial:.4g}")
    result = train(trainer, solver, train_w, steps, key, val_w, log=quiet)
    record = [(0, initial), *result.validation]
    if not float(result.state.best_validation) < initial:  # nothing trained beat the initial parameters
        result = TrainResult(solver=solver, state=result.state, losses=result.losses, validation=record)
    else:
        result = TrainResult(solver=result.solver, state=result.state, losses=result.losses, validation=record)
    return result, time.perf_counter() - t0


def _first(windows):
    """The first of a stack of windows."""
    return jax.tree_util.tree_map(lambda x: x[0] if eqx.is_array(x) else x, windows)


def learned_solver(bench: Bench, key, correction=True, first_guess=True, layers=None, cg_steps=None, windows=None):
    """The untrained solver; its CG preconditioner (if the bench has one) starts from the training windows' Hessian."""
    corr, fg = bench.make_networks(key)
    if bench.preconditioner is not None and windows is None:
        raise ValueError(
            f"{bench.name}: its learned preconditioner is initialised from training windows; pass windows="
        )
    return UnrolledGaussNewton(
        bench.layers if layers is None else layers, bench.cg_steps if cg_steps is None else cg_steps,
        damping=0.0, step=1.0, weight=1.0,
        correction=corr if correction else None, first_guess=fg if first_guess else None,
        preconditioner=bench.preconditioner(windows) if bench.preconditioner is not None else None,
    )  # fmt: skip


def _describe_preconditioner(p) -> dict | None:
    if p is None:
        return None
    if isinstance(p, SpectralScaling):
        return {"kind": "SpectralScaling", "grid": list(p.shape), "radial_wavenumber_over_nyquist": p.nodes().tolist(),
                "gain": np.exp(np.asarray(p.log_gain)).tolist()}  # fmt: skip
    return {"kind": type(p).__name__}


def run_case(bench: Bench, log=print) -> dict:
    log(f"== {bench.name}: K = {bench.layers}, {bench.cg_steps} CG steps per layer")
    t0 = time.perf_counter()
    skipped = {"train": [], "validation": [], "test": []}
    train_w, _ = make_windows(bench, 100, bench.n_train, skipped["train"])
    val_w, _ = make_windows(bench, 200, bench.n_validation, skipped["validation"])
    test_w, test_t = make_windows(bench, bench.test_seed, bench.n_test, skipped["test"])
    log(f"  windows built ({time.perf_counter() - t0:.1f}s; skipped non-finite draws {skipped})")
    background = float(jnp.mean(_rmse(test_w.background, test_t)))
    converged = classical_converged(bench, test_w, test_t, log)
    initial = learned_solver(bench, jax.random.PRNGKey(7), first_guess=bench.first_guess, windows=train_w)
    untrained = score_unrolled(initial, test_w, test_t)
    log(f"  untrained (classical parameters) K={bench.layers}: rmse {untrained['analysis_rmse']:.4f}")
    # one criterion for every candidate (whatever its training loss weights): the error-normalised misfit to
    # held-out observations of the validation windows (a fixed random split), never the truth
    held_out = Trainer(MaskedMisfit(), adam(1e-3, 1), RandomSplit(0.2), Unrolled())
    candidates = []
    for kkt in bench.kkt_weights or (bench.kkt_weight,):
        for lr in bench.learning_rates or (bench.learning_rate,):
            result, train_s = train_solver(bench, initial, train_w, val_w, jax.random.PRNGKey(8), log=log, learning_rate=lr,
                                           kkt_weight=kkt)  # fmt: skip
            own = float(np.nanmin([v for _, v in result.validation]))  # its own loss, of the returned parameters
            selection = float(validation_loss(held_out, result.solver, val_w, None, jax.random.PRNGKey(9)))
            scored = score_unrolled(result.solver, test_w, test_t)
            log(
                f"  kkt {kkt:g}, lr {lr:g}: best validation {own:.4g}, held-out misfit {selection:.4g} "
                f"(test rmse {scored['analysis_rmse']:.4f}, reported only)"
            )
            candidates.append((selection, own, kkt, lr, result, train_s, scored))
    selection, own, kkt, lr, result, train_s, learned = min(candidates, key=lambda c: c[0])
    log(
        f"  learned (kkt {kkt:g}, lr {lr:g}, lowest held-out misfit): rmse {learned['analysis_rmse']:.4f}, "
        f"evals {learned['evaluations']} ({train_s:.0f}s training)"
    )
    tried = [{"kkt_weight": c_kkt, "learning_rate": c_lr, "held_out_misfit_validation": c_sel, "best_validation": c_own,
              "validation": c_res.validation, "train_steps_run": int(c_res.state.step),
              "skipped_steps": int(c_res.state.n_skipped), "train_s": c_s,
              "test_analysis_rmse_reported_not_used": c_sc["analysis_rmse"]}
             for c_sel, c_own, c_kkt, c_lr, c_res, c_s, c_sc in candidates]  # fmt: skip
    budget = classical_at_budget(bench, learned["evaluations"], test_w, test_t, log)
    extra = {}
    if bench.free_preconditioner is not None:  # what classical GN gets at the same budget without learning
        extra["classical_same_budget_preconditioned"] = {
            "preconditioner": repr(bench.free_preconditioner),
            **classical_at_budget(bench, learned["evaluations"], test_w, test_t, log, bench.free_preconditioner),
        }
    s = result.solver
    return {
        "setup": {**bench.setup, "windows": {"train": bench.n_train, "validation": bench.n_validation, "test": bench.n_test,
                                             "seeds": f"train 100, validation 200, test {bench.test_seed} (disjoint)",
                                             "skipped_non_finite_draws": skipped}},
        "background_rmse": background,
        "learned": {**learned, "layers": s.n_layers, "cg_steps_per_layer": s.cg_steps,
                    "damping": np.asarray(s.damping).tolist(), "step": np.asarray(s.step).tolist(),
                    "weight": np.asarray(s.weight).tolist(), "correction": "ConvNetwork(2 inputs, width 8/16, depth 2)",
                    "first_guess": "ConvNetwork(−∇J(0))" if s.first_guess is not None else None,
                    "preconditioner": _describe_preconditioner(s.preconditioner),
                    "training_loss": ("MaskedMisfit" if not kkt else "KKTResidual" if not bench.mask_weight
                                      else f"{bench.mask_weight:g} MaskedMisfit + {kkt:g} KKTResidual"),
                    "train_s": train_s, "train_steps_run": int(result.state.step),
                    "skipped_steps": int(result.state.n_skipped), "validation": result.validation,
                    "final_train_loss": result.losses[-1], "learning_rate": lr, "train_steps": bench.train_steps,
                    "batch_size": bench.batch_size, "kkt_weight": kkt, "patience": bench.patience,
                    "selection": "each candidate (KKT weight × learning rate) keeps its parameters of lowest validation "
                                 "loss (its own training loss, step 0 included); among candidates the lowest held-out "
                                 "masked misfit on the validation windows (MaskedMisfit, RandomSplit 0.2, fixed key) "
                                 "wins; no truth", "candidates_tried": tried},
        "untrained_same_layers": untrained,
        "classical_converged": converged,
        "classical_same_budget": budget,
        **extra,
    }  # fmt: skip


def case_targets(name: str, entry: dict) -> list[dict]:
    ours, conv, bud = entry["learned"], entry["classical_converged"]["chosen"], entry["classical_same_budget"]["chosen"]
    return [
        target(f"{name}: learned K≤4 analysis RMSE / converged classical RMSE", ours["analysis_rmse"] / conv["analysis_rmse"], "<=", RMSE_WITHIN),
        target(f"{name}: learned TL+adjoint runs / converged classical TL+adjoint runs", ours["evaluations"] / conv["evaluations"], "<=", EVALUATION_FRACTION),
        target(f"{name}: learned RMSE / classical RMSE at the same budget", ours["analysis_rmse"] / bud["analysis_rmse"], "<=", CLEARLY_BETTER),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Hypergradient cost
# ---------------------------------------------------------------------------------------------

STRATEGIES = {"unrolled": Unrolled(), "truncated_1": Truncated(1), "one_step": OneStep(), "implicit": Implicit()}


def hypergradient_costs(depths=(5, 20, 50, 100), n: int = 16, cg_steps: int = 5, log=print) -> dict:
    """Peak memory (XLA compiled memory analysis) and time of d(masked loss)/d(problem parameters) per strategy and K."""
    bench = advection_diffusion_bench(n)
    windows, _ = make_windows(bench, 400, 1)
    problem = _first(windows)
    params, static = eqx.partition(problem, eqx.is_inexact_array)
    key = jax.random.PRNGKey(0)
    out = {}
    for name, strategy in STRATEGIES.items():
        for k in depths:
            solver = UnrolledGaussNewton(k, cg_steps, weight=1.0)

            def loss(p, solver=solver, strategy=strategy):
                prob = eqx.combine(p, static)
                return window_loss(MaskedMisfit(), lambda q: strategy.analyse(solver, q), prob, key, RandomSplit(0.2))

            fn = jax.jit(jax.value_and_grad(loss))
            t0 = time.perf_counter()
            compiled = fn.lower(params).compile()
            compile_s = time.perf_counter() - t0
            mem = compiled.memory_analysis()
            t0 = time.perf_counter()
            value, grad = jax.block_until_ready(compiled(params))
            best = time.perf_counter() - t0  # one run: K = 100 unrolled takes minutes on the shared machine
            peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            gnorm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grad))))
            out.setdefault(name, {})[str(k)] = {
                "peak_bytes": int(peak), "temp_bytes": int(mem.temp_size_in_bytes),
                "argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
                "run_s": best, "compile_s": compile_s, "loss": float(value), "gradient_norm": gnorm,
            }  # fmt: skip
            log(f"  {name} K={k}: peak {peak / 2**20:.2f} MiB, {best:.3f}s, |grad| {gnorm:.4g}")
    return {
        "setup": {"case": bench.name, "control_size": n * n, "cg_steps_per_layer": cg_steps, "loss": "MaskedMisfit, RandomSplit(0.2)",
                  "differentiated_with_respect_to": "every floating-point array of the 4D-Var problem (background, B, "
                  "observation values and errors, model velocity and diffusivity)",
                  "memory": "XLA compiled memory analysis of the jitted value_and_grad on CPU: temp + argument + output "
                  "bytes (deterministic; not a sampled process peak)", "control_bytes": 8 * n * n,
                  "time": "one run after compilation (shared 2-core machine: noisy)"},
        "strategies": out,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------


CASES = {"advection_diffusion": advection_diffusion_bench, "burgers": burgers_bench, "lorenz96": lorenz96_bench}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--hypergradients", action="store_true", help="also measure the hypergradient strategies' cost")
    parser.add_argument("--burgers-n", type=int, default=16, help="2-D Burgers grid (32² costs 8× 16² per run)")
    parser.add_argument("--burgers-layers", type=int, default=1)
    parser.add_argument("--burgers-cg-steps", type=int, default=7)
    parser.add_argument("--burgers-sigma-o", type=float, default=0.1, help="observation error (σ_b = 0.2)")
    parser.add_argument("--burgers-fraction", type=float, default=0.5, help="fraction of cells observed per time")
    parser.add_argument("--burgers-train-steps", type=int, default=150)
    parser.add_argument("--burgers-train-windows", type=int, default=32)
    parser.add_argument("--burgers-learning-rates", type=float, nargs="+", default=[1e-2])
    parser.add_argument(
        "--burgers-probed-preconditioner",
        action="store_true",
        help="start the learned CG preconditioner from a probed Hessian fit instead of P = I",
    )
    parser.add_argument("--advection-diffusion-layers", type=int, default=1)
    parser.add_argument("--advection-diffusion-cg-steps", type=int, default=2)
    parser.add_argument("--lorenz96-layers", type=int, default=3)
    parser.add_argument("--lorenz96-cg-steps", type=int, default=3)
    parser.add_argument(
        "--lorenz96-learning-rates",
        type=float,
        nargs="+",
        default=[1e-3, 3e-3],
        help="Adam peak rates tried; the one with the lowest validation loss is kept",
    )
    parser.add_argument("--lorenz96-train-steps", type=int, default=300)
    parser.add_argument("--lorenz96-normalise", action="store_true", help="conv nets on RMS-normalised inputs")
    parser.add_argument("--lorenz96-mask-weight", type=float, default=1.0, help="0: train on the KKT residual only")
    parser.add_argument(
        "--lorenz96-kkt-weights",
        type=float,
        nargs="+",
        default=[1.0, 10.0],
        help="weights of the KKT residual tried (selection: held-out misfit on validation windows)",
    )
    parser.add_argument("--output", default="unrolled")
    parser.add_argument("--merge", action="store_true", help="keep the other cases of an existing results file")
    args = parser.parse_args()
    log = lambda s: print(s, flush=True)  # noqa: E731
    cases, targets, extra = {}, [], {"settings": vars(args), "command": " ".join(["python", *sys.argv])}
    for name in args.cases:
        if name == "burgers":
            bench = burgers_bench(
                args.burgers_n,
                args.burgers_layers,
                args.burgers_cg_steps,
                args.burgers_sigma_o,
                args.burgers_train_steps,
                args.burgers_probed_preconditioner,
                args.burgers_train_windows,
                tuple(args.burgers_learning_rates),
                args.burgers_fraction,
            )
        elif name == "lorenz96":
            bench = lorenz96_bench(args.lorenz96_layers, args.lorenz96_cg_steps, learning_rates=tuple(args.lorenz96_learning_rates),
                                   train_steps=args.lorenz96_train_steps, normalise=args.lorenz96_normalise,
                                   mask_weight=args.lorenz96_mask_weight, kkt_weights=tuple(args.lorenz96_kkt_weights))  # fmt: skip
        else:
            bench = advection_diffusion_bench(64, args.advection_diffusion_layers, args.advection_diffusion_cg_steps)
        entry = cases[bench.name] = {**run_case(bench, log), "command": " ".join(["python", *sys.argv])}
        targets += case_targets(bench.name, entry)
    if args.hypergradients:
        log("== hypergradient cost")
        hg = extra["hypergradients"] = hypergradient_costs(log=log)
        s = hg["strategies"]
        targets.append(
            target(
                "hypergradients: implicit peak memory K=100 / K=5",
                s["implicit"]["100"]["peak_bytes"] / s["implicit"]["5"]["peak_bytes"],
                "<=",
                1.5,
            )
        )
        slope = (s["unrolled"]["100"]["peak_bytes"] - s["unrolled"]["5"]["peak_bytes"]) / 95
        targets.append(
            target(
                "hypergradients: unrolled peak memory growth per layer (K=5→100) / control bytes (one checkpointed control per layer)",
                slope / hg["setup"]["control_bytes"],
                ">=",
                0.9,
            )
        )
        hg["memory_growth_bytes_per_layer"] = {
            name: (s[name]["100"]["peak_bytes"] - s[name]["5"]["peak_bytes"]) / 95 for name in s
        }
    extra["command"] = " ".join(["python", *sys.argv])
    extra["protocol"] = {
        "training": "masking (RandomSplit 0.2, fresh per step) + KKT residual, weights 1:1 unless a case's "
        "learned.training_loss says otherwise; no truth; Adam with warm-up "
        "and cosine decay, clip 1.0; early stopping on validation windows (same loss; the initial parameters are "
        "validated too and kept if nothing trained beats them); with several learning rates, the one with the lowest "
        "validation loss",
        "test": "held-out windows never seen in training or validation; RMSE of x0 against the truth, mean over windows",
        "design_selection": "each case's design point (K, CG steps, training settings; for 2-D Burgers also the observing "
        "density and σ_o) was chosen after exploratory runs (unrolled_exploration/) scored on the seed-300 test windows; "
        "2-D Burgers, whose design was settled last, is scored on 16 fresh windows (seed 500) never used before",
        "converged": f"cheapest CG tolerance reaching J <= J*(1 + {RELATIVE_COST_TOLERANCE:g}) on every test window",
        "same_budget": "classical GN, exactly truncated CG, every outer/CG split within the learned solver's TL+adjoint "
        "runs; the split with the lowest mean cost J is reported (all splits listed)",
        "clearly_better": f"RMSE ratio <= {CLEARLY_BETTER}",
        "machine_load": "2-core machine shared with other jobs",
    }  # fmt: skip
    previous = RESULTS / f"{args.output}.json"
    if args.merge and previous.exists():  # one case per run on a shared machine: keep the entries of earlier runs
        old = json.loads(previous.read_text())
        fresh = [t["name"].split(":")[0] for t in targets]
        targets = [t for t in old["targets"] if t["name"].split(":")[0] not in fresh] + targets
        cases = {**old["cases"], **cases}
        kept = {
            k: v for k, v in old.items() if k not in ("machine", "commit", "cases", "targets", "command", "settings")
        }
        extra = {**kept, **extra, "commands": [*old.get("commands", [old.get("command")]), extra["command"]]}
    path = write_results(args.output, cases, targets, extra=extra)
    print_targets(targets, path)


if __name__ == "__main__":
    main()
