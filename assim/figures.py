"""Figures of a run (matplotlib, Agg): states with observation locations, convergence, cycling errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from assim.case import Experiment, Outcome  # noqa: E402


def states_figure(exp: Experiment, out: Outcome, path: Path) -> None:
    """Truth, background and analysis at the first time (maps in 2-D, curves in 1-D), observed points marked."""
    fields = [("background", out.background[0]), ("analysis", out.analysis[0])]
    if out.truth is not None:  # twin experiments
        fields.insert(0, ("truth", out.truth[0]))
    coords = list(exp.grid.coords().values())
    locs = np.asarray(exp.obs_locations).reshape(-1, exp.grid.ndim)  # tracks: every time's points
    if np.shape(out.obs_values)[-1] == len(locs):  # one location per column: keep those observed at least once
        locs = locs[np.any(np.isfinite(out.obs_values), axis=0)]
    locs = locs[np.all(np.isfinite(locs), axis=1)]  # table padding slots
    if exp.grid.ndim == 2:
        lo = min(float(np.min(f)) for _, f in fields)
        hi = max(float(np.max(f)) for _, f in fields)
        fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.8), constrained_layout=True)
        for ax, (name, f) in zip(axes, fields):
            im = ax.pcolormesh(coords[1], coords[0], f, vmin=lo, vmax=hi, shading="nearest", cmap="viridis")
            ax.scatter(locs[:, 1], locs[:, 0], s=6, c="w", edgecolors="k", linewidths=0.3, label="observed")
            ax.set_title(name)
            ax.set_xlabel(exp.grid.dims[1])
            ax.set_aspect("equal")
        axes[0].set_ylabel(exp.grid.dims[0])
        fig.colorbar(im, ax=axes, shrink=0.8)
    else:
        fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
        x = coords[0]
        for name, f in fields:
            ax.plot(x, f, label=name)
        ref, what = fields[0]
        ax.plot(locs[:, 0], np.interp(locs[:, 0], x, what), "k.", label=f"observed points ({ref})")
        ax.set_xlabel("x")
        ax.legend()
    fig.suptitle(f"{exp.case.name}: initial state" if exp.case.cycling is None else f"{exp.case.name}: first window")
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def convergence_figure(out: Outcome, path: Path) -> None:
    """Cost and gradient norm per Gauss-Newton outer iteration (single window)."""
    d = out.diagnostics
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    k = np.arange(len(d["cost"]))
    a.semilogy(k, d["cost"], "o-", label="J")
    a.semilogy(k, d["cost_observation"], "s--", label="J_o")
    a.set_xlabel("outer iteration")
    a.set_ylabel("cost")
    a.legend()
    b.semilogy(k, d["gradient_norm"], "o-")
    b.set_xlabel("outer iteration")
    b.set_ylabel("‖∇J‖")
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def cycling_figure(exp: Experiment, out: Outcome, path: Path) -> None:
    """Background, analysis and free-run RMSE against the truth per window, with the observation noise."""
    d = out.diagnostics
    t = out.state_steps * exp.case.time.dt
    fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
    ax.plot(t, d["background_rmse"], "o-", label="background")
    ax.plot(t, d["analysis_rmse"], "s-", label="analysis")
    ax.plot(t, d["free_run_rmse"], "--", label="free run")
    ax.axhline(exp.case.observations.noise, color="k", lw=0.8, ls=":", label="observation σ")
    ax.set_xlabel("window start time")
    ax.set_ylabel("RMSE vs truth")
    ax.set_yscale("log")
    ax.legend()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def parameters_figure(name: str, parameters: dict[str, dict], path: Path) -> None:
    """Discovered parameters: prior (central value, 68 % interval), estimate ± 1σ and 2σ, and the truth."""
    fig, axes = plt.subplots(1, len(parameters), figsize=(3.2 * len(parameters) + 0.5, 3.6), constrained_layout=True,
                             squeeze=False)  # fmt: skip
    for ax, (pname, r) in zip(axes[0], parameters.items()):
        prior = r["prior"]
        lo, hi = prior["interval_68"]
        ax.errorbar([0], [prior["central"]], yerr=[[prior["central"] - lo], [hi - prior["central"]]], fmt="s",
                    color="0.5", capsize=6, label="prior (68 %)")  # fmt: skip
        ax.errorbar([1], [r["estimate"]], yerr=[2 * r["std"]], fmt="none", ecolor="C0", alpha=0.4, capsize=8,
                    label="estimate ± 2σ")  # fmt: skip
        ax.errorbar([1], [r["estimate"]], yerr=[r["std"]], fmt="o", color="C0", capsize=5, label="estimate ± 1σ")
        ax.axhline(r["truth"], color="k", ls="--", lw=1, label="truth")
        ax.set_xticks([0, 1], ["prior", "posterior"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_title(f"{pname}: z = {r['z_score']:+.2f}")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{name}: discovered parameters (Gauss-Newton posterior)")
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def write_figures(exp: Experiment, out: Outcome, path_for) -> list[str]:
    """Draw every figure of a run; `path_for(name)` gives the path to write `name` to. Returns the names."""
    names = ["states.png"]
    states_figure(exp, out, path_for("states.png"))
    if exp.case.cycling is None:
        convergence_figure(out, path_for("convergence.png"))
        names.append("convergence.png")
    else:
        cycling_figure(exp, out, path_for("errors.png"))
        names.append("errors.png")
    return names
