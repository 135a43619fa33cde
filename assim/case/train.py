"""`assim train`: learn an unrolled Gauss-Newton solver from a case's windows with masking + KKT losses (no truth),
validate with early stopping, and evaluate it on unseen test windows next to classical Gauss-Newton.

Windows are samples of the case (`assim.case.build.build(case, sample)`): training 1 … n_train, validation and test the
next disjoint ranges. The test compares, per window, the learned solver with the case's classical solver run to
convergence and with classical Gauss-Newton stopped at the learned solver's budget (K outer iterations of
cg_steps CG iterations from zero: the same number of linearisations and of tangent-linear/adjoint model runs).
Outputs (written atomically): the solver
checkpoint, training.json, losses.png and summary.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from assim import compile_cache
from assim.case import build as case_module
from assim.case.config import Case, load_case_for_outputs
from assim.case.experiment import _primary, make_solver
from assim.case.memory import preflight
from assim.case.schema import TrainingConfig
from assim.case.solve import _rmse
from assim.errors import ConfigError
from assim.io.netcdf import AtomicOutputs, json_text, package_versions
from assim.io.outputs import check_directory
from assim.learned.hypergradients import OneStep, Truncated, Unrolled
from assim.learned.losses import (
    KKTResidual,
    MaskedMisfit,
    NoSplit,
    RandomSplit,
    WeightedSum,
)
from assim.learned.trained_solver import TrainedSolver, header, save_solver, skeleton
from assim.learned.training import Trainer, adam, stack_windows, train
from assim.problems.cost import StrongConstraint4DVar
from assim.progress import console, status
from assim.solvers.gauss_newton import GaussNewton, NoDamping


def _training(case: Case) -> TrainingConfig:
    """The case's [training] table (`train_case` refuses a case without one)."""
    assert case.training is not None, "a training case"
    return case.training


def sample_ranges(case: Case) -> dict[str, list[int]]:
    """Disjoint window samples of training, validation and test (sample 0, the case's own window, in none)."""
    t = _training(case)
    counts = {"train": t.train_windows, "validation": t.validation_windows, "test": t.test_windows}
    if case.data is not None and case.data.train is not None:  # named selections: the first windows of each
        from assim.case.data import dataset

        splits = dataset(case).splits
        short = [
            f"data.{n} has {len(splits[n])} samples, fewer than {k}" for n, k in counts.items() if len(splits[n]) < k
        ]
        if short:
            raise ConfigError(f"training: {'; '.join(short)}; lower the *_windows counts or select more samples")
        return {name: splits[name][:k] for name, k in counts.items()}
    edges = np.cumsum([1, *counts.values()])
    return {name: list(range(int(a), int(b))) for name, a, b in zip(counts, edges, edges[1:])}


def windows(case: Case, samples: list[int]) -> tuple[list[StrongConstraint4DVar], list]:
    """4D-Var problems and true initial states of the case's window samples."""
    problems, truths = [], []
    for i in samples:
        exp = case_module.build(case, i)
        twin = exp.twin
        problems.append(StrongConstraint4DVar(exp.model, twin.background, exp.covariance, twin.observations,
                                              n_steps=case.time.n_steps))  # fmt: skip
        truths.append(jax.tree_util.tree_map(lambda x: x[0], twin.truth))
    return problems, truths


def make_trainer(case: Case) -> Trainer:
    """Masking + KKT loss, observation split, hypergradient strategy and optimiser of the [training] table."""
    t = _training(case)
    terms = [(w, loss) for w, loss in ((t.masking_weight, MaskedMisfit()), (t.kkt_weight, KKTResidual())) if w > 0]
    split = RandomSplit(t.heldout_fraction) if t.masking_weight > 0 else NoSplit()
    h = t.hypergradient
    strategy = Truncated(h.layers) if h.kind == "truncated" else OneStep() if h.kind == "one_step" else Unrolled()
    return Trainer(WeightedSum(terms), adam(t.learning_rate, t.steps, clip_norm=t.clip_norm), split, strategy,
                   batch_size=t.batch_size, validate_every=t.validate_every, patience=t.patience,
                   checkpoint_every=t.steps, validate_initial=True)  # fmt: skip


def layer_parameters(solver) -> dict[str, list[float]]:
    """Per-layer μ_k, α_k, λ_k of an unrolled solver (plain floats, exact in JSON)."""
    return {"damping_mu": np.asarray(solver.damping).tolist(), "step_alpha": np.asarray(solver.step).tolist(),
            "weight_lambda": np.asarray(solver.weight).tolist()}  # fmt: skip


def _evaluations(d) -> dict[str, int]:
    k = int(d.n_outer)
    counts = {name: int(np.asarray(getattr(d, f"{name}_evaluations"))[k])
              for name in ("forward", "tangent_linear", "adjoint")}  # fmt: skip
    return {**counts, "total": sum(counts.values()), "outer_iterations": k}


def _primary_rmse(a, b) -> float:
    return _rmse(_primary(a), _primary(b))


class _Posed:
    """A classical solver run on the window posed with a trained solver's learned prior."""

    def __init__(self, trained, classical):
        self.trained, self.classical = trained, classical

    def solve(self, problem):
        return self.classical.solve(self.trained.posed(problem))


def evaluate(case: Case, solver, problems, truths) -> dict:
    """Test windows: analysis RMSE vs truth and model-run counts of the learned and the classical solvers."""
    t = _training(case)
    model = problems[0].model  # the inner model, if any, on the windows' grid
    classical = make_solver(case, grid=getattr(model, "grid", None), inflow=getattr(model, "inflow", None))
    budget = GaussNewton(NoDamping(), max_outer=t.layers, cg_max_steps=t.cg_steps, cg_tol=0.0, gtol=0.0, ftol=0.0)
    solvers = {"learned": TrainedSolver(solver), "classical_converged": classical, "classical_same_budget": budget}
    if solver.prior is not None:  # the converged classical analysis of the same learned-B problem
        solvers["classical_learned_b_converged"] = _Posed(solver, classical)
    per_window = []
    for problem, truth in zip(problems, truths):
        row: dict[str, Any] = {"background_rmse": _primary_rmse(problem.background, truth)}
        for name, s in solvers.items():
            result = s.solve(problem)
            d = result.diagnostics
            row[name] = {"analysis_rmse": _primary_rmse(result.x0, truth), "evaluations": _evaluations(d),
                         "final_gradient_norm": float(np.asarray(d.gradient_norm)[int(d.n_outer)])}  # fmt: skip
            if name.startswith("classical") and name.endswith("converged"):
                row[name]["converged"] = bool(result.converged)
        per_window.append(row)
    mean: dict[str, Any] = {"background_rmse": float(np.mean([r["background_rmse"] for r in per_window]))}
    for name in solvers:
        mean[name] = {"analysis_rmse": float(np.mean([r[name]["analysis_rmse"] for r in per_window])),
                      "evaluations": float(np.mean([r[name]["evaluations"]["total"] for r in per_window]))}  # fmt: skip
    learned, conv = mean["learned"], mean["classical_converged"]
    mean["learned_over_converged_rmse"] = learned["analysis_rmse"] / conv["analysis_rmse"]
    mean["learned_over_converged_evaluations"] = learned["evaluations"] / conv["evaluations"]
    mean["learned_over_same_budget_rmse"] = learned["analysis_rmse"] / mean["classical_same_budget"]["analysis_rmse"]
    return {"windows": per_window, "mean": mean}


def losses_figure(losses: list[float], validation: list[tuple[int, float]], path: Path, title: str) -> None:
    """Training loss per step and validation loss (held-out windows) against optimiser step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, "-", lw=1, label="training minibatch loss")
    if validation:
        ax.plot(*zip(*validation), "o-", label="validation loss (held-out windows)")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("masking + KKT loss")
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def summary_markdown(case: Case, report: dict) -> str:
    """A short report of the training run and the test comparison."""
    t, m = _training(case), report["test"]["mean"]
    rows = [("learned (unrolled)", m["learned"]), ("classical GN, converged", m["classical_converged"]),
            ("classical GN, same budget", m["classical_same_budget"])]  # fmt: skip
    if "classical_learned_b_converged" in m:
        rows.append(("classical GN with the learned B, converged", m["classical_learned_b_converged"]))
    lines = [f"# {case.name}: trained unrolled Gauss-Newton", "", case.description or "", "",
             f"- K = {t.layers} layers of {t.cg_steps} CG iterations; loss {t.masking_weight:g} × masking "
             f"(held-out fraction {t.heldout_fraction:g}) + {t.kkt_weight:g} × KKT; no truth used in training",
             f"- windows: {t.train_windows} training, {t.validation_windows} validation, {t.test_windows} test "
             f"(disjoint samples); {report['steps_run']} optimiser steps, {report['skipped_steps']} skipped, "
             f"stopped early: {report['stopped_early']}",
             f"- checkpoint: {report['checkpoint']}", "",
             f"Test windows (mean over {t.test_windows}; background RMSE {m['background_rmse']:.4g}):", "",
             "| solver | analysis RMSE | model evaluations (forward + TL + adjoint) |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {r['analysis_rmse']:.4g} | {r['evaluations']:.0f} |" for name, r in rows]
    p = report["parameters"]
    lines += ["", "Learned per-layer parameters:", "", "| layer | μ_k | α_k | λ_k |", "|---|---|---|---|"]
    lines += [f"| {k} | {mu:.4g} | {a:.4g} | {lam:.4g} |"
              for k, (mu, a, lam) in enumerate(zip(p["damping_mu"], p["step_alpha"], p["weight_lambda"]))]  # fmt: skip
    return "\n".join(lines) + "\n"


def train_case(
    path: str | Path, overrides: Sequence[str] = (), out_dir: str | Path | None = None, quiet: bool = False
) -> int:
    """Train the case's unrolled solver; the checkpoint and reports appear only if the whole run succeeds."""
    case, _, overrides = load_case_for_outputs(path, overrides, out_dir)
    preflight(case)  # a case too big for the machine (or --max-memory): refused before the work
    t = case.training
    if t is None:
        raise ConfigError("training: the case has no [training] table; add one (see cases/training.toml)")
    check_directory(case.outputs.directory)  # a file, an unwritable or a busy --out: refused before the work
    compile_cache.configure()  # before the first compilation: a repeated run loads its programs
    since = compile_cache.snapshot()
    start = time.perf_counter()
    timings = {}
    shown = console(False if quiet else None)  # stderr a terminal, not --quiet: a spinner naming the files read
    with status(f"{case.name}: reading the data and building the windows", shown):
        samples = sample_ranges(case)
        train_w, _ = windows(case, samples["train"])
        val_w, _ = windows(case, samples["validation"])
        test_w, test_truths = windows(case, samples["test"])
    timings["windows_s"] = time.perf_counter() - start
    control = train_w[0].zero_control()
    key = jax.random.PRNGKey(t.seed)
    initial = skeleton(t, control, jax.random.fold_in(key, 1), step=t.initial_step, damping=t.initial_damping,
                       grid=getattr(train_w[0].model, "grid", None))  # fmt: skip
    trainer = make_trainer(case)
    if not quiet:
        print(f"{case.name}: training K = {t.layers} layers on {t.train_windows} windows "
              f"({t.steps} steps, validation every {t.validate_every})")  # fmt: skip
    tic = time.perf_counter()
    result = train(trainer, initial, stack_windows(train_w), t.steps, jax.random.fold_in(key, 2),
                   validation_windows=stack_windows(val_w), progress=False if quiet else None)  # fmt: skip
    timings["train_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    test = evaluate(case, result.solver, test_w, test_truths)
    timings["test_s"] = time.perf_counter() - tic
    directory = Path(case.outputs.directory)
    checkpoint = directory / t.checkpoint
    state = result.state
    grid = list(jax.tree_util.tree_leaves(train_w[0].background)[0].shape)  # state shape of one component
    report = {
        "case": case.name, "model": case.model.kind, "grid": grid,
        "settings": t.model_dump(), "samples": samples, "checkpoint": str(checkpoint),
        "steps_run": int(state.step), "stopped_early": bool(state.stopped), "skipped_steps": int(state.n_skipped),
        "best_validation": float(state.best_validation), "losses": [float(x) for x in result.losses],
        "validation": [[int(s), float(v)] for s, v in result.validation],
        "initial_parameters": layer_parameters(initial), "parameters": layer_parameters(result.solver),
        "test": test, "package_versions": package_versions(),
    }  # fmt: skip
    head = header(t, control, case=case.name, model=case.model.kind, grid=report["grid"], steps=report["steps_run"])
    with AtomicOutputs(directory) as outputs, AtomicOutputs(checkpoint.parent) as saved:
        save_solver(saved.path(checkpoint.name), result.solver, head)
        names = [checkpoint.name if checkpoint.parent == directory else str(checkpoint), "training.json",
                 "summary.md"]  # fmt: skip
        if case.outputs.figures:
            losses_figure(report["losses"], report["validation"], outputs.path("losses.png"), case.name)
            names.append("losses.png")
        timings["total_s"] = time.perf_counter() - start
        report["timings_s"] = {**timings, **compile_cache.timings(since)}
        report["compilations"] = compile_cache.counts(since)
        outputs.write_text("training.json", json_text(report))
        outputs.write_text("summary.md", summary_markdown(case, report))
    if not quiet:
        m = test["mean"]
        print(f"{case.name}: test analysis RMSE learned {m['learned']['analysis_rmse']:.4g} "
              f"({m['learned']['evaluations']:.0f} model runs), classical converged "
              f"{m['classical_converged']['analysis_rmse']:.4g} ({m['classical_converged']['evaluations']:.0f}), "
              f"classical same budget {m['classical_same_budget']['analysis_rmse']:.4g}; background "
              f"{m['background_rmse']:.4g}")  # fmt: skip
        print(f"wrote {directory}/: {', '.join(names)}")
    return 0
