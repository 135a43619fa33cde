"""`assim run` outputs: the netCDF reopens with consistent values, coordinates, units and provenance, and reproduces."""

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from assim.case import build as case_module
from assim.case.config import validate
from assim.cli import main
from assim.errors import InputError

QUICKSTART = Path(__file__).parents[1] / "cases" / "quickstart.toml"
TINY = ["--set", "grid.n=16", "--set", "time.n_steps=4", "--set", "observations.network.fraction=0.2"]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    assert main(["run", str(QUICKSTART), "--out", str(out), "-q", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def dataset(quickstart_run):
    with xr.open_dataset(quickstart_run / "analysis.nc") as ds:
        yield ds.load()


def test_outputs_complete_and_no_temporaries(quickstart_run):
    names = sorted(p.name for p in quickstart_run.iterdir())
    assert names == ["analysis.nc", "convergence.png", "metrics.json", "states.png", "summary.md"]
    for png in ("states.png", "convergence.png"):
        assert (quickstart_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| analysis_rmse |" in (quickstart_run / "summary.md").read_text()


def test_dimensions_coordinates_and_units(dataset):
    ds = dataset
    for name in ("truth", "background", "analysis"):
        assert ds[name].dims == ("time", "y", "x") and ds[name].shape == (5, 16, 16)
    centres = (np.arange(16) + 0.5) / 16
    np.testing.assert_allclose(ds.x.values, centres, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ds.y.values, centres, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ds.time.values, np.arange(5) / 48, rtol=1e-14)
    for name in [*ds.coords, *ds.data_vars]:
        if not name.startswith("solver_") and name != "step":
            assert "units" in ds[name].attrs, name
    assert ds.attrs["Conventions"].startswith("CF-")
    versions = json.loads(ds.attrs["package_versions"])
    assert {"jax", "xarray", "assim"} <= set(versions)
    assert 'kind = "advection_diffusion"' in ds.attrs["case_file"]


def test_observations_sit_where_their_coordinates_say(dataset):
    """y − innovation = H(background forecast): sampling the stored fields at (obs_time, obs_y, obs_x) must agree."""
    ds = dataset
    at = dict(time=ds.obs_time, y=ds.obs_y, x=ds.obs_x)
    np.testing.assert_allclose((ds.obs_value - ds.obs_innovation).values,
                               ds.background.sel(**at, method="nearest").values, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose((ds.obs_value - ds.obs_residual).values,
                               ds.analysis.sel(**at, method="nearest").values, atol=1e-12)  # fmt: skip
    noise = (ds.obs_value - ds.truth.sel(**at, method="nearest")).values
    sigma = float(ds.attrs["metric_observation_noise"])
    assert 0.7 * sigma < noise.std() < 1.3 * sigma and abs(noise.mean()) < 3 * sigma / np.sqrt(noise.size)


def test_metrics_match_fields_and_analysis_improves(quickstart_run, dataset):
    ds = dataset
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    rmse = lambda a: float(np.sqrt(((ds[a].isel(time=0) - ds.truth.isel(time=0)) ** 2).mean()))  # noqa: E731
    assert metrics["background_rmse"] == pytest.approx(rmse("background"), rel=1e-12)
    assert metrics["analysis_rmse"] == pytest.approx(rmse("analysis"), rel=1e-12)
    assert metrics["converged"] and metrics["analysis_rmse"] < 0.6 * metrics["background_rmse"]
    sigma = metrics["observation_noise"]
    assert metrics["innovation_rms"] > 2 * sigma and metrics["analysis_residual_rms"] < 1.5 * sigma
    assert json.loads(ds.attrs["metrics"]) == {k: v for k, v in metrics.items() if k in json.loads(ds.attrs["metrics"])}
    cost = ds.solver_cost.values
    assert cost[-1] < cost[0] and ds.solver_gradient_norm.values[-1] <= 1e-6 * ds.solver_gradient_norm.values[0]
    assert set(metrics["timings_s"]) >= {"build_s", "solve_s", "write_s", "total_s"}


def test_stored_case_reproduces_the_run(dataset):
    case = validate(tomllib.loads(dataset.attrs["case"]))
    assert case.grid.n == 16 and case.time.n_steps == 4
    outcome = case_module.run(case_module.build(case))
    np.testing.assert_allclose(outcome.truth, dataset.truth.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(outcome.analysis, dataset.analysis.values, rtol=0, atol=1e-10)
    np.testing.assert_allclose(outcome.obs_values, dataset.obs_value.values, rtol=0, atol=1e-12)


def test_accessor_statistics_agree_with_the_metrics(quickstart_run, dataset):
    ds = dataset
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    rmse = ds.assim.rmse("analysis")
    assert rmse.dims == ("time",)
    assert float(rmse.isel(time=0)) == pytest.approx(metrics["analysis_rmse"], rel=1e-12)
    assert float(ds.assim.rmse("analysis", dim=None)) == pytest.approx(metrics["analysis_trajectory_rmse"], rel=1e-12)
    bias = ds.assim.bias("background", dim=None)
    assert float(bias) == pytest.approx(float((ds.background - ds.truth).mean()), rel=1e-12)
    stats = ds.assim.innovation_statistics()
    assert stats["residual_rms"] == pytest.approx(metrics["analysis_residual_rms"], rel=1e-12)
    assert stats["innovation_rms"] == pytest.approx(metrics["innovation_rms"], rel=1e-12)
    sigma = metrics["observation_noise"]
    assert stats["residual_chi2"] == pytest.approx((stats["residual_rms"] / sigma) ** 2, rel=1e-12)
    with pytest.raises(InputError, match="no variable 'analysys'"):
        ds.assim.rmse("analysys")


def test_netcdf_reopens_identical_to_the_dataset_written(dataset):
    """Every variable, coordinate and attribute survives the netCDF round trip (rebuilt from the stored case file)."""
    from assim.case.config import apply_overrides, parse_case_text
    from assim.io.netcdf import to_dataset

    overrides = json.loads(dataset.attrs["case_overrides"])
    assert overrides[: len(TINY) // 2] == TINY[1::2]  # the command line's --set values, in order
    case = validate(apply_overrides(parse_case_text(dataset.attrs["case_file"]), overrides))
    exp = case_module.build(case)
    fresh = to_dataset(exp, case_module.run(exp), dataset.attrs["case_file"])
    fresh.attrs["case_overrides"] = dataset.attrs["case_overrides"]
    assert set(fresh.variables) == set(dataset.variables) and set(fresh.coords) == set(dataset.coords)
    for name, var in fresh.variables.items():
        stored = dataset[name]
        assert stored.dims == var.dims and stored.attrs == var.attrs, name
        np.testing.assert_allclose(stored.values, var.values, rtol=1e-10, atol=1e-12, err_msg=name)
    numeric = lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool)  # noqa: E731
    assert set(fresh.attrs) == set(dataset.attrs)
    for key, value in fresh.attrs.items():
        if numeric(value):
            assert float(dataset.attrs[key]) == pytest.approx(float(value), rel=1e-9, abs=1e-12), key
        elif key == "metrics":
            stored = json.loads(dataset.attrs[key])
            assert stored.keys() == json.loads(value).keys()
        else:
            assert dataset.attrs[key] == value, key


def test_interrupted_run_leaves_no_partial_file(tmp_path, monkeypatch):
    """Ctrl-C while the outputs are being written (netCDF already under its temporary name): nothing remains."""
    import assim.io.figures

    def interrupt(exp, outcome, path_for):
        assert any(p.name.startswith(".analysis.nc.") for p in path_for.__self__.directory.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(assim.io.figures, "write_figures", interrupt)
    out = tmp_path / "out"
    assert (
        main(["run", str(QUICKSTART), "--out", str(out), "-q", *TINY]) == 130
    )  # "assim: interrupted; nothing written"
    assert not out.exists()  # nor the directory the run created
