"""Field-valued model parameters from data sources: κ, shallow-water H, Lorenz-96 F and the [data] B's σ.

Each test writes a small CF netCDF file and checks that the built model holds the source's field
interpolated onto the grid (against the analytic field), with units converted, and that a bad field
(negative, missing, not covering the grid) is refused in one line.
"""

import json

import numpy as np
import pytest
import xarray as xr
from pydantic import ValidationError

from assim.case.schema.models import (
    AdvectionDiffusionModel,
    DiffusionModel,
    Lorenz96Model,
    ShallowWaterModel,
)
from assim.cli import main
from assim.errors import GridMismatchError, InputError
from models.grid import CartesianGrid, LatLonGrid, Neumann, Periodic


def kappa_xy(y, x):
    return 1e-3 * (1.0 + x + 2.0 * y)  # linear: bilinear interpolation is exact


def write_xy(path, f, units="1", name="kappa", n=11, lo=0.0, hi=1.0):
    """A field f(y, x) on an n × n x/y grid over [lo, hi]², coordinates recognised by their axis attributes."""
    c = np.linspace(lo, hi, n)
    y, x = np.meshgrid(c, c, indexing="ij")
    attrs = {} if units is None else {"units": units}
    ds = xr.Dataset({name: (("yc", "xc"), f(y, x), attrs)},
                    coords={"yc": ("yc", c, {"axis": "Y"}), "xc": ("xc", c, {"axis": "X"})})  # fmt: skip
    ds.to_netcdf(path)
    return str(path)


LAT, LON = np.arange(-20.0, 21.0, 5.0), np.arange(140.0, 181.0, 5.0)


def write_latlon(path, f, units, name="kappa"):
    """A field f(lat, lon) on a 2.5° grid covering LAT × LON, written north to south."""
    lat, lon = np.arange(30.0, -31.0, -2.5), np.arange(130.0, 191.0, 2.5)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    ds = xr.Dataset({name: (("lat", "lon"), f(la, lo), {"units": units})},
                    coords={"lat": ("lat", lat, {"units": "degrees_north"}),
                            "lon": ("lon", lon, {"units": "degrees_east"})})  # fmt: skip
    ds.to_netcdf(path)
    return str(path)


def centres(grid):
    return np.meshgrid(*grid.coords().values(), indexing="ij")


def test_diffusion_kappa_field_is_interpolated_onto_the_grid(tmp_path):
    path = write_xy(tmp_path / "k.nc", kappa_xy)
    grid = CartesianGrid((6, 8), (1.0, 1.0), Neumann())
    config = DiffusionModel.model_validate({"kind": "diffusion", "kappa": {"file": path, "variable": "kappa"}})
    provenance = {}
    model, _ = config.build(grid, 0.01, provenance=provenance)
    np.testing.assert_allclose(np.asarray(model.kappa), kappa_xy(*centres(grid)), rtol=1e-12)
    assert provenance["kappa"]["method"] == "bilinear" and provenance["kappa"]["variable"] == "kappa"
    assert provenance["kappa"]["source_shape"] == (11, 11) and provenance["kappa"]["target_shape"] == (6, 8)
    model.step(np.ones(grid.shape))  # the field drives the physics


def test_kappa_units_are_converted_on_a_latlon_grid(tmp_path):
    def k(la, lo):
        return 1e7 * (1.0 + 0.01 * la + 0.001 * (lo - 140.0))  # cm2 s-1

    path = write_latlon(tmp_path / "k.nc", k, "cm2 s-1")
    grid = LatLonGrid(LAT, LON)
    config = AdvectionDiffusionModel.model_validate({"kind": "advection_diffusion", "kappa": {"file": path, "variable": "kappa"},
                                                     "wind": {"u": {"file": path, "variable": "kappa", "scale": 0.0, "assume_units": "m s-1"},
                                                              "v": {"file": path, "variable": "kappa", "scale": 0.0}}})  # fmt: skip
    provenance = {}
    with pytest.raises(InputError):  # the winds of this file are in cm2 s-1: not a velocity
        config.build(grid, 600.0, provenance=provenance)
    config = DiffusionModel.model_validate({"kind": "diffusion", "kappa": {"file": path, "variable": "kappa"}})
    model, _ = config.build(grid, 600.0, provenance=provenance)
    np.testing.assert_allclose(np.asarray(model.kappa), 1e-4 * k(*centres(grid)), rtol=1e-10)
    assert provenance["kappa"]["units"] == "cm2 s-1 -> m2 s-1"


def test_advection_diffusion_kappa_field_with_file_winds(tmp_path):
    path = write_xy(tmp_path / "k.nc", kappa_xy)
    wind = write_xy(tmp_path / "w.nc", lambda y, x: 0.1 + 0 * x, name="u")
    grid = CartesianGrid((8, 8), (1.0, 1.0), Periodic())
    config = AdvectionDiffusionModel.model_validate({
        "kind": "advection_diffusion", "kappa": {"file": path, "variable": "kappa"},
        "wind": {"u": {"file": wind, "variable": "u"}, "v": {"file": wind, "variable": "u", "scale": 0.0}}})  # fmt: skip
    provenance = {}
    model, _ = config.build(grid, 0.01, provenance=provenance)
    np.testing.assert_allclose(np.asarray(model.kappa), kappa_xy(*centres(grid)), rtol=1e-12)
    assert set(provenance) == {"wind_u", "wind_v", "kappa"}


@pytest.mark.parametrize("kind", ["diffusion", "advection_diffusion"])
def test_a_negative_kappa_field_is_refused_in_one_line(tmp_path, kind):
    path = write_xy(tmp_path / "k.nc", lambda y, x: kappa_xy(y, x) - 2e-3)
    config = DiffusionModel if kind == "diffusion" else AdvectionDiffusionModel
    config = config.model_validate({"kind": kind, "kappa": {"file": path, "variable": "kappa"}})
    with pytest.raises(InputError) as err:
        config.build(CartesianGrid((8, 8), (1.0, 1.0), Periodic()), 0.01)
    assert "model.kappa" in str(err.value) and "positive" in str(err.value) and len(str(err.value).splitlines()) == 1


def test_a_negative_kappa_on_masked_cells_only_is_accepted(tmp_path):
    path = write_xy(tmp_path / "k.nc", lambda y, x: np.where(x > 0.75, -1.0, kappa_xy(y, x)))
    mask = np.ones((8, 8), bool)
    mask[:, 6:] = False  # x > 0.75: land
    grid = CartesianGrid((8, 8), (1.0, 1.0), Neumann(), mask=mask)
    provenance = {}
    model, _ = DiffusionModel.model_validate({"kind": "diffusion", "kappa": {"file": path, "variable": "kappa"}}).build(
        grid, 0.01, provenance=provenance)  # fmt: skip
    k = np.asarray(model.kappa)
    np.testing.assert_allclose(k[mask], kappa_xy(*centres(grid))[mask], rtol=1e-12)
    assert np.all(k > 0) and provenance["kappa"]["min"] > 0


def test_a_source_that_does_not_cover_the_grid_is_refused(tmp_path):
    path = write_xy(tmp_path / "k.nc", kappa_xy, lo=0.2, hi=0.8)
    config = DiffusionModel.model_validate({"kind": "diffusion", "kappa": {"file": path, "variable": "kappa"}})
    with pytest.raises(GridMismatchError) as err:
        config.build(CartesianGrid((8, 8), (1.0, 1.0), Neumann()), 0.01)
    assert "k.nc" in str(err.value) and "never extrapolates" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_negative_number_is_still_refused_by_the_schema():
    with pytest.raises(ValidationError):
        DiffusionModel.model_validate({"kind": "diffusion", "kappa": -1.0})
    assert DiffusionModel.model_validate({"kind": "diffusion", "kappa": 0.5}).kappa == 0.5


def test_shallow_water_depth_field_in_metres(tmp_path):
    def depth_km(y, x):
        return 0.5 + 0.1 * np.sin(2 * np.pi * x / 1e5) ** 0 * (y / 1e5)  # linear in y, km

    c = np.linspace(0.0, 1e5, 11)
    y, x = np.meshgrid(c, c, indexing="ij")
    xr.Dataset({"H": (("y", "x"), depth_km(y, x), {"units": "km"})},
               coords={"y": ("y", c, {"axis": "Y", "units": "m"}), "x": ("x", c, {"axis": "X", "units": "m"})}
               ).to_netcdf(tmp_path / "h.nc")  # fmt: skip
    grid = CartesianGrid((8, 8), (1e5, 1e5), Periodic())
    config = ShallowWaterModel.model_validate(
        {"kind": "shallow_water", "depth": {"file": str(tmp_path / "h.nc"), "variable": "H"}}
    )
    provenance = {}
    model, state = config.build(grid, 10.0, provenance=provenance)
    np.testing.assert_allclose(np.asarray(model.H), 1e3 * depth_km(*centres(grid)), rtol=1e-10)
    assert provenance["depth"]["units"] == "km -> m" and provenance["depth"]["method"] == "bilinear"
    model.step(state)
    xr.Dataset({"H": (("y", "x"), -depth_km(y, x), {"units": "m"})},
               coords={"y": ("y", c, {"axis": "Y"}), "x": ("x", c, {"axis": "X"})}).to_netcdf(tmp_path / "neg.nc")  # fmt: skip
    config = ShallowWaterModel.model_validate(
        {"kind": "shallow_water", "depth": {"file": str(tmp_path / "neg.nc"), "variable": "H"}}
    )
    with pytest.raises(InputError, match="model.depth"):
        config.build(grid, 10.0)


def test_lorenz96_forcing_vector_from_a_source(tmp_path):
    forcing = 8.0 + 0.5 * np.arange(10) / 10
    xr.Dataset({"F": (("site",), forcing)}).to_netcdf(tmp_path / "f.nc")
    from models import CartesianGrid as Grid

    grid = Grid((10,), (10.0,), Periodic(), origin=(-0.5,))
    config = Lorenz96Model.model_validate({"kind": "lorenz96", "forcing": {"file": str(tmp_path / "f.nc"), "variable": "F"},
                                           "spin_up": 5})  # fmt: skip
    provenance = {}
    model, x0 = config.build(grid, 0.05, provenance=provenance)
    np.testing.assert_allclose(np.asarray(model.forcing), forcing)
    assert x0.shape == (10,) and provenance["forcing"]["method"] == "by_index"
    with pytest.raises(InputError, match="length 12"):
        config.build(Grid((12,), (12.0,), Periodic(), origin=(-0.5,)), 0.05)
    assert Lorenz96Model.model_validate({"kind": "lorenz96"}).build(grid, 0.05, spin_up=False)[0].forcing == 8.0


# ---------------------------------------------------------------- end to end: a [data] case with κ and σ sources
DLAT, DLON = np.arange(10.0, -11.0, -5.0), np.arange(150.0, 181.0, 5.0)  # 5 × 7, north to south

CASE = """
name = "kappa_field"
[data]
field = {{ file = "sst.nc", variable = "sst" }}
dimension = "member"
window = 9
climatology = {{ index = [0, 8] }}
boundaries = ["closed", "closed"]
[model]
kind = "{kind}"
kappa = {{ file = "kappa.nc", variable = "{kappa}" }}
scheme = "crank_nicolson"
[time]
n_steps = 2
dt = 21600.0
[observations]
network = {{ kind = "stations_and_tracks", stations = 20, track_points = 5 }}
every = 1
noise = 0.05
[background]
kind = "climatology"
length_scale = 4.0e5
normalisation_samples = 20
sigma = {{ file = "kappa.nc", variable = "sigma" }}
[solver]
kind = "gauss_newton"
max_outer = 2
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fields")
    rng = np.random.default_rng(0)
    la, lo = np.meshgrid(DLAT, DLON, indexing="ij")
    sst = np.stack([20.0 + 0.1 * la + rng.normal(0, 0.5) * np.exp(-((la - 0) ** 2 + (lo - 165) ** 2) / 200.0)
                    for _ in range(10)])  # fmt: skip
    coords = {"member": ("member", np.arange(10)), "lat": ("lat", DLAT, {"units": "degrees_north"}),
              "lon": ("lon", DLON, {"units": "degrees_east"})}  # fmt: skip
    xr.Dataset({"sst": (("member", "lat", "lon"), sst, {"units": "degC"})}, coords=coords).to_netcdf(d / "sst.nc")
    lat, lon = np.arange(-20.0, 21.0, 2.0), np.arange(140.0, 191.0, 2.0)
    kl, ko = np.meshgrid(lat, lon, indexing="ij")
    kappa = 1e7 * (1.0 + 0.02 * kl)  # cm2 s-1: 1e3 m2 s-1 at the equator
    sigma = 0.3 + 0.0 * kl  # K: a spread, converted as a difference to degC
    xr.Dataset({"kappa": (("lat", "lon"), kappa, {"units": "cm2 s-1"}),
                "neg": (("lat", "lon"), -kappa, {"units": "cm2 s-1"}),
                "sigma": (("lat", "lon"), sigma, {"units": "K"})},
               coords={"lat": ("lat", lat, {"units": "degrees_north"}),
                       "lon": ("lon", lon, {"units": "degrees_east"})}).to_netcdf(d / "kappa.nc")  # fmt: skip
    (d / "case.toml").write_text(CASE.format(kind="diffusion", kappa="kappa"))
    (d / "negative.toml").write_text(CASE.format(kind="diffusion", kappa="neg"))
    return d


def test_assim_run_of_a_data_case_with_a_kappa_field_source(data_dir):
    out = data_dir / "out"
    assert main(["run", str(data_dir / "case.toml"), "--out", str(out), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["analysis_rmse"] < metrics["background_rmse"], metrics
    with xr.open_dataset(out / "analysis.nc") as ds:
        provenance = json.loads(ds.attrs["provenance"])
    assert provenance["fields"]["kappa"]["method"] == "bilinear"
    assert provenance["fields"]["kappa"]["units"] == "cm2 s-1 -> m2 s-1"
    np.testing.assert_allclose(provenance["fields"]["kappa"]["min"], 1e3 * (1 + 0.02 * DLAT.min()))
    assert provenance["background_sigma"]["units"] == "K -> degC"
    np.testing.assert_allclose(provenance["background_sigma"]["max"], 0.3)


def test_the_data_b_sigma_comes_from_its_source(data_dir):
    from assim.case.config import load_case
    from assim.case.data import dataset, make_covariance

    case, _ = load_case(data_dir / "case.toml")
    data = dataset(case)
    cov = make_covariance(case, data, 4.0e5)
    np.testing.assert_allclose(np.asarray(cov.variance), 0.09 * np.ones(data.grid.shape), rtol=1e-12)


def test_a_negative_kappa_source_fails_the_run_in_one_line(data_dir, capsys):
    out = data_dir / "negative_out"
    status = main(["run", str(data_dir / "negative.toml"), "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert status != 0 and len(err.splitlines()) == 1 and "model.kappa" in err and "kappa.nc" in err, err
    assert "Traceback" not in err and not out.exists()


def test_a_twin_case_records_how_its_kappa_source_reached_the_grid(tmp_path):
    """A preset twin on a [grid] with κ from a file: analysis.nc's provenance says how κ reached the grid."""
    path = write_xy(tmp_path / "kappa.nc", kappa_xy)
    (tmp_path / "twin.toml").write_text(f"""
[model]
kind = "diffusion"
kappa = {{ file = "{path}", variable = "kappa" }}
[grid]
n = 6
ndim = 2
boundary = "neumann"
[time]
n_steps = 3
dt = 0.01
[observations]
network = {{ kind = "regular", spacing = 2 }}
noise = 0.05
[background]
kind = "diagonal"
variance = 0.04
[outputs]
figures = false
""")
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "twin.toml"), "--out", str(out), "-q"]) == 0
    with xr.open_dataset(out / "analysis.nc") as ds:
        how = json.loads(ds.attrs["provenance"])["fields"]["kappa"]
    grid = CartesianGrid((6, 6), (1.0, 1.0), Neumann())
    y, x = centres(grid)
    assert how["method"] == "bilinear" and how["target_shape"] == [6, 6]
    np.testing.assert_allclose([how["min"], how["max"]], [kappa_xy(y, x).min(), kappa_xy(y, x).max()], rtol=1e-12)
