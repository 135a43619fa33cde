"""The `assim` command line: list, cycled runs, and failures that leave no partial output."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import assim.io.figures
from assim.cli import main
from assim.errors import ConvergenceError
from assim.solvers.gauss_newton import GaussNewton

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "cases" / "quickstart.toml"
TINY = ["--set", "grid.n=16", "--set", "time.n_steps=4", "--set", "observations.network.fraction=0.2"]


def test_list_names_every_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("advection_diffusion", "lorenz96", "random_fraction", "stations", "regular",
                 "spectral_gaussian", "diagonal", "gauss_newton", "levenberg_marquardt"):  # fmt: skip
        assert word in out


def test_console_script_reports_one_line_and_exit_code(tmp_path):
    """The installed entry point (a fresh process) exits non-zero with a single error line."""
    proc = subprocess.run(
        [sys.executable, "-m", "assim.cli", "validate", str(QUICKSTART), "--set", "observations.noise=-1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "assim: error: observations.noise: must be > 0 (got -1); set it to a value > 0\n"


def test_solver_failure_leaves_no_output(tmp_path, monkeypatch, capsys):
    def fail(self, problem, v0=None, *, throw=False):
        raise ConvergenceError("Gauss-Newton not converged (forced by the test)")

    monkeypatch.setattr(GaussNewton, "solve", fail)
    out = tmp_path / "out"
    assert main(["run", str(QUICKSTART), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err == "assim: error: Gauss-Newton not converged (forced by the test)\n"
    assert not list(tmp_path.rglob("*.nc")) and not list(tmp_path.rglob("*.part"))


def test_failure_while_writing_leaves_no_partial_netcdf(tmp_path, monkeypatch):
    """The netCDF is already written (under a temporary name) when the figures fail: nothing may remain."""
    written = []

    def fail(exp, outcome, path_for):
        written.extend(p.name for p in path_for.__self__.directory.iterdir())
        raise RuntimeError("disk full (forced by the test)")

    monkeypatch.setattr(assim.io.figures, "write_figures", fail)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="forced by the test"):
        main(["run", str(QUICKSTART), "--out", str(out), *TINY])
    assert any(n.startswith(".analysis.nc.") for n in written)  # the temporary netCDF existed mid-run
    assert not out.exists()  # the directory the failed run created is removed too


def test_lorenz96_cycling_run(tmp_path):
    out = tmp_path / "l96"
    args = ["run", str(ROOT / "cases" / "lorenz96.toml"), "--out", str(out), "-q", "--set", "grid.n=8",
            "--set", "time.n_steps=8", "--set", "cycling={window=4, shift=4, n_windows=2}",
            "--set", "model.spin_up=50", "--set", "solver.max_outer=8"]  # fmt: skip
    assert main(args) == 0
    assert (out / "errors.png").exists() and (out / "analysis.nc").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "cycling" and metrics["n_windows"] == 2
    with xr.open_dataset(out / "analysis.nc") as ds:
        assert ds.analysis.dims == ("window", "x") and ds.truth.dims == ("time", "x")
        np.testing.assert_array_equal(ds.x.values, np.arange(8.0))
        np.testing.assert_allclose(ds.window_time.values, [0.0, 0.2])
        # the first window's background is the twin's background, its error the stored background RMSE
        first = float(np.sqrt(((ds.background.isel(window=0) - ds.truth.isel(time=0)) ** 2).mean()))
        assert ds.solver_background_rmse.values[0] == pytest.approx(first, rel=1e-12)
        # window-averaged (a single window-start analysis, 2 steps before its first observation, may lose to its background)
        assert ds.solver_analysis_rmse.values.mean() < ds.solver_background_rmse.values.mean()
        # the accessor aligns window starts with the truth at those times
        np.testing.assert_allclose(ds.assim.rmse("analysis").values, ds.solver_analysis_rmse.values, rtol=1e-12)
        np.testing.assert_allclose(ds.assim.rmse("background").values, ds.solver_background_rmse.values, rtol=1e-12)


def test_shallow_water_run_writes_staggered_velocities(tmp_path):
    out = tmp_path / "sw"
    args = ["run", str(ROOT / "cases" / "shallow_water.toml"), "--out", str(out), "-q", "--set", "grid.n=8",
            "--set", "time.n_steps=2", "--set", "observations.network.fraction=0.5", "--set", "solver.max_outer=3",
            "--set", "outputs.figures=false"]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["analysis.nc", "metrics.json", "summary.md"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"background_rmse_u", "analysis_rmse_v"} <= set(metrics)
    assert metrics["analysis_rmse"] < metrics["background_rmse"]
    with xr.open_dataset(out / "analysis.nc") as ds:
        assert ds.truth.dims == ("time", "y", "x") and ds.truth.attrs["units"] == "m"
        assert ds.analysis_u.dims == ("time", "y", "x_u") and ds.analysis_v.dims == ("time", "y_v", "x")
        assert ds.truth_u.attrs["units"] == "m s-1" and ds.x.attrs["units"] == "m" and ds.time.attrs["units"] == "s"
        dx = 1e6 / 8
        np.testing.assert_allclose(ds.x_u.values - ds.x.values, dx / 2)  # u on east faces of the C-grid
        np.testing.assert_allclose(ds.time.values, [0.0, 600.0, 1200.0])
        # η is the observed component: y − innovation is the background η at the observed cells
        at = dict(time=ds.obs_time, y=ds.obs_y, x=ds.obs_x)
        np.testing.assert_allclose((ds.obs_value - ds.obs_innovation).values,
                                   ds.background.sel(**at, method="nearest").values, atol=1e-12)  # fmt: skip
        assert float(ds.assim.rmse("analysis_u", reference="truth_u").isel(time=0)) == pytest.approx(
            metrics["analysis_rmse_u"], rel=1e-12
        )
