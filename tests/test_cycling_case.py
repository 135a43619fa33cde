"""`assim run` of cycling cases: both analysis conventions in analysis.nc and metrics.json (equal to the Python
API's), per-window convergence flags, observation-use schemes from [cycling], and the trained solver cycling."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

from assim.case.build import build
from assim.case.config import load_case
from assim.cli import main
from assim.solvers.cycling import Cycling
from assim.solvers.observation_use import AllObservations
from models import CartesianGrid, Periodic

ROOT = Path(__file__).parents[1]
L96 = ROOT / "cases" / "lorenz96.toml"
TINY = ["grid.n=8", "time.n_steps=12", "model.spin_up=50", "solver.max_outer=8", "observations.every=2"]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def run_case(out, overrides, case=L96, status=0):
    assert main(["run", str(case), "--out", str(out), "-q", *sets(overrides)]) == status
    with xr.open_dataset(out / "analysis.nc") as ds:
        return ds.load(), json.loads((out / "metrics.json").read_text())


def test_cycling_case_writes_both_conventions_equal_to_the_python_api(tmp_path):
    overrides = TINY + ["cycling={window=6, shift=2, n_windows=4}"]
    ds, m = run_case(tmp_path / "o", overrides)
    assert ds.analysis.dims == ("window", "x") and ds.filter_analysis.dims == ("filter_time", "x")
    np.testing.assert_array_equal(ds.filter_step.values, [6, 8, 10, 12])  # the latest observation is the window end
    np.testing.assert_allclose(ds.filter_time.values, ds.filter_step.values * 0.05)
    case, _ = load_case(L96, overrides)
    exp = build(case)
    r = Cycling(6, 2, 4, exp.solver, observation_use=AllObservations()).run(
        exp.model, exp.twin.background, exp.covariance, exp.twin.observations, exp.twin.truth
    )
    np.testing.assert_allclose(ds.filter_analysis.values, r.filter_analyses, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.analysis.values, r.analyses, rtol=0, atol=1e-12)
    s = r.summary()
    for name in ("analysis_rmse", "filter_analysis_rmse", "filter_background_rmse", "background_rmse"):
        assert m[name] == pytest.approx(s[name], rel=1e-10)
    # the file's own states against its truth give the same numbers (the accessor aligns filter times too)
    assert float(ds.assim.rmse("filter_analysis").mean()) == pytest.approx(m["filter_analysis_rmse"], rel=1e-10)
    np.testing.assert_allclose(ds.assim.rmse("filter_analysis").values, ds.solver_filter_analysis_rmse.values,
                               rtol=1e-10)  # fmt: skip
    assert m["filter_analysis_rmse"] < m["filter_background_rmse"]
    assert m["n_not_converged"] == 0 and m["windows_not_converged"] == []
    np.testing.assert_array_equal(ds.window_converged.values, 1)


def test_non_converged_windows_are_counted_in_metrics_and_flagged_in_the_file(tmp_path):
    ds, m = run_case(tmp_path / "o", TINY + ["cycling={window=4, shift=4, n_windows=3}", "solver.max_outer=1",
                                             "solver.gtol=1e-14", "solver.cg_max_steps=1"], status=3)  # fmt: skip
    assert m["n_not_converged"] == 3 and m["windows_not_converged"] == [0, 1, 2] and not m["converged"]
    np.testing.assert_array_equal(ds.window_converged.values, 0)
    assert ds.window_converged.attrs["flag_meanings"] == "not_converged converged"


def test_use_once_equals_all_without_overlap_through_the_cli(tmp_path):
    base = TINY + ["cycling.window=4", "cycling.shift=4", "cycling.n_windows=3"]
    a, ma = run_case(tmp_path / "all", base + ['cycling.observation_use="all"'])
    once, mo = run_case(tmp_path / "once", base + ['cycling.observation_use="once"'])
    assert ma["observation_use"] == "all" and mo["observation_use"] == "once"
    np.testing.assert_allclose(once.analysis.values, a.analysis.values, rtol=0, atol=1e-10)
    np.testing.assert_allclose(once.filter_analysis.values, a.filter_analysis.values, rtol=0, atol=1e-10)
    mda, mm = run_case(tmp_path / "mda", TINY + ["cycling={window=4, shift=2, n_windows=5, observation_use='mda'}"])
    over, _ = run_case(tmp_path / "over", TINY + ["cycling={window=4, shift=2, n_windows=5}"])
    assert not np.allclose(mda.analysis.values, over.analysis.values)  # the inflated variances change the analyses
    np.testing.assert_allclose(mda.solver_observation_weight.sum(), 12 / 2 * 4, rtol=1e-12)  # each obs weighs 1


def test_a_bad_observation_use_is_one_line(tmp_path, capsys):
    assert main(["run", str(L96), "--out", str(tmp_path / "o"), *sets(TINY + ["cycling.observation_use='twice'"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cycling.observation_use" in err


def test_the_trained_solver_cycles_from_a_case_file(tmp_path):
    from test_train_cli import SKELETON, TRAINED_RUN
    from test_train_cli import TINY as TRAIN_TINY

    from assim.learned.trained_solver import header, save_solver, skeleton

    checkpoint = tmp_path / "solver.eqx"
    overrides = TRAIN_TINY + [f"solver.{s}" for s in SKELETON] + [
        f"solver.checkpoint={json.dumps(str(checkpoint))}", "time.n_steps=4",
        "cycling={window=2, shift=2, n_windows=2}"]  # fmt: skip
    case, _ = load_case(TRAINED_RUN, overrides)
    control = np.zeros((8, 8))  # a checkpoint as `assim train` writes it (untrained layers: α = 0.8, μ = 0.1)
    grid = CartesianGrid((8, 8), (1 / 8, 1 / 8), Periodic())  # the case's grid: the learned prior's shape
    save_solver(checkpoint, skeleton(case.solver, control, jax.random.PRNGKey(0), 0.8, 0.1, grid=grid),
                header(case.solver, control))  # fmt: skip
    ds, m = run_case(tmp_path / "run", overrides, TRAINED_RUN)
    assert m["mode"] == "cycling" and m["n_windows"] == 2
    assert "trained layers" in m["reason"] and m["n_not_converged"] == 2  # fixed layers: flagged, not failed
    np.testing.assert_array_equal(ds.solver_n_outer.values, 2)
    assert np.all(np.isfinite(ds.filter_analysis.values))
    assert m["filter_analysis_rmse"] < m["filter_background_rmse"]
    assert "trained unrolled Gauss-Newton" in ds.attrs["source"]
    # certified: classical iterations continue every window to the threshold, so none is flagged
    _, certified = run_case(tmp_path / "certified", overrides + ["solver.certificate={threshold=1e-6}"], TRAINED_RUN)
    assert certified["n_not_converged"] == 0 and certified["filter_analysis_rmse"] < m["filter_background_rmse"]
