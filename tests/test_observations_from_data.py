"""Observations from data: CF point/trajectory tables on any grid, multi-field components, real obs on a [data] grid."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from test_data_case import CASE, LAT, LON, land, write_currents, write_dataset

from assim.cli import main
from assim.errors import InputError, ObservationError
from assim.io.observation_files import (
    observation_table,
    read_observations,
    write_observation_table,
)
from assim.observations.operators import component_names
from models import CartesianGrid, LatLonGrid, Open
from models.shallow_water import SWState

GRID = LatLonGrid(np.arange(20.0, 60.1, 10.0), np.arange(-40.0, 0.1, 10.0), boundaries=(Open(), Open()))
DT = 3600.0
START = np.datetime64("2001-03-01T00:00")


def _plane(p):
    return 3.0 * p[..., 0] - 2.0 * p[..., 1]


def _pass(n=6, shift=0.0):
    return np.stack([np.linspace(22, 58, n), np.linspace(-38 + shift, -5 + shift, n)], axis=-1)


def test_trajectory_table_on_latlon_maps_dates_to_steps(tmp_path):
    points = np.concatenate([_pass(), _pass(4, -2.0)])
    times = np.array([0.0] * 6 + [3 * DT] * 4) + 60.0  # a minute late: nearest step
    table = observation_table(GRID, times, points, _plane(points), np.ones(10), start=START, feature_type="trajectory")
    write_observation_table(tmp_path / "tracks.nc", table)
    read = read_observations(tmp_path / "tracks.nc", GRID, DT, 4, start=START)
    obs = read.observations
    assert obs.steps == (0, 3) and xr.open_dataset(tmp_path / "tracks.nc").attrs["featureType"] == "trajectory"
    lat, lon = np.meshgrid(*GRID.coords().values(), indexing="ij")
    field = jnp.asarray(np.broadcast_to(3.0 * lat - 2.0 * lon, (5, *GRID.shape)))
    got = np.asarray(obs.predict(field))
    np.testing.assert_allclose(got[np.asarray(obs.mask)], np.asarray(obs.values)[np.asarray(obs.mask)], atol=1e-9)


def test_orthogonal_trajectory_table_and_cartesian_points(tmp_path):
    grid = CartesianGrid((8, 8), (1.0, 1.0))
    t = np.array([[0.0, 0.0, np.nan], [2 * DT, 2 * DT, 2 * DT]])  # (trajectory, obs), NaN time: padding
    y, x = np.array([[0.2, 0.4, 0.0], [0.3, 0.5, 0.7]]), np.array([[0.3, 0.6, 0.0], [0.2, 0.2, 0.2]])
    ds = xr.Dataset(
        {
            "time": (("trajectory", "obs"), t),
            "y": (("trajectory", "obs"), y),
            "x": (("trajectory", "obs"), x),
            "value": (("trajectory", "obs"), y + x),
            "error": (("trajectory", "obs"), np.ones_like(t)),
        },
        attrs={"featureType": "trajectory"},
    )
    ds.to_netcdf(tmp_path / "orth.nc")
    obs = read_observations(tmp_path / "orth.nc", grid, DT, 4).observations
    assert obs.steps == (0, 2) and int(np.sum(obs.mask)) == 5
    pts = observation_table(grid, np.array([0.0, DT]), np.array([[0.5, 0.5], [0.25, 0.75]]), np.ones(2), np.ones(2))
    write_observation_table(tmp_path / "pts.nc", pts)
    assert read_observations(tmp_path / "pts.nc", grid, DT, 4).observations.steps == (0, 1)


def test_unknown_feature_type_is_one_line_naming_file_and_fix(tmp_path):
    table = observation_table(GRID, np.zeros(2), _pass(2), np.ones(2), np.ones(2), feature_type="timeSeriesProfile")
    write_observation_table(tmp_path / "odd.nc", table)
    with pytest.raises(InputError, match=r"odd\.nc.*timeSeriesProfile.*'point'.*'trajectory'") as info:
        read_observations(tmp_path / "odd.nc", GRID, DT, 4)
    assert "\n" not in str(info.value)


def test_a_component_attribute_observes_that_field_of_a_multi_field_state(tmp_path):
    grid = CartesianGrid((6, 6), (1.0, 1.0))
    p = np.array([[0.25, 0.5], [0.5, 0.75]])
    cy, cx = np.meshgrid(*grid.coords().values(), indexing="ij")
    u = cy + 2 * cx
    state = SWState(
        jnp.zeros((3, *grid.shape)), jnp.broadcast_to(jnp.asarray(u), (3, *grid.shape)), jnp.full((3, *grid.shape), 7.0)
    )  # a window of 3 states
    names = component_names(state)
    assert names == ("eta", "u", "v")
    table = observation_table(grid, np.zeros(2), p, p[:, 0] + 2 * p[:, 1], np.ones(2), component="u")
    write_observation_table(tmp_path / "u.nc", table)
    obs = read_observations(tmp_path / "u.nc", grid, DT, 2, component="eta", components=names).observations
    assert obs.operator.component == "u"
    np.testing.assert_allclose(np.asarray(obs.predict(state))[0], obs.values[0], atol=1e-9)
    column = table.assign(component=("obs", np.array(["v", "v"])))
    column["value"].attrs.pop("component")
    write_observation_table(tmp_path / "v.nc", column)
    assert read_observations(tmp_path / "v.nc", grid, DT, 2, components=names).observations.operator.component == "v"
    with pytest.raises(ObservationError, match=r"u\.nc.*component 'u'.*one field.*`component`") as info:
        read_observations(tmp_path / "u.nc", grid, DT, 2)  # a single-field model has no component u
    assert "\n" not in str(info.value)
    bad = table.copy()
    bad["value"].attrs["component"] = "w"
    write_observation_table(tmp_path / "w.nc", bad)
    with pytest.raises(ObservationError, match=r"w\.nc.*'w'.*\['eta', 'u', 'v'\]"):
        read_observations(tmp_path / "w.nc", grid, DT, 2, components=names)


def real_observation_setup(tmp_path):
    """The [data] case's ocean and currents files, its grid, and 40 random stations at two times (grid, times, pts)."""
    write_dataset(tmp_path / "ocean.nc")
    write_currents(tmp_path / "currents.nc")
    rng = np.random.default_rng(3)
    pts = np.stack([rng.uniform(-15, 35, 40), rng.uniform(145, 195, 40)], axis=-1)
    grid = LatLonGrid(LAT[::-1], LON, mask=~land()[::-1])
    return grid, np.repeat([0.0, 2 * 21600.0], 20), pts


def test_a_data_case_assimilates_real_observations_from_a_file(tmp_path):
    grid, times, pts = real_observation_setup(tmp_path)
    table = observation_table(grid, times, pts, 15.0 + 0.1 * pts[:, 0], np.full(40, 0.1), value_units="degC",
                              feature_type="trajectory")  # fmt: skip
    write_observation_table(tmp_path / "real.nc", table)
    text = CASE.format(currents="currents.nc").replace(
        'network = { kind = "stations_and_tracks", stations = 40, track_points = 10 }\nevery = 2\nnoise = 0.05',
        'file = "real.nc"',
    )
    assert 'file = "real.nc"' in text
    (tmp_path / "case.toml").write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "case.toml"), "--out", str(out), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "innovation_chi2" in metrics and "residual_chi2" in metrics
    assert not any("rmse" in k for k in metrics), metrics
    assert 0 < metrics["n_observations"] < 40  # some points touch land or leave the domain
    with xr.open_dataset(out / "analysis.nc") as ds:
        assert "truth" not in ds.data_vars
        assert np.all(np.isnan(ds["analysis"].values[:, land()[::-1]]))
