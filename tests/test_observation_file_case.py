"""Cases that read their observations (and grid, background) from netCDF files reproduce the twin that wrote them."""

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from assim.case import build as case_module
from assim.case.config import load_case, to_toml, validate
from assim.case.experiment import make_grid
from assim.cli import main
from assim.errors import ConfigError, GridMismatchError, InputError
from assim.io.grid_file import cartesian_grid_from_file, latlon_grid_from_file
from assim.io.observation_files import (
    observation_field,
    observation_table,
    write_observation_table,
)
from models.grid import CartesianGrid, LatLonGrid, Periodic

QUICKSTART = Path(__file__).parents[1] / "cases" / "quickstart.toml"
TINY = ["--set", "grid.n=8", "--set", "time.n_steps=4", "--set", "observations.network.fraction=0.3",
        "--set", "solver.max_outer=2"]  # fmt: skip


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """A tiny quickstart twin run: its directory and its analysis.nc."""
    out = tmp_path_factory.mktemp("twin")
    assert main(["run", str(QUICKSTART), "--out", str(out / "run"), "-q", *TINY]) == 0
    with xr.open_dataset(out / "run" / "analysis.nc") as ds:
        return out, ds.load()


def file_case(twin_dir: Path, obs_name: str, **observations) -> Path:
    """A case next to the twin's run: the twin's case with observations, background and grid from files."""
    with xr.open_dataset(twin_dir / "run" / "analysis.nc") as ds:
        data = tomllib.loads(ds.attrs["case"])
    data["name"] = "from_files"
    data["observations"] = {"file": obs_name, **observations}
    data["background"]["file"] = "run/analysis.nc"  # relative to the case file's directory
    data["grid"] = {"file": "run/analysis.nc", "ndim": 2, "boundary": "periodic"}
    path = twin_dir / f"case_{Path(obs_name).stem}.toml"
    path.write_text(to_toml(validate(data)))
    return path


def twin_grid(ds: xr.Dataset) -> CartesianGrid:
    return make_grid(validate(tomllib.loads(ds.attrs["case"])))


@pytest.fixture(scope="module")
def table_run(twin):
    """The twin's observations written as a CF table, assimilated by a case that reads them (tmp dir as cwd-free)."""
    root, ds = twin
    grid = twin_grid(ds)
    n_t, n_o = ds.obs_value.shape
    times = np.repeat(ds.obs_time.values, n_o)
    points = np.tile(np.stack([ds.obs_y.values, ds.obs_x.values], axis=-1), (n_t, 1))
    sigma = json.loads(ds.attrs["metrics"])["observation_noise"]
    table = observation_table(grid, times, points, ds.obs_value.values.reshape(-1), np.full(n_t * n_o, sigma))
    write_observation_table(root / "table.nc", table)
    case = file_case(root, "table.nc")
    out = root / "table_out"
    assert main(["run", str(case), "--out", str(out), "-q"]) == 0
    with xr.open_dataset(out / "analysis.nc") as res:
        return case, out, res.load()


def test_table_file_case_gives_the_twin_analysis(twin, table_run):
    _, ds = twin
    _, out, res = table_run
    # the two runs reach the same CG iterate through different floating-point arithmetic (grid indices against
    # table points): CG stopped at ‖∇J‖ ≈ 3e-7 ‖∇J(0)‖ fixes the analysis to about that fraction of the increment,
    # far above rounding, so agreement is asserted at 1e-6 of the increment (measured: 1.5e-8)
    increment = float(np.abs(ds.analysis.values - ds.background.values).max())
    np.testing.assert_allclose(res.analysis.values, ds.analysis.values, rtol=0, atol=1e-6 * increment)
    np.testing.assert_allclose(res.background.values, ds.background.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.solver_cost.values, ds.solver_cost.values, rtol=1e-10)
    assert "truth" not in res.data_vars  # no truth, so no errors against it
    metrics = json.loads((out / "metrics.json").read_text())
    twin_metrics = json.loads(ds.attrs["metrics"])
    assert "analysis_rmse" not in metrics and "background_rmse" not in metrics
    assert metrics["n_observations"] == twin_metrics["n_observations"]
    for key in ("innovation_rms", "innovation_chi2"):  # of the background: the same arithmetic up to rounding
        assert metrics[key] == pytest.approx(twin_metrics[key], rel=1e-8), key
    for key in ("analysis_residual_rms", "analysis_chi2"):  # of the analysis: as close as the two CG iterates
        assert metrics[key] == pytest.approx(twin_metrics[key], rel=1e-6), key
    assert sorted(p.name for p in out.iterdir()) == ["analysis.nc", "convergence.png", "metrics.json", "states.png",
                                                     "summary.md"]  # fmt: skip


def test_file_case_validates_and_records_its_files(table_run):
    case_path, _, res = table_run
    assert main(["validate", str(case_path)]) == 0
    case, _ = load_case(case_path)
    assert Path(case.observations.file) == case_path.parent / "table.nc"  # relative to the case file, not the cwd
    assert Path(case.grid.file) == case_path.parent / "run" / "analysis.nc"
    stored = validate(tomllib.loads(res.attrs["case"]))  # the stored case reproduces the run's case (--out aside)
    assert stored.model_dump(exclude={"outputs"}) == case.model_dump(exclude={"outputs"})


def test_noise_override_replaces_the_file_errors(twin, table_run):
    """σ from the case instead of the file: χ² scales as 1/σ² with the same departures."""
    root, ds = twin
    case_path, _, res = table_run
    out = root / "override"
    sigma = json.loads(ds.attrs["metrics"])["observation_noise"]
    assert main(["run", str(case_path), "--out", str(out), "-q", "--set", f"observations.noise={2 * sigma}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    base = json.loads(res.attrs["metrics"])
    assert metrics["observation_noise"] == 2 * sigma
    assert metrics["innovation_chi2"] == pytest.approx(base["innovation_chi2"] / 4, rel=1e-10)
    with xr.open_dataset(out / "analysis.nc") as other:
        assert float(np.abs(other.analysis.values - res.analysis.values).max()) > 1e-6  # the weights changed


def test_gridded_file_with_nans_is_masked_and_counted(twin):
    """A gridded field (NaN = not observed) of the twin's observations, two of them removed, gives the same χ²s."""
    root, ds = twin
    grid = twin_grid(ds)
    n_t = ds.obs_time.size
    field = np.full((n_t, *grid.shape), np.nan)
    cells = np.stack([np.searchsorted(grid.coords()[d], ds[f"obs_{d}"].values) for d in grid.dims])
    for t in range(n_t):
        field[(t, *cells)] = ds.obs_value.values[t]
    dropped = [(0, *cells[:, 0]), (n_t - 1, *cells[:, -1])]
    for index in dropped:
        field[index] = np.nan
    sigma = json.loads(ds.attrs["metrics"])["observation_noise"]
    observation_field(grid, ds.obs_time.values, field, sigma).to_netcdf(root / "gridded.nc")
    out = root / "gridded_out"
    assert main(["run", str(file_case(root, "gridded.nc")), "--out", str(out), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    n_twin = json.loads(ds.attrs["metrics"])["n_observations"]
    assert metrics["n_observations"] == n_twin - 2
    assert metrics["n_observations_masked"] == n_t * grid.size - (n_twin - 2)
    with xr.open_dataset(out / "analysis.nc") as res:
        values = res.obs_value.values  # (obs_time, every cell): NaN where masked
        assert int(np.isfinite(values).sum()) == n_twin - 2
        assert np.all(np.isnan(res.obs_innovation.values[~np.isfinite(values)]))
        assert np.all(np.isfinite(res.analysis.values))
        # two fewer observations: close to, but not exactly, the twin's analysis
        diff = float(np.abs(res.analysis.values - ds.analysis.values).max())
        assert 1e-8 < diff < 0.5


def test_file_on_another_grid_fails_with_one_line_and_no_outputs(twin, capsys):
    root, ds = twin
    wrong = CartesianGrid((10, 10), (1.0, 1.0), Periodic())
    times = ds.obs_time.values
    observation_field(wrong, times, np.ones((times.size, 10, 10)), 0.1).to_netcdf(root / "wrong.nc")
    case = file_case(root, "wrong.nc")
    out = root / "wrong_out"
    capsys.readouterr()
    assert main(["run", str(case), "--out", str(out), "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differs from the model grid" in err and "regrid" in err
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(GridMismatchError):
        case_module.check(load_case(case)[0])


def test_grid_from_file_equals_the_grid_of_the_case_that_wrote_it(twin, tmp_path):
    _, ds = twin
    want = twin_grid(ds)
    got = cartesian_grid_from_file(Path(twin[0]) / "run" / "analysis.nc", 2, Periodic())
    assert got.shape == want.shape and got.boundaries == want.boundaries
    np.testing.assert_allclose(got.lengths, want.lengths, rtol=1e-14)
    np.testing.assert_allclose(got.origin, want.origin, atol=1e-14)
    # a Lorenz-96 ring (centres 0 … n−1, origin −1/2) and a shifted 1-D grid
    for grid in (CartesianGrid((8,), (8.0,), Periodic(), origin=(-0.5,)), CartesianGrid((5,), (2.5,), origin=(3.0,))):
        xr.Dataset(coords={"x": grid.coords()["x"]}).to_netcdf(tmp_path / "ring.nc")
        back = cartesian_grid_from_file(tmp_path / "ring.nc", 1)
        np.testing.assert_allclose(back.coords()["x"], grid.coords()["x"], atol=1e-12)
        assert back.lengths == pytest.approx(grid.lengths) and back.origin == pytest.approx(grid.origin)


def test_latlon_grid_from_cf_coordinates(tmp_path):
    lat, lon = np.arange(20.0, 91.0, 10.0), np.arange(-80.0, 41.0, 10.0)
    coords = {"latitude": ("latitude", lat, {"units": "degrees_north"}),
              "longitude": ("longitude", lon, {"units": "degrees_east"})}  # fmt: skip
    xr.Dataset(coords=coords).to_netcdf(tmp_path / "ll.nc")
    grid = latlon_grid_from_file(tmp_path / "ll.nc")
    assert isinstance(grid, LatLonGrid) and grid.lat == tuple(lat) and grid.lon == tuple(lon)
    with pytest.raises(GridMismatchError, match="latitude/longitude"):
        cartesian_grid_from_file(tmp_path / "ll.nc", 2)
    bad = {
        "units": ({"latitude": ("latitude", lat, {"units": "m"}), "longitude": coords["longitude"]}, "degrees_north"),
        "reversed": ({"latitude": ("latitude", lat[::-1], {"units": "degrees_north"}),
                      "longitude": coords["longitude"]}, "reverse it"),
        "irregular": ({"latitude": ("latitude", np.r_[lat[:-1], 89.0], {"units": "degrees_north"}),
                       "longitude": coords["longitude"]}, "regularly spaced"),
    }  # fmt: skip
    for name, (c, message) in bad.items():
        xr.Dataset(coords=c).to_netcdf(tmp_path / f"{name}.nc")
        with pytest.raises(InputError, match=message):
            latlon_grid_from_file(tmp_path / f"{name}.nc")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"observations": {"file": "o.nc", "network": {"kind": "regular", "spacing": 2}}},
         r"^observations\.network: observations come from observations\.file"),
        ({"observations": {"every": 1}}, r"^observations\.network: required table is missing"),
        ({"observations": {"network": {"kind": "regular", "spacing": 2}}}, r"^observations\.noise: required"),
        ({"grid": {"file": "g.nc", "n": 8}}, r"^grid\.n: comes from the coordinates of grid\.file"),
        ({"grid": {"ndim": 2}}, r"^grid\.n: required key is missing"),
        ({"background": {"kind": "diagonal", "variance": 1.0, "file": "b.nc"}},
         r"^background\.file: a twin experiment draws its background"),
        ({"observations": {"file": "o.nc"}, "cycling": {"window": 2, "shift": 2, "n_windows": 1}},
         r"^cycling: a case with observations\.file assimilates one window"),
        ({"observations": {"file": "o.nc"}, "discover": {"parameters": {"kappa": {"kind": "lognormal", "median": 1e-3,
                                                                               "log_std": 1.0}}}},
         r"^discover: a case with observations\.file has no truth"),
    ],
)  # fmt: skip
def test_file_keys_are_checked(change, message):
    data = tomllib.loads(QUICKSTART.read_text())
    for table, values in change.items():
        if table in ("observations", "grid"):
            data[table] = dict(values)
        else:
            data[table] = values
    with pytest.raises(ConfigError, match=message):
        validate(data)
