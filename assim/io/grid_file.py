"""Model grids from a netCDF file's coordinates: x (and y) cell centres, or CF latitude/longitude.

A Cartesian grid is read from 1-D coordinate variables `x` (1-D) or `y`, `x` (2-D), regularly
spaced and increasing; the cell centres give the spacing h, the origin x₀ − h/2 and the length n·h.
A latitude-longitude grid is read from `lat`/`latitude` and `lon`/`longitude` with CF units
(degrees_north, degrees_east). Irregular, decreasing or unit-less coordinates raise the
project's error naming the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from assim.errors import GridMismatchError, InputError
from assim.progress import reading
from models.grid import AbstractBoundary, CartesianGrid, LatLonGrid, Periodic

LAT_NAMES, LON_NAMES = ("lat", "latitude"), ("lon", "longitude")
LAT_UNITS = ("degrees_north", "degree_north", "degree_N", "degrees_N", "degreeN", "degreesN")
LON_UNITS = ("degrees_east", "degree_east", "degree_E", "degrees_E", "degreeE", "degreesE")


def open_coordinates(path: str | Path) -> dict[str, xr.DataArray]:
    """The 1-D coordinate-like variables of a netCDF file by name (InputError if it cannot be read)."""
    try:
        with reading(path), xr.open_dataset(path, engine="netcdf4", decode_times=False) as ds:
            return {str(k): ds[k].load() for k in ds.variables if ds[k].ndim == 1}
    except FileNotFoundError:
        raise InputError(f"grid file {str(path)!r} does not exist; check grid.file "
                         "(relative to the case file)") from None  # fmt: skip
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read grid file {str(path)!r} as netCDF: {exc}") from None


def _regular(values: np.ndarray, name: str, path) -> float:
    """The spacing of regularly spaced increasing coordinates (InputError naming the fix otherwise)."""
    if values.size < 3 or not np.all(np.isfinite(values)):
        raise InputError(f"{path}: coordinate {name!r} needs at least 3 finite values (got {values.size})")
    d = np.diff(values)
    if np.all(d < 0):
        raise InputError(f"{path}: coordinate {name!r} decreases; reverse it (ds.sortby({name!r})) before using it")
    if not (d[0] > 0 and np.allclose(d, d[0], rtol=1e-6, atol=0)):
        raise InputError(f"{path}: coordinate {name!r} is not regularly spaced (steps {d.min():g}..{d.max():g}); "
                         "interpolate the data onto a regular grid (ds.interp) first")  # fmt: skip
    return float((values[-1] - values[0]) / (values.size - 1))


def cartesian_grid_from_file(path: str | Path, ndim: int, boundary: AbstractBoundary = Periodic()) -> CartesianGrid:
    """The Cartesian grid whose cell centres are the file's x (ndim 1) or y, x (ndim 2) coordinates."""
    coords = open_coordinates(path)
    dims = ("x",) if ndim == 1 else ("y", "x")
    if any(n in coords for n in LAT_NAMES + LON_NAMES) and not all(d in coords for d in dims):
        raise GridMismatchError(f"{path}: the file has latitude/longitude coordinates but the model runs on a "
                                f"Cartesian grid; give a file with {' and '.join(dims)} coordinates")  # fmt: skip
    missing = [d for d in dims if d not in coords]
    if missing:
        raise InputError(f"{path}: no coordinate variable {' or '.join(missing)}; a {ndim}-D Cartesian grid needs "
                         f"{', '.join(dims)} (set grid.ndim to match the file)")  # fmt: skip
    values = [np.asarray(coords[d].values, dtype=float) for d in dims]
    spacing = [_regular(v, d, path) for v, d in zip(values, dims)]
    origin = [v[0] - h / 2 for v, h in zip(values, spacing)]
    return CartesianGrid(tuple(v.size for v in values), tuple(v.size * h for v, h in zip(values, spacing)),
                         boundary, origin=origin)  # fmt: skip


def latlon_grid_from_file(path: str | Path, **grid_options) -> LatLonGrid:
    """The latitude-longitude grid of the file's CF latitude/longitude coordinates (degrees_north/east)."""
    coords = open_coordinates(path)
    found = []
    for names, units, what in ((LAT_NAMES, LAT_UNITS, "degrees_north"), (LON_NAMES, LON_UNITS, "degrees_east")):
        name = next((n for n in names if n in coords), None)
        if name is None:
            raise InputError(f"{path}: no coordinate variable {' or '.join(names)}; a latitude-longitude grid needs "
                             "lat and lon coordinates")  # fmt: skip
        unit = coords[name].attrs.get("units")
        if unit not in units:
            raise InputError(f"{path}: coordinate {name!r} has units {unit!r}; CF needs units = {what!r} "
                             f"(set ds[{name!r}].attrs['units'] = {what!r})")  # fmt: skip
        values = np.asarray(coords[name].values, dtype=float)
        _regular(values, name, path)
        found.append(values)
    return LatLonGrid(found[0], found[1], **grid_options)


__all__ = ["cartesian_grid_from_file", "latlon_grid_from_file", "open_coordinates"]
