"""Data-driven cases: a dataset the package has never seen runs from a case file, with its land mask and its winds.

The test writes a small CF dataset (an ocean temperature on a regional latitude-longitude grid, north to
south, coordinates with unusual names recognised by their CF attributes, NaN over an island and a land
wall, 12 members) and a current file on another, global grid in cm s-1; a case file points at both.
"""

import json

import numpy as np
import pytest
import xarray as xr

from assim.case.config import load_case
from assim.cli import main

LAT = np.arange(40.0, -21.0, -5.0)  # north to south: 13 rows
LON = np.arange(140.0, 201.0, 5.0)  # 13 columns


def land() -> np.ndarray:
    """True on land: an island and a wall along one meridian with one gap (rows, columns of LAT × LON)."""
    mask = np.zeros((LAT.size, LON.size), bool)
    mask[3:6, 3:6] = True
    mask[7:, 9] = True
    return mask


def write_dataset(path, n_members: int = 12, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lat, lon = np.meshgrid(LAT, LON, indexing="ij")
    fields = []
    for _ in range(n_members):
        f = 15.0 + 0.1 * lat
        for _ in range(3):
            c_lat, c_lon = rng.uniform(-20, 40), rng.uniform(140, 200)
            f = f + rng.normal(0, 1.0) * np.exp(-((lat - c_lat) ** 2 + (lon - c_lon) ** 2) / (2 * 12.0**2))
        fields.append(np.where(land(), np.nan, f))
    coords = {
        "member": ("member", np.arange(n_members)),
        "yc": ("yc", LAT, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
        "xc": ("xc", LON, {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
    }
    temp = xr.DataArray(np.stack(fields), dims=("member", "yc", "xc"), coords=coords,
                        attrs={"units": "degC", "standard_name": "sea_water_temperature"})  # fmt: skip
    xr.Dataset({"temp": temp}).to_netcdf(path)


def write_currents(path, lat=np.arange(-90.0, 91.0, 10.0), lon=np.arange(0.0, 360.0, 10.0)) -> None:
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    u = 20.0 * np.cos(np.deg2rad(la)) * np.ones((2, *la.shape))  # cm s-1, eastward
    v = 5.0 * np.sin(np.deg2rad(lo)) * np.ones((2, *la.shape))
    coords = {"time": ("time", np.arange(2)), "lat": ("lat", lat, {"units": "degrees_north"}),
              "lon": ("lon", lon, {"units": "degrees_east"})}  # fmt: skip
    xr.Dataset({"u": (("time", "lat", "lon"), u, {"units": "cm s-1"}),
                "v": (("time", "lat", "lon"), v, {"units": "cm s-1"})}, coords=coords).to_netcdf(path)  # fmt: skip


CASE = """
name = "never_seen"
[data]
field = {{ file = "ocean.nc", variable = "temp" }}
dimension = "member"
window = 11
climatology = {{ index = [0, 8] }}
boundaries = ["closed", "closed"]
[model]
kind = "advection_diffusion"
kappa = 1.0e3
scheme = "crank_nicolson"
advection = "upwind"
[model.wind]
u = {{ file = "{currents}", variable = "u", mean = ["time"] }}
v = {{ file = "{currents}", variable = "v", mean = ["time"] }}
[time]
n_steps = 4
dt = 21600.0
[observations]
network = {{ kind = "stations_and_tracks", stations = 40, track_points = 10 }}
every = 2
noise = 0.05
[background]
kind = "climatology"
length_scale = "estimate"
normalisation_samples = 40
[solver]
kind = "gauss_newton"
max_outer = 2
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d / "ocean.nc")
    write_currents(d / "currents.nc")
    (d / "case.toml").write_text(CASE.format(currents="currents.nc"))
    return d


@pytest.fixture(scope="module")
def run_dir(data_dir):
    out = data_dir / "out"
    assert main(["run", str(data_dir / "case.toml"), "--out", str(out), "-q"]) == 0
    return out


def test_a_dataset_never_seen_runs_and_fits_the_truth(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["analysis_rmse"] < 0.5 * metrics["background_rmse"], metrics
    assert metrics["masked_cells"] == int(land().sum())
    assert metrics["converged"]


def test_outputs_sit_on_the_data_coordinates_with_nan_on_land(run_dir):
    with xr.open_dataset(run_dir / "analysis.nc") as ds:
        assert ds["lat"].attrs["standard_name"] == "latitude" and ds["lat"].attrs["units"] == "degrees_north"
        assert ds["lon"].attrs["standard_name"] == "longitude"
        np.testing.assert_allclose(ds["lat"].values, LAT[::-1])  # ascending latitude
        np.testing.assert_allclose(ds["lon"].values, LON)
        assert ds["analysis"].attrs["units"] == "degC"
        assert ds["analysis"].attrs["standard_name"] == "sea_water_temperature"
        land_ascending = land()[::-1]
        assert np.all(np.isnan(ds["analysis"].values[:, land_ascending]))
        assert np.all(np.isfinite(ds["analysis"].values[:, ~land_ascending]))
        provenance = json.loads(ds.attrs["provenance"])
        assert provenance["fields"]["wind_u"]["method"] == "bilinear"
        assert provenance["length_scale"] > 0
    with xr.open_dataset(run_dir / "analysis.nc", decode_cf=False) as raw:
        assert "_FillValue" in raw["analysis"].attrs


def test_observations_touching_land_are_masked_and_counted(run_dir, data_dir):
    from assim.io.observation_files import read_observations
    from models.grid import LatLonGrid

    with xr.open_dataset(run_dir / "observations.nc") as table:
        values = table["value"].values
        lat, lon = table["latitude"].values, table["longitude"].values
    grid = LatLonGrid(LAT[::-1], LON, mask=~land()[::-1])
    read = read_observations(run_dir / "observations.nc", grid, 21600.0, 4)
    report = read.observations.report.as_dict()
    assert report["n_nonfinite"] == int(np.sum(~np.isfinite(values))) > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_observations"] == report["n_valid"]
    # independently: a value is missing exactly when one of the four cells around its point is land or it is
    # outside the domain (random points: never exactly on a centre line, so all four weights are non-zero)
    lat_up, is_land = LAT[::-1], land()[::-1]
    i = np.floor((lat - lat_up[0]) / 5.0).astype(int)
    j = np.floor((lon - LON[0]) / 5.0).astype(int)
    inside = (i >= 0) & (i < LAT.size - 1) & (j >= 0) & (j < LON.size - 1)
    ii, jj = np.clip(i, 0, LAT.size - 2), np.clip(j, 0, LON.size - 2)
    touches = is_land[ii, jj] | is_land[ii + 1, jj] | is_land[ii, jj + 1] | is_land[ii + 1, jj + 1]
    np.testing.assert_array_equal(np.isfinite(values[inside]), ~touches[inside])
    assert np.sum(inside & touches) > 0  # the network does meet the coast
    outside = (lat < LAT.min() - 2.5) | (lat > LAT.max() + 2.5) | (lon < LON.min() - 2.5) | (lon > LON.max() + 2.5)
    assert not np.any(np.isfinite(values[outside]))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.field.variable='salt'", "salt"),
        ("data.dimension='time'", "time"),
        ("data.window=99", "window"),
        ("data.field.sel={member=[40, 41]}", "member"),
    ],
)
def test_bad_data_input_is_one_line_and_writes_nothing(data_dir, capsys, override, message):
    out = data_dir / f"bad_{abs(hash(override))}"
    status = main(["run", str(data_dir / "case.toml"), "--out", str(out), "-q", "--set", override])
    err = capsys.readouterr().err.strip()
    assert status != 0 and len(err.splitlines()) == 1 and message in err, err
    assert "Traceback" not in err and not out.exists()


def test_a_wind_source_that_does_not_cover_the_grid_is_refused(data_dir, capsys):
    write_currents(data_dir / "regional.nc", lat=np.arange(-10.0, 31.0, 10.0), lon=np.arange(150.0, 191.0, 10.0))
    (data_dir / "regional.toml").write_text(CASE.format(currents="regional.nc"))
    out = data_dir / "regional_out"
    status = main(["run", str(data_dir / "regional.toml"), "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert status != 0 and len(err.splitlines()) == 1 and "regional.nc" in err, err
    assert not out.exists()


def test_training_samples_are_further_members(data_dir):
    from assim.case.data import dataset, sample_state

    case, _ = load_case(data_dir / "case.toml")
    data = dataset(case)
    state0, label0, _ = sample_state(case, data, 0)
    state2, label2, _ = sample_state(case, data, 2)
    assert label0 == "11" and label2 == "1"
    assert data.grid.mask is not None and data.grid.n_active == land().size - land().sum()
    assert not np.allclose(np.nan_to_num(state0), np.nan_to_num(state2))


def test_case_file_is_thin_over_python(data_dir):
    """The TOML path builds the same objects a notebook user builds: a grid from the data and its mask."""
    from assim.io.sources import (
        FieldSource,
        domain_mask,
        grid_from_source,
        horizontal,
        open_source,
    )

    da = horizontal(open_source(FieldSource(path=str(data_dir / "ocean.nc"), variable="temp")))
    mask = domain_mask(da.isel(member=slice(0, 8)), rule="all")
    grid = grid_from_source(da.isel(member=0), mask=mask)
    case, _ = load_case(data_dir / "case.toml")
    from assim.case.data import dataset

    built = dataset(case).grid
    np.testing.assert_array_equal(built.mask, grid.mask)
    assert built.shape == grid.shape


def test_python_api_from_xarray_objects_without_a_case_file(data_dir):
    """A notebook user: DataArrays and a DataFrame in, the analysis as an xarray Dataset out, on the data's grid."""
    import jax
    import lineax as lx
    import pandas as pd

    from assim import MaskedCovariance
    from assim.covariances.diffusion import DiffusionCovariance, RandomisedNormalisation
    from assim.io.sources import (
        FieldSource,
        domain_mask,
        grid_from_source,
        horizontal,
        open_source,
    )
    from assim.io.statistics import climatology
    from assim.io.xarray_api import assimilate
    from models.diffusion import Diffusion

    da = horizontal(open_source(FieldSource(path=str(data_dir / "ocean.nc"), variable="temp")))
    members = da.isel(member=slice(0, 8))
    grid = grid_from_source(da.isel(member=0), mask=domain_mask(members))
    mean, spread = climatology(members, "member")
    truth = da.isel(member=11)
    background = truth.copy(data=mean)
    rng = np.random.default_rng(3)
    sea = np.argwhere(grid.active)
    picked = sea[rng.choice(len(sea), 60, replace=False)]
    lat, lon = grid.coords()["lat"][picked[:, 0]], grid.coords()["lon"][picked[:, 1]]
    values = truth.values[picked[:, 0], picked[:, 1]] + 0.05 * rng.standard_normal(60)
    table = pd.DataFrame({"time": 0.0, "latitude": lat, "longitude": lon, "value": values, "error": 0.05})
    B = MaskedCovariance(DiffusionCovariance(grid, np.where(grid.active, spread, 1.0) ** 2, 1.0e6, 10,
                                             RandomisedNormalisation(jax.random.PRNGKey(0), 40),
                                             lx.CG(rtol=1e-10, atol=1e-10)), grid.mask)  # fmt: skip
    out = assimilate(Diffusion(grid, 1.0e3, 3600.0), background, B, table, n_steps=2)
    assert out.attrs["converged"] == 1 and out["analysis"].attrs["units"] == "degC"
    assert out["analysis"].dims == ("time", "lat", "lon") and np.all(np.isnan(out["analysis"].values[:, ~grid.active]))
    err_a = float(np.sqrt(np.nanmean((out["analysis"].isel(time=0) - truth) ** 2)))
    err_b = float(np.sqrt(np.nanmean((background - truth) ** 2)))
    assert err_a < 0.5 * err_b, (err_a, err_b)
    assert float(np.abs(out["increment"]).max()) > 0 and np.all(np.isnan(out["increment"].values[~grid.active]))


def test_assim_run_and_the_xarray_api_give_the_same_analysis(data_dir):
    """The case path and the notebook path share one core: the same model, B, table and solver, the same analysis."""
    import xarray as xr

    from assim.case.build import build, run
    from assim.io.xarray_api import assimilate

    case, _ = load_case(data_dir / "case.toml")
    exp = build(case)
    outcome = run(exp)
    grid = exp.grid
    coords = grid.coords()
    background = xr.DataArray(np.where(grid.active, np.asarray(exp.twin.background), np.nan), dims=("lat", "lon"),
                              coords={"lat": ("lat", coords["lat"], {"units": "degrees_north"}),
                                      "lon": ("lon", coords["lon"], {"units": "degrees_east"})})  # fmt: skip
    out = assimilate(exp.model, background, exp.covariance, exp.files["observations.nc"], case.time.n_steps,
                     solver=exp.solver, start=exp.start)  # fmt: skip
    np.testing.assert_allclose(out["analysis"].values, outcome.analysis, rtol=1e-9, atol=1e-9, equal_nan=True)
    assert out.attrs["n_observations"] == outcome.metrics["n_observations"]


def test_open_boundaries_bring_in_an_inflow_source(data_dir, tmp_path):
    """`inflow` from a file equal to the climatology mean gives the analysis of inflow = "background"; other values differ."""
    with xr.open_dataset(data_dir / "ocean.nc") as ds:
        mean = ds.temp.isel(member=slice(0, 8)).mean("member").load()
    for name, offset in (("same", 0.0), ("warmer", 2.0)):
        xr.Dataset({"inflow": mean + offset}).to_netcdf(tmp_path / f"{name}.nc")
    open_sides = CASE.format(currents=str(data_dir / "currents.nc")).replace(
        'file = "ocean.nc"', f'file = "{data_dir / "ocean.nc"}"').replace(
        'boundaries = ["closed", "closed"]', 'boundaries = ["closed", "open"]')  # fmt: skip
    analyses = {}
    for name, inflow in (("background", '"background"'), ("same", '{ file = "same.nc", variable = "inflow" }'),
                         ("warmer", '{ file = "warmer.nc", variable = "inflow" }')):  # fmt: skip
        text = open_sides.replace('advection = "upwind"\n', f'advection = "upwind"\ninflow = {inflow}\n')
        (tmp_path / f"{name}.toml").write_text(text)
        out = tmp_path / name
        assert main(["run", str(tmp_path / f"{name}.toml"), "--out", str(out), "-q"]) == 0
        with xr.open_dataset(out / "analysis.nc") as ds:
            analyses[name] = ds.analysis.values.copy(), json.loads(ds.attrs["provenance"])
    np.testing.assert_allclose(analyses["same"][0], analyses["background"][0], rtol=0, atol=1e-9)
    assert np.nanmax(np.abs(analyses["warmer"][0] - analyses["background"][0])) > 1e-3
    assert analyses["same"][1]["fields"]["inflow"]["method"] == "none"  # on the data grid: taken as it is
