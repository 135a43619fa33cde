"""Depth study of the learned unrolled Gauss-Newton: test analysis error against the number of layers K at two
observation-noise levels (the bias-variance trade-off of a truncated solve).

Run: python benchmarks/depth.py [--depths 1 2 4 8] [--learned-depths 2 4] [--noise 0.5 2.0] [--steps 20]
Writes benchmarks/results/depth.json and depth.png.

Lorenz-96 (N = 40, benchmarks/unrolled.py's windows, small sets: 32 training, 8 validation, 16 test windows) with
observation error σ_o at each level (B unchanged). For every K: classical unrolled GN (α = 1, μ = 0, no learning); at
the `--learned-depths` the learned solver (per-layer μ_k, α_k, λ_k, trained with masking + KKT only, no truth; few
steps: the shared machine's time box), both with `--cg-steps` CG steps per layer; classical Gauss-Newton run to
convergence is the reference line.
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
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from assim.learned.unrolled import UnrolledGaussNewton  # noqa: E402
from benchmarks.common import RESULTS, print_targets, target, write_results  # noqa: E402
from benchmarks.unrolled import (  # noqa: E402
    classical_converged,
    learned_solver,
    lorenz96_bench,
    make_windows,
    score_unrolled,
    train_solver,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--noise", type=float, nargs=2, default=[0.5, 2.0], help="two observation error std σ_o")
    parser.add_argument("--cg-steps", type=int, default=4)
    parser.add_argument("--learned-depths", type=int, nargs="*", default=[2, 4], help="K at which a solver is trained")
    parser.add_argument("--steps", type=int, default=20, help="training steps per K")
    args = parser.parse_args()
    log = lambda s: print(s, flush=True)  # noqa: E731
    cases, targets = {}, []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, sigma in zip(axes, args.noise):
        bench = lorenz96_bench(sigma_o=sigma)
        bench.n_train, bench.n_validation, bench.n_test = 32, 8, 16
        bench.cg_tolerances = (1e-1, 1e-2)  # reference only: the converged analysis is the same at either
        train_w, _ = make_windows(bench, 100, bench.n_train)
        val_w, _ = make_windows(bench, 200, bench.n_validation)
        test_w, test_t = make_windows(bench, 300, bench.n_test)
        background = float(jnp.mean(jnp.sqrt(jnp.mean((test_w.background - test_t) ** 2, axis=1))))
        converged = classical_converged(bench, test_w, test_t, log)["chosen"]
        rows = []
        for k in args.depths:
            classical = score_unrolled(UnrolledGaussNewton(k, args.cg_steps, weight=1.0), test_w, test_t)
            row = {"layers": k, "evaluations": classical["evaluations"], "classical_unrolled_rmse": classical["analysis_rmse"],
                   "classical_gradient_reduction": classical["gradient_reduction"]}  # fmt: skip
            if k in args.learned_depths:
                initial = learned_solver(bench, jax.random.PRNGKey(7), correction=False, first_guess=False, layers=k,
                                         cg_steps=args.cg_steps)  # fmt: skip
                result, train_s = train_solver(
                    bench, initial, train_w, val_w, jax.random.PRNGKey(8), args.steps, log=lambda s: None
                )
                learned = score_unrolled(result.solver, test_w, test_t)
                row.update({"learned_rmse": learned["analysis_rmse"], "learned_gradient_reduction": learned["gradient_reduction"],
                            "train_s": train_s, "train_steps_run": int(result.state.step),
                            "learned_step": result.solver.step.tolist(), "learned_damping": result.solver.damping.tolist(),
                            "learned_weight": result.solver.weight.tolist()})  # fmt: skip
            rows.append(row)
            log(f"σ_o={sigma} K={k}: classical {classical['analysis_rmse']:.4f}, learned {row.get('learned_rmse')}")
        ks = [r["layers"] for r in rows]
        ax.plot(ks, [r["classical_unrolled_rmse"] for r in rows], "o-", label="classical GN, K layers")
        lk = [r for r in rows if "learned_rmse" in r]
        ax.plot([r["layers"] for r in lk], [r["learned_rmse"] for r in lk], "s", ms=8, label="learned μ_k, α_k, λ_k")
        ax.axhline(converged["analysis_rmse"], color="k", ls="--", label="classical converged")
        ax.set_xlabel(f"layers K ({args.cg_steps} CG steps each)")
        ax.set_ylabel("test analysis RMSE (x0)")
        ax.set_title(f"Lorenz-96 N=40, σ_o = {sigma} (σ_b = 1)")
        ax.legend(fontsize=8)
        name = f"lorenz96_40_sigma_o_{sigma:g}"
        cases[name] = {"setup": {**bench.setup, "cg_steps": args.cg_steps, "windows": {"train": 32, "validation": 8, "test": 16}},
                       "background_rmse": background, "classical_converged": converged, "depths": rows}  # fmt: skip
        best = min(rows, key=lambda r: r["classical_unrolled_rmse"])
        targets.append(
            target(
                f"{name}: best RMSE over K (classical unrolled) / converged classical RMSE",
                best["classical_unrolled_rmse"] / converged["analysis_rmse"],
                "<=",
                1.05,
            )
        )
        if lk:
            best = min(lk, key=lambda r: r["learned_rmse"])
            targets.append(
                target(
                    f"{name}: best learned RMSE over K / converged classical RMSE",
                    best["learned_rmse"] / converged["analysis_rmse"],
                    "<=",
                    1.05,
                )
            )
    fig.tight_layout()
    fig.savefig(RESULTS / "depth.png", dpi=120)
    path = write_results("depth", cases, targets, extra={"settings": vars(args), "command": " ".join(["python", *sys.argv]),
                                                       "figure": "benchmarks/results/depth.png"})  # fmt: skip
    print_targets(targets, path)


if __name__ == "__main__":
    main()
