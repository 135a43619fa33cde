"""The weak-constraint case: a truth with a forcing error the strong-constraint fit cannot absorb; weak beats strong.
The shipped per-model, weak-constraint and discovery cases validate; bad weak/truth tables are refused."""

import json
from pathlib import Path

import pytest
import xarray as xr

from assim.cli import main

ROOT = Path(__file__).parents[1]
WEAK = ROOT / "cases" / "weak_constraint.toml"


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("weak")
    args = ["run", str(WEAK), "--out", str(out), "-q", "--set", "outputs.figures=false"]  # the case at full size
    assert main(args) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_weak_constraint_beats_strong_constraint(weak_run):
    _, m = weak_run
    text = json.dumps(m)
    assert m["weak_constraint"] is True and m["converged"] and m["strong_converged"], text
    assert m["model_error_controls"] == 5  # sub-windows of 4 steps over 20 steps
    # the truth's forcing differs by ΔF = 1: the strong fit must compromise, the weak fit absorbs it
    assert m["analysis_trajectory_rmse"] < 0.7 * m["strong_analysis_trajectory_rmse"], text
    assert m["analysis_rmse"] < m["strong_analysis_rmse"], text
    assert m["analysis_trajectory_rmse"] < m["observation_noise"] < m["background_rmse"], text
    # the estimated model-error forcing has the size of the truth's, ΔF·dt = 0.05 per step
    assert 0.02 < m["model_error_rms"] < 0.1, text
    assert m["final_cost"] < m["strong_final_cost"], text


def test_weak_run_outputs(weak_run):
    out, m = weak_run
    assert sorted(p.name for p in out.iterdir()) == ["analysis.nc", "metrics.json", "summary.md"]
    with xr.open_dataset(out / "analysis.nc") as ds:
        assert "weak-constraint" in ds.attrs["source"] and "[weak_constraint]" in ds.attrs["case"]
        assert ds.attrs["metric_weak_constraint"] == 1
        # the analysis trajectory is the forced one: its error is the stored trajectory RMSE
        rmse = float(((ds.analysis - ds.truth) ** 2).mean() ** 0.5)
        assert rmse == pytest.approx(m["analysis_trajectory_rmse"], rel=1e-12)


@pytest.mark.parametrize("name", ["advection_diffusion", "weak_constraint", "discovery"])
def test_shipped_case_validates(name, capsys):
    assert main(["validate", str(ROOT / "cases" / f"{name}.toml")]) == 0
    assert "valid" in capsys.readouterr().out


BAD = [
    (["--set", "cycling={window=4, shift=4, n_windows=2}"], "weak_constraint: weak-constraint 4D-Var runs one window"),
    (["--set", "weak_constraint.q.variance=0"], "weak_constraint.q.variance: must be > 0 (got 0)"),
    (["--set", "weak_constraint.timing.length=50"], "weak_constraint.timing.length: must be ≤ time.n_steps = 20"),
    (["--set", "weak_constraint.timing={kind='hourly'}"], "weak_constraint.timing.kind: unknown kind 'hourly'"),
    (["--set", "truth.parameters={kappa=1.0}"],
     "truth.parameters.kappa: the lorenz96 model has no parameter 'kappa'; use one of ['forcing']"),
    (["--set", "truth.parameters.forcing=nan"], "truth.parameters.forcing: input should be a finite number"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_weak_case_is_refused_with_one_line(args, message, capsys):
    assert main(["validate", str(WEAK), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"assim: error: {message}") and err.count("\n") == 1, err
