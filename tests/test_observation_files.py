"""CF netCDF observations: station/track tables and gridded fields read onto a grid, written and read back."""

import numpy as np
import pytest
import xarray as xr

from assim.errors import GridMismatchError, ObservationError
from assim.io.observation_files import (
    observation_table,
    read_observations,
    write_observation_table,
)
from models import CartesianGrid, LatLonGrid, Neumann, Open

GRID = LatLonGrid(np.arange(20.0, 90.1, 10.0), np.arange(-80.0, 40.1, 10.0), boundaries=(Open(), Open()))
DT = 3600.0


def _plane(lat, lon):
    """A field linear in (lat, lon): bilinear interpolation reproduces it exactly."""
    return 5000.0 + 3.0 * np.asarray(lat) - 2.0 * np.asarray(lon)


def _table(start=None):
    rng = np.random.default_rng(0)
    stations = np.stack([rng.uniform(25, 85, 5), rng.uniform(-75, 35, 5)], axis=-1)
    times, points, kind = [], [], []
    for k, t in enumerate([0.0, 2 * DT, 4 * DT]):
        times += [t] * 5
        points += list(stations)
        kind += [0] * 5
        track = np.stack([np.linspace(25, 85, 3 + k), np.linspace(-70 + 10 * k, 30 - 5 * k, 3 + k)], axis=-1)
        times += [t] * len(track)
        points += list(track)
        kind += [1] * len(track)
    times, points = np.asarray(times), np.asarray(points)
    points[3, 1] += 360.0  # a longitude given in 0..360 maps onto the grid's range
    values = _plane(points[:, 0], np.where(points[:, 1] > 180, points[:, 1] - 360, points[:, 1]))
    values[7] = np.nan  # a missing value
    errors = np.full(values.shape, 2.0)
    errors[8] = -1.0  # an unusable error
    return observation_table(GRID, times, points, values, errors, start=start, value_units="m", kind=kind), values


@pytest.mark.parametrize("start", [None, np.datetime64("1979-01-15T00:00")], ids=["model-time", "dates"])
def test_table_round_trip(tmp_path, start):
    table, values = _table(start)
    path = tmp_path / "obs.nc"
    write_observation_table(path, table)
    assert xr.open_dataset(path).attrs["featureType"] == "point"
    read = read_observations(path, GRID, DT, 6, start=start)
    obs = read.observations
    assert obs.steps == (0, 2, 4)
    report = obs.report.as_dict()
    assert report["n_nonfinite"] == 1 and report["n_bad_error"] == 1
    assert report["n_masked"] == read.n_padding == 3 * 10 - len(values)
    assert report["n_valid"] == len(values) - 2
    # the operator reads the plane exactly where the observations are valid
    lat, lon = np.meshgrid(*GRID.coords().values(), indexing="ij")
    field = np.broadcast_to(_plane(lat, lon), (7, *GRID.shape))
    predicted = np.asarray(obs.predict(field))
    mask = np.asarray(obs.mask)
    np.testing.assert_allclose(predicted[mask], np.asarray(obs.values)[mask], rtol=1e-12)
    assert np.all(np.asarray(obs.values)[~mask] == 0.0)  # masked values never propagate


def test_gridded_field_with_missing_values(tmp_path):
    lat, lon = GRID.coords().values()
    field = np.stack([_plane(*np.meshgrid(lat, lon, indexing="ij")) + k for k in range(2)])
    field[1, 2, 3] = np.nan
    ds = xr.Dataset({"z": (("time", "latitude", "longitude"), field, {"units": "m", "error": 5.0})},
                    coords={"time": ("time", [0.0, 3 * DT], {"units": "s"}), "latitude": lat,
                            "longitude": lon})  # fmt: skip
    ds.to_netcdf(tmp_path / "g.nc")
    obs = read_observations(tmp_path / "g.nc", GRID, DT, 4).observations
    assert obs.steps == (0, 3)
    assert obs.report.as_dict()["n_nonfinite"] == 1
    assert int(obs.report.n_valid) == field.size - 1
    states = np.zeros((5, *GRID.shape))
    states[0], states[3] = np.nan_to_num(field[0]), np.nan_to_num(field[1])
    np.testing.assert_allclose(np.asarray(obs.predict(states))[np.asarray(obs.mask)],
                               field.reshape(2, -1)[np.isfinite(field.reshape(2, -1))])  # fmt: skip


def test_wrong_grid_and_times_outside_the_window(tmp_path):
    lat, lon = GRID.coords().values()
    ds = xr.Dataset({"z": (("time", "lat", "lon"), np.ones((1, lat.size, lon.size)))},
                    coords={"time": [0.0], "lat": lat + 1.25, "lon": lon})  # fmt: skip
    ds["error"] = 1.0
    ds.to_netcdf(tmp_path / "shifted.nc")
    with pytest.raises(GridMismatchError, match="regrid"):
        read_observations(tmp_path / "shifted.nc", GRID, DT, 4)
    table, _ = _table()
    write_observation_table(tmp_path / "late.nc", table)
    with pytest.raises(ObservationError, match="lengthen the window"):
        read_observations(tmp_path / "late.nc", GRID, DT, 3)  # the last rows are at step 4
    with pytest.raises(ObservationError, match="window start"):
        write_observation_table(tmp_path / "dated.nc", _table(np.datetime64("2000-01-01"))[0])
        read_observations(tmp_path / "dated.nc", GRID, DT, 6)
    box = CartesianGrid((4, 4), (1.0, 1.0), Neumann())
    with pytest.raises(ObservationError, match="needs variables"):
        read_observations(tmp_path / "late.nc", box, DT, 6)
    with pytest.raises(ObservationError, match="does not exist"):
        read_observations(tmp_path / "nothing.nc", GRID, DT, 6)
