"""Fields from data (assim.io.sources): selections, coarsening, units, CF axes, grids, interpolation, statistics."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from assim.errors import GridMismatchError, InputError
from assim.io.sources import (
    FieldSource,
    convert_units,
    domain_mask,
    grid_from_source,
    horizontal,
    onto_grid,
    open_source,
    recognise_axes,
    samples,
)
from assim.io.statistics import climatology, correlation_length
from models.grid import CartesianGrid, LatLonGrid, Neumann, Periodic

LAT = np.arange(87.0, -88.0, -6.0)  # north to south, 30 rows
LON = np.arange(0.0, 360.0, 6.0)  # 0..354 degrees east, 60 columns
TIMES = pd.date_range("1990-01-01", periods=4, freq="YS")


def linear(lat, lon):
    return 2.0 * lat + 0.5 * lon + 1.0


def write_latlon(tmp_path, name="t2m.nc", nan_land=False):
    """A global field written north to south on 0..354 E, linear in lat and lon plus 10 per time step."""
    la, lo = np.meshgrid(LAT, LON, indexing="ij")
    data = np.stack([linear(la, lo) + 10.0 * k for k in range(TIMES.size)])
    if nan_land:
        data[:, 3:6, 10:14] = np.nan  # land in every sample
        data[1, 20, 30] = np.nan  # a cloud in one sample
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), data, {"units": "K"})},
        coords={"time": TIMES, "latitude": ("latitude", LAT, {"units": "degrees_north"}),
                "longitude": ("longitude", LON, {"units": "degrees_east"})},
    )  # fmt: skip
    path = tmp_path / name
    ds.to_netcdf(path)
    return str(path)


def write_cartesian(tmp_path):
    """A wind in cm s-1 on x/y coordinates named xc/yc, recognised only by their axis attributes."""
    xc, yc = 500.0 + 1000.0 * np.arange(12), 250.0 + 500.0 * np.arange(8)
    data = 100.0 * (np.add.outer(yc / 1000.0, xc / 1000.0))
    ds = xr.Dataset(
        {"uwind": (("yc", "xc"), data, {"units": "cm s-1"}), "nounits": (("yc", "xc"), data)},
        coords={"xc": ("xc", xc, {"axis": "X", "units": "m"}), "yc": ("yc", yc, {"axis": "Y", "units": "m"})},
    )
    path = tmp_path / "wind.nc"
    ds.to_netcdf(path)
    return str(path)


def latlon_da(lat, lon, values=None, **extra):
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    v = linear(la, lo) if values is None else values
    return xr.DataArray(v, dims=("lat", "lon"), name="f",
                        coords={"lat": ("lat", lat, {"units": "degrees_north"}),
                                "lon": ("lon", lon, {"units": "degrees_east"})}, **extra)  # fmt: skip


# ---------------------------------------------------------------- selections and coarsening
def test_sel_scalar_list_and_date_range(tmp_path):
    path = write_latlon(tmp_path)
    one = open_source(FieldSource(path, "t2m", sel={"time": "1991-01-01"}))
    assert "time" not in one.dims and one.shape == (30, 60)
    two = open_source(FieldSource(path, "t2m", sel={"time": ["1990-01-01", "1992-01-01"]}))
    assert two.sizes["time"] == 2
    rng = open_source(FieldSource(path, "t2m", sel={"time": {"start": "1991-01-01", "stop": "1993-12-31"}}))
    np.testing.assert_array_equal(rng.time.values, TIMES[1:].values)
    north = open_source(FieldSource(path, "t2m", sel={"latitude": {"start": 20, "stop": 60}}))
    assert set(north.latitude.values) == {57.0, 51.0, 45.0, 39.0, 33.0, 27.0, 21.0}


def test_isel_int_list_and_range(tmp_path):
    path = write_latlon(tmp_path)
    assert open_source(FieldSource(path, "t2m", isel={"time": 0})).ndim == 2
    assert open_source(FieldSource(path, "t2m", isel={"time": [0, 2, 3]})).sizes["time"] == 3
    r = open_source(FieldSource(path, "t2m", isel={"time": [1, 3], "longitude": {"points": [0, 5]}}))
    assert r.sizes["time"] == 2 and r.sizes["longitude"] == 2
    np.testing.assert_array_equal(r.time.values, TIMES[1:3].values)


def test_subset_by_role_with_longitude_modulo_360(tmp_path):
    path = write_latlon(tmp_path)
    da = open_source(FieldSource(path, "t2m", subset={"lat": [20, 60], "lon": [-80, 40], "time": ["1990", "1991"]}))
    assert da.sizes["time"] == 2
    np.testing.assert_allclose(da.longitude.values, np.arange(-78.0, 40.0, 6.0))
    assert da.latitude.min() >= 20 and da.latitude.max() <= 60
    # the relabelled longitude -78 is the file's 282 E
    np.testing.assert_allclose(da.isel(time=0, longitude=0).values, linear(da.latitude.values, 282.0))


def test_coarsen_gives_block_means_and_nan_only_for_all_nan_blocks(tmp_path):
    path = write_latlon(tmp_path, nan_land=True)
    full = open_source(FieldSource(path, "t2m")).values
    c = open_source(FieldSource(path, "t2m", coarsen=2))
    assert c.shape == (4, 15, 30)
    np.testing.assert_allclose(c.values[0, 0, 0], full[0, :2, :2].mean())
    np.testing.assert_allclose(c.latitude.values[0], 84.0)
    assert np.isnan(c.values[0, 2, 5])  # rows 4-5, columns 10-11: all land
    np.testing.assert_allclose(c.values[0, 1, 5], np.nanmean(full[0, 2:4, 10:12]))  # half land: mean of the sea
    d = open_source(FieldSource(path, "t2m", coarsen={"lon": 3}))
    assert d.shape == (4, 30, 20)
    for bad in (0, 2.5, 31):
        with pytest.raises(InputError, match=r"t2m\.nc.*'t2m'.*coarsen"):
            open_source(FieldSource(path, "t2m", coarsen=bad))


# ---------------------------------------------------------------- units
@pytest.mark.parametrize(
    "value, src, dst, expected",
    [(250.0, "cm s-1", "m s-1", 2.5), (1.0, "m/s", "m s^-1", 1.0), (36.0, "km h-1", "m s**-1", 10.0),
     (1.0, "knots", "m s-1", 0.514444), (1e4, "cm2 s-1", "m2/s", 1.0), (1.0, "m^2/s", "m2 s-1", 1.0),
     (2.0, "km", "m", 2000.0), (5.0, "gpm", "m", 5.0), (273.15, "K", "degC", 0.0),
     (10.0, "degree_Celsius", "K", 283.15), (3.0, "1", "dimensionless", 3.0)],
)  # fmt: skip
def test_convert_units_table(value, src, dst, expected):
    np.testing.assert_allclose(convert_units(value, src, dst), expected, rtol=1e-5)


def test_convert_units_anomalies_dataarrays_and_failures():
    assert convert_units(2.0, "K", "degC", anomaly=True) == 2.0
    da = xr.DataArray([100.0, 200.0], dims="x", attrs={"units": "cm/s", "long_name": "u"})
    out = convert_units(da, "cm/s", "m s-1")
    np.testing.assert_allclose(out.values, [1.0, 2.0])
    assert out.attrs == {"units": "m s-1", "long_name": "u"}
    with pytest.raises(InputError, match="do not convert"):
        convert_units(1.0, "m s-1", "m2 s-1")
    with pytest.raises(InputError, match=r"'furlongs'.*understood.*m s-1"):
        convert_units(1.0, "furlongs", "m")


def test_open_source_converts_assumes_and_scales(tmp_path):
    path = write_cartesian(tmp_path)
    raw = open_source(FieldSource(path, "uwind"))
    u = open_source(FieldSource(path, "uwind", units="m s-1", scale=2.0))
    np.testing.assert_allclose(u.values, raw.values / 50.0)
    assert u.attrs["units"] == "m s-1"
    with pytest.raises(InputError, match=r"wind\.nc.*'uwind'.*do not convert"):
        open_source(FieldSource(path, "uwind", units="m2 s-1"))
    with pytest.raises(InputError, match=r"wind\.nc.*'nounits'.*assume_units"):
        open_source(FieldSource(path, "nounits", units="m s-1"))
    v = open_source(FieldSource(path, "nounits", units="m s-1", assume_units="cm s-1"))
    np.testing.assert_allclose(v.values, raw.values / 100.0)


# ---------------------------------------------------------------- axes and grids
def test_recognise_axes_from_cf_attributes_with_unusual_names(tmp_path):
    da = open_source(FieldSource(write_cartesian(tmp_path), "uwind"))
    assert recognise_axes(da) == {"y": "yc", "x": "xc"}
    odd = xr.DataArray(np.zeros((2, 3, 4)), dims=("when", "phi", "lam"), coords={
        "phi": ("phi", [0.0, 1, 2], {"standard_name": "latitude"}), "lam": ("lam", [0.0, 1, 2, 3], {"units": "degrees_east"}),
        "when": ("when", [0.0, 1], {"axis": "T"})})  # fmt: skip
    assert recognise_axes(odd) == {"lat": "phi", "lon": "lam", "time": "when"}
    assert recognise_axes(odd.to_dataset(name="v")) == {"lat": "phi", "lon": "lam", "time": "when"}
    assert horizontal(odd).dims == ("when", "lat", "lon")
    nemo = xr.DataArray(np.zeros((3, 4)), dims=("y", "x"), coords={"nav_lat": ("y", [10.0, 5, 0]),
                                                                   "nav_lon": ("x", [0.0, 5, 10, 15])})  # fmt: skip
    assert recognise_axes(nemo)["lat"] == "nav_lat"
    h = horizontal(nemo)
    assert h.dims == ("lat", "lon") and list(h.lat.values) == [0.0, 5.0, 10.0]
    with pytest.raises(InputError, match="no horizontal axes"):
        recognise_axes(xr.DataArray(np.zeros(3), dims="level", name="q"))


def test_grid_from_source_latlon_regional_global_and_cartesian(tmp_path):
    path = write_latlon(tmp_path)
    world = grid_from_source(open_source(FieldSource(path, "t2m", isel={"time": 0})))
    assert isinstance(world, LatLonGrid) and world.shape == (30, 60)
    assert world.lat[0] == -87.0 and isinstance(world.boundaries[1], Periodic)
    region = grid_from_source(open_source(FieldSource(path, "t2m", subset={"lon": [-80, 40], "lat": [-30, 30]})))
    assert region.lon[0] == -78.0 and isinstance(region.boundaries[1], Neumann)
    cart = grid_from_source(open_source(FieldSource(write_cartesian(tmp_path), "uwind")), boundaries=Neumann())
    assert isinstance(cart, CartesianGrid) and cart.shape == (8, 12)
    assert cart.lengths == (4000.0, 12000.0) and cart.origin == (0.0, 0.0)
    line = xr.DataArray(np.zeros(5), dims="xc", coords={"xc": ("xc", 1.0 + 2.0 * np.arange(5), {"axis": "X"})})
    g1 = grid_from_source(line)
    assert g1.shape == (5,) and g1.lengths == (10.0,) and g1.origin == (0.0,)
    curvilinear = xr.DataArray(np.zeros((3, 4)), dims=("y", "x"), name="f", coords={
        "nav_lat": (("y", "x"), np.add.outer([0.0, 1, 2], np.zeros(4))), "nav_lon": (("y", "x"), np.zeros((3, 4)))})  # fmt: skip
    with pytest.raises(GridMismatchError, match="'nav_lat' is 2-D.*curvilinear.*interpolate"):
        grid_from_source(curvilinear)
    bumpy = xr.DataArray(np.zeros(4), dims="x", coords={"x": [0.0, 1, 3, 4]}, name="f")
    with pytest.raises(GridMismatchError, match="not regularly spaced.*interpolate"):
        grid_from_source(bumpy)


# ---------------------------------------------------------------- onto the grid
def test_onto_grid_exact_match_and_north_to_south(tmp_path):
    da = open_source(FieldSource(write_latlon(tmp_path), "t2m"))
    grid = LatLonGrid(LAT[::-1], LON)
    values, prov = onto_grid(da, grid, what="t2m")
    assert prov == {"method": "none"} and values.shape == (4, 30, 60)
    la, lo = np.meshgrid(LAT[::-1], LON, indexing="ij")
    np.testing.assert_allclose(values[2], linear(la, lo) + 20.0)
    shifted = LatLonGrid(LAT[::-1], np.arange(-180.0, 180.0, 6.0))  # same points, other longitude convention
    v2, p2 = onto_grid(da.isel(time=0), shifted, what="t2m")
    assert p2["method"] == "none"
    np.testing.assert_allclose(v2[:, 0], linear(LAT[::-1], 180.0))


def test_onto_grid_bilinear_reproduces_linear_field_and_wraps_longitude():
    src = latlon_da(np.arange(-60.0, 61.0, 10.0), np.arange(0.0, 360.0, 10.0))
    grid = LatLonGrid(np.arange(-52.5, 55.0, 5.0), np.arange(12.5, 345.0, 5.0), boundaries=(Neumann(), Neumann()))
    values, prov = onto_grid(src, grid, what="f")
    assert prov == {"method": "bilinear", "source_shape": (13, 36), "target_shape": grid.shape, "periodic_lon": True}
    la, lo = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    np.testing.assert_allclose(values, linear(la, lo), atol=1e-10)
    across = LatLonGrid([-10.0, 0.0, 10.0], [352.5, 355.0, 357.5], boundaries=(Neumann(), Neumann()))
    wrap, p = onto_grid(src, across, what="f")
    assert p["periodic_lon"]
    w = np.array([0.25, 0.5, 0.75])  # weight of the column at 360 = 0 E
    np.testing.assert_allclose(wrap, (1 - w) * linear(np.array([[-10.0], [0], [10]]), 350.0)
                               + w * linear(np.array([[-10.0], [0], [10]]), 0.0))  # fmt: skip


def test_onto_grid_0_360_source_onto_minus80_40_grid_north_to_south():
    src = latlon_da(np.arange(60.0, -61.0, -10.0), np.arange(0.0, 360.0, 10.0))[:, :]  # north to south
    grid = LatLonGrid(np.arange(-45.0, 50.0, 5.0), np.arange(-75.0, 40.0, 5.0))
    values, prov = onto_grid(src, grid, what="f")
    assert prov["method"] == "bilinear"
    la, lo = np.meshgrid(grid.lat, np.mod(grid.lon, 360.0), indexing="ij")
    interior = lo[0] < 350.0  # the field is linear on each side of the 0/360 seam, not across it
    np.testing.assert_allclose(values[:, interior], linear(la, lo)[:, interior], atol=1e-10)


def test_onto_grid_keeps_nan_next_to_land_and_never_extrapolates():
    v = latlon_da(np.arange(0.0, 50.0, 10.0), np.arange(0.0, 50.0, 10.0)).values.copy()
    v[2, 2] = np.nan
    src = latlon_da(np.arange(0.0, 50.0, 10.0), np.arange(0.0, 50.0, 10.0), values=v)
    grid = LatLonGrid(np.arange(5.0, 40.0, 10.0), np.arange(5.0, 40.0, 10.0))
    values, _ = onto_grid(src, grid, what="f")
    assert np.isnan(values[1:3, 1:3]).all() and np.isfinite(values[0]).all() and np.isfinite(values[3]).all()
    outside = LatLonGrid(np.arange(5.0, 60.0, 10.0), np.arange(5.0, 40.0, 10.0))
    with pytest.raises(GridMismatchError, match=r"sst\.nc:sst.*covers lat 0\.\.40.*grid spans lat 5\.\.55.*subset"):
        onto_grid(src, outside, what="sst.nc:sst")
    with pytest.raises(GridMismatchError, match="do not match the grid"):
        onto_grid(src, CartesianGrid((3, 3), (3.0, 3.0)), what="f")


def test_onto_grid_cartesian_periodic_wrap():
    x = 0.5 + np.arange(8.0)
    src = xr.DataArray(np.cos(2 * np.pi * x / 8.0), dims="x", coords={"x": x}, name="f")
    values, prov = onto_grid(src, CartesianGrid(16, 8.0), what="f")
    np.testing.assert_allclose(values[0], 0.5 * (np.cos(2 * np.pi * 7.5 / 8) + np.cos(2 * np.pi * 0.5 / 8)))
    assert prov["method"] == "bilinear"
    with pytest.raises(GridMismatchError, match="extrapolates"):
        onto_grid(src, CartesianGrid(16, 8.0, boundaries=Neumann()), what="f")


# ---------------------------------------------------------------- masks, samples, statistics
def test_domain_mask_all_and_any(tmp_path):
    da = open_source(FieldSource(write_latlon(tmp_path, nan_land=True), "t2m"))
    sea = domain_mask(da)
    assert sea.shape == (30, 60) and sea.dtype == bool
    land = np.zeros((30, 60), bool)
    land[3:6, 10:14] = True
    land[20, 30] = True
    np.testing.assert_array_equal(sea, ~land[::-1])  # latitudes ascending
    anyw = domain_mask(da, rule="any")
    assert anyw.sum() == sea.sum() + 1


def test_samples_by_labels_range_and_index(tmp_path):
    da = open_source(FieldSource(write_latlon(tmp_path), "t2m"))
    assert samples(da, "time", ["1990-01-01", "1993-01-01"]).sizes["time"] == 2
    assert samples(da, "time", {"start": "1991", "stop": "1992"}).sizes["time"] == 2
    np.testing.assert_array_equal(samples(da, "time", {"index": [1, 4]}).time.values, TIMES[1:].values)
    with pytest.raises(InputError, match=r"t2m\.nc.*'t2m'.*winter"):
        samples(da, "winter", None)
    with pytest.raises(InputError, match=r"t2m\.nc.*'t2m'.*matches nothing.*cover"):
        samples(da, "time", {"start": "2050", "stop": "2060"})


def test_climatology_mean_and_population_std(tmp_path):
    da = open_source(FieldSource(write_latlon(tmp_path, nan_land=True), "t2m"))
    mean, std = climatology(da, "time")
    la, lo = np.meshgrid(LAT[::-1], LON, indexing="ij")
    assert mean.shape == (30, 60)
    sea = np.isfinite(mean)
    np.testing.assert_allclose(mean[sea][:5], (linear(la, lo) + 15.0)[sea][:5])
    np.testing.assert_allclose(std[0, 0], np.std([0.0, 10, 20, 30]))
    assert np.isnan(mean[LAT[::-1] == 63.0][0, 10])


def gaussian_anomalies(shape, length, n, seed=0):
    """Samples with correlation exp(-r^2 / 2 L^2): white noise filtered by exp(-L^2 k^2 / 4) on a periodic box."""
    rng = np.random.default_rng(seed)
    k = [2 * np.pi * np.fft.fftfreq(m) for m in shape]
    k2 = k[0][:, None] ** 2 + k[1][None, :] ** 2
    noise = rng.standard_normal((n, *shape))
    return np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-(length**2) * k2 / 4)))


def test_correlation_length_recovers_gaussian_length_scale():
    grid = CartesianGrid((40, 60), (40.0 * 2.0, 60.0 * 2.0))  # spacing 2 length units
    a = gaussian_anomalies((40, 60), 4.0, 150)  # L = 4 cells = 8 units
    da = xr.DataArray(a, dims=("member", "y", "x"), name="anom",
                      coords={"y": 1.0 + 2.0 * np.arange(40), "x": 1.0 + 2.0 * np.arange(60)})  # fmt: skip
    assert abs(correlation_length(da, "member", grid) / 8.0 - 1) < 0.15
    ll = LatLonGrid(np.arange(-19.5, 20.0, 1.0), np.arange(0.5, 60.0, 1.0), boundaries=(Neumann(), Neumann()))
    lda = xr.concat([latlon_da(ll.lat, ll.lon, values=s) for s in a], dim="member")
    expected = 4.0 * np.deg2rad(1.0) * ll.radius
    assert abs(correlation_length(lda, "member", ll) / expected - 1) < 0.15
    white = da.copy(data=np.random.default_rng(1).standard_normal(a.shape))
    with pytest.raises(InputError, match="'anom'.*shorter than the grid resolves"):
        correlation_length(white, "member", grid)


# ---------------------------------------------------------------- errors name the file and the variable
def test_every_error_names_the_file_and_the_variable(tmp_path):
    path = write_latlon(tmp_path)
    bad = tmp_path / "junk.nc"
    bad.write_text("not a netCDF file")
    cases = [
        FieldSource(str(tmp_path / "absent.nc"), "t2m"),
        FieldSource(str(bad), "t2m"),
        FieldSource(path, "sst"),
        FieldSource(path, "t2m", sel={"time": "2050-01-01"}),
        FieldSource(path, "t2m", sel={"depth": 5}),
        FieldSource(path, "t2m", isel={"time": 9}),
        FieldSource(path, "t2m", subset={"lat": [91, 95]}),
        FieldSource(path, "t2m", subset={"lat": 5}),
        FieldSource(path, "t2m", coarsen={"lat": -1}),
        FieldSource(path, "t2m", units="m s-1"),
        FieldSource(path, "t2m", units="parsecs"),
    ]
    for src in cases:
        with pytest.raises(InputError) as info:
            open_source(src)
        message = str(info.value)
        assert src.path in message and repr(src.variable) in message and "\n" not in message, message
    with pytest.raises(InputError, match=r"sel time=.*cover time 1990-01-01"):
        open_source(FieldSource(path, "t2m", sel={"time": "2050-01-01"}))
    with pytest.raises(InputError, match=r"holds \['t2m'\]"):
        open_source(FieldSource(path, "sst"))
