"""Figures of a run (matplotlib, Agg): states with observation locations, convergence, cycling errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from assim.case.experiment import Experiment, Outcome  # noqa: E402


def _inside(exp: Experiment, out: Outcome) -> np.ndarray:
    """Observed points inside the domain (tracks: every time's points; table padding and points off the grid dropped)."""
    locs = np.asarray(exp.obs_locations)
    used = np.isfinite(out.obs_values)  # masked observations (land, missing data) are not drawn
    if locs.ndim == 3 and locs.shape[:2] == used.shape:  # tables and tracks: a position per time and slot
        locs = locs[used]
    elif len(locs) == used.shape[-1]:  # one location per column: keep those observed at least once
        locs = locs[np.any(used, axis=0)]
    locs = locs.reshape(-1, exp.grid.ndim)
    locs = locs[np.all(np.isfinite(locs), axis=1)]
    for axis, centres in enumerate(exp.grid.coords().values()):
        half = 0.5 * abs(centres[1] - centres[0]) if len(centres) > 1 else 0.0
        locs = locs[(locs[:, axis] >= centres[0] - half) & (locs[:, axis] <= centres[-1] + half)]
    return locs


def _map_axes(fig, n: int, latlon: bool, columns: int):
    """n map panels in rows of `columns`: cartopy PlateCarree with coastlines where cartopy is installed (lat-lon)."""
    if latlon:
        try:
            import cartopy.crs as ccrs  # pyright: ignore[reportMissingImports]  (optional extra)
        except ImportError:
            ccrs = None
        if ccrs is not None:
            rows = -(-n // columns)
            axes = [fig.add_subplot(rows, columns, i + 1, projection=ccrs.PlateCarree(central_longitude=180))
                    for i in range(n)]  # fmt: skip
            for ax in axes:
                ax.coastlines(lw=0.5)
            return axes, {"transform": ccrs.PlateCarree()}
    return [fig.add_subplot(-(-n // columns), columns, i + 1) for i in range(n)], {}


def states_figure(exp: Experiment, out: Outcome, path: Path) -> None:
    """Truth, background, analysis, increment and error at the first time (maps in 2-D, curves in 1-D)."""
    fields = [("background", out.background[0]), ("analysis", out.analysis[0])]
    if out.truth is not None:  # twin experiments
        fields.insert(0, ("truth", out.truth[0]))
    coords = list(exp.grid.coords().values())
    locs = _inside(exp, out)
    units = exp.state_attrs.get("units", "")
    if exp.grid.ndim == 2:
        latlon = tuple(exp.grid.dims) == ("lat", "lon")
        diffs = [("increment (analysis − background)", out.analysis[0] - out.background[0])]
        if out.truth is not None:
            diffs += [("background − truth", out.background[0] - out.truth[0]),
                      ("analysis − truth", out.analysis[0] - out.truth[0])]  # fmt: skip
        n, columns = len(fields) + len(diffs), len(fields)  # states above, differences below
        width = 3.6 * (len(coords[1]) / len(coords[0])) ** 0.5 if latlon else 3.6
        fig = plt.figure(figsize=(min(max(width, 3.0), 6.0) * columns + 1, 3.4 * -(-n // columns)),
                         constrained_layout=True)  # fmt: skip
        axes, transform = _map_axes(fig, n, latlon, columns)
        lo = min(float(np.nanmin(f)) for _, f in fields)
        hi = max(float(np.nanmax(f)) for _, f in fields)
        span = max(float(np.nanmax(np.abs(d))) for _, d in diffs) or 1.0
        for i, (ax, (name, f)) in enumerate(zip(axes, fields + diffs)):
            state = i < len(fields)
            cmap = plt.get_cmap("viridis" if state else "RdBu_r").with_extremes(bad="0.8")  # masked (land) cells
            limits = {"vmin": lo, "vmax": hi} if state else {"vmin": -span, "vmax": span}
            im = ax.pcolormesh(coords[1], coords[0], np.ma.masked_invalid(f), shading="nearest", cmap=cmap,
                               **limits, **transform)  # fmt: skip
            if state or i == len(fields):
                ax.scatter(locs[:, 1], locs[:, 0], s=5, c="w", edgecolors="k", linewidths=0.3, **transform)
            ax.set_title(name, fontsize=9)
            if not transform:
                ax.set_xlabel(exp.grid.dims[1])
                ax.set_aspect(1.0 / np.cos(np.deg2rad(np.mean(coords[0]))) if latlon else "equal")
            if i == len(fields) - 1 or i == n - 1:
                fig.colorbar(im, ax=axes[: len(fields)] if state else axes[len(fields) :], shrink=0.8, label=units)
        if not transform:
            axes[0].set_ylabel(exp.grid.dims[0])
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
    if exp.case.observations.noise is not None:  # None: the errors come from observation files
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
