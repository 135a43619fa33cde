"""Ablation of the learned unrolled Gauss-Newton at fixed depth K: what each learned ingredient buys.

Run: python benchmarks/ablation.py [--layers 3] [--cg-steps 4] [--steps 150]
Writes benchmarks/results/ablation.json and ablation.png.

On Lorenz-96 (N = 40, benchmarks/unrolled.py's windows, small sets: 32 training, 8 validation, 16 test windows), four
solvers with the same K layers and CG steps per layer, hence the same model-run count (without first guess):
  1. classical GN with hand-tuned fixed parameters: one (α, μ) for every layer, the pair of a grid with the lowest
     validation loss (masking + KKT, no truth);
  2. + learned per-layer scalars μ_k, α_k, λ_k;
  3. + the learned increment correction (periodic conv net);
  4. + the learned first guess (warm start; costs one forward + one adjoint run more).
Training: masking + KKT only, the same optimiser and steps for 2–4. Scored on test windows against the truth, next
to classical Gauss-Newton run to convergence.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("EQX_ON_ERROR", "nan")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from assim.learned.losses import RandomSplit  # noqa: E402
from assim.learned.training import Trainer, adam, validation_loss  # noqa: E402
from assim.learned.unrolled import UnrolledGaussNewton  # noqa: E402
from benchmarks.common import RESULTS, print_targets, target, write_results  # noqa: E402
from benchmarks.unrolled import (  # noqa: E402
    classical_converged,
    learned_solver,
    lorenz96_bench,
    make_windows,
    score_unrolled,
    train_solver,
    training_loss,
)

STEPS = (0.6, 0.8, 1.0, 1.2, 1.4)
DAMPINGS = (0.0, 0.3, 1.0, 3.0)


def hand_tuned(layers: int, cg_steps: int, val_w, key) -> tuple[UnrolledGaussNewton, list[dict]]:
    """The (α, μ) of the grid with the lowest validation loss (masking + KKT)."""
    trainer = Trainer(training_loss(), adam(0.0, 1), RandomSplit(0.2))
    grid = []
    for a in STEPS:
        for m in DAMPINGS:
            solver = UnrolledGaussNewton(layers, cg_steps, damping=m, step=a, weight=1.0)
            grid.append(
                {"step": a, "damping": m, "validation_loss": float(validation_loss(trainer, solver, val_w, None, key))}
            )
    best = min(grid, key=lambda g: g["validation_loss"])
    return UnrolledGaussNewton(layers, cg_steps, damping=best["damping"], step=best["step"], weight=1.0), grid


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--cg-steps", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150, help="training steps of each learned variant")
    args = parser.parse_args()
    log = lambda s: print(s, flush=True)  # noqa: E731
    bench = lorenz96_bench(args.layers, args.cg_steps)
    bench.n_train, bench.n_validation, bench.n_test = 32, 8, 16
    train_w, _ = make_windows(bench, 100, bench.n_train)
    val_w, _ = make_windows(bench, 200, bench.n_validation)
    test_w, test_t = make_windows(bench, 300, bench.n_test)
    key = jax.random.PRNGKey(8)
    variants = {}
    solver, grid = hand_tuned(args.layers, args.cg_steps, val_w, jax.random.fold_in(key, 2**31 - 1))
    variants["classical_hand_tuned"] = {**score_unrolled(solver, test_w, test_t), "grid": grid,
                                        "step": float(solver.step[0]), "damping": float(solver.damping[0])}  # fmt: skip
    log(
        f"hand-tuned: α={float(solver.step[0]):.2f} μ={float(solver.damping[0]):.2f} rmse {variants['classical_hand_tuned']['analysis_rmse']:.4f}"
    )
    configs = {
        "learned_scalars": dict(correction=False, first_guess=False),
        "learned_scalars_correction": dict(correction=True, first_guess=False),
        "learned_scalars_correction_warm_start": dict(correction=True, first_guess=True),
    }
    for name, cfg in configs.items():
        initial = learned_solver(bench, jax.random.PRNGKey(7), **cfg)
        result, train_s = train_solver(bench, initial, train_w, val_w, key, args.steps, log=lambda s: None)
        s = result.solver
        variants[name] = {**score_unrolled(s, test_w, test_t), "train_s": train_s,
                          "train_steps_run": int(result.state.step), "validation": result.validation,
                          "step": s.step.tolist(), "damping": s.damping.tolist(), "weight": s.weight.tolist()}  # fmt: skip
        log(f"{name}: rmse {variants[name]['analysis_rmse']:.4f} ({train_s:.0f}s)")
    converged = classical_converged(bench, test_w, test_t, log)["chosen"]
    background = float(jax.numpy.mean(jax.numpy.sqrt(jax.numpy.mean((test_w.background - test_t) ** 2, axis=1))))
    names = list(variants)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(len(names)), [variants[n]["analysis_rmse"] for n in names], color="tab:blue")
    ax.axhline(
        converged["analysis_rmse"],
        color="k",
        ls="--",
        label=f"classical converged ({converged['evaluations']:.0f} runs)",
    )
    ax.axhline(background, color="tab:red", ls=":", label="background")
    ax.set_xticks(range(len(names)), ["hand-tuned\nclassical", "+ learned\nμ, α, λ", "+ correction", "+ warm start"])
    for i, n in enumerate(names):
        ax.text(
            i, variants[n]["analysis_rmse"], f"{variants[n]['evaluations']} runs", ha="center", va="bottom", fontsize=8
        )
    ax.set_ylabel("test analysis RMSE (x0)")
    ax.set_title(f"Lorenz-96 N=40, K={args.layers} layers × {args.cg_steps} CG steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "ablation.png", dpi=120)
    targets = [
        target("ablation: learned scalars RMSE / hand-tuned classical RMSE", variants["learned_scalars"]["analysis_rmse"]
               / variants["classical_hand_tuned"]["analysis_rmse"], "<", 1.0),
        target("ablation: full learned solver RMSE / hand-tuned classical RMSE",
               variants["learned_scalars_correction_warm_start"]["analysis_rmse"] / variants["classical_hand_tuned"]["analysis_rmse"], "<", 1.0),
    ]  # fmt: skip
    cases = {"lorenz96_40": {"setup": {**bench.setup, "layers": args.layers, "cg_steps": args.cg_steps,
                                       "windows": {"train": 32, "validation": 8, "test": 16}},
                             "background_rmse": background, "classical_converged": converged, "variants": variants}}  # fmt: skip
    path = write_results("ablation", cases, targets, extra={"settings": vars(args), "command": " ".join(["python", *sys.argv]),
                                                         "figure": "benchmarks/results/ablation.png"})  # fmt: skip
    print_targets(targets, path)


if __name__ == "__main__":
    main()
