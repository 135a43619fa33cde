"""Fields from data: a variable of a CF netCDF (or any file xarray opens), selected, subset, coarsened,
converted to the units a case needs, and put onto the model grid by bilinear interpolation.

Axes are recognised from CF attributes with cf-xarray (assim.io.cf_axes); every function here works in the
orientation `horizontal(da)` gives: horizontal dims (lat, lon) or (y, x) / (x,) last, latitudes ascending.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import xarray as xr
from jaxtyping import Bool, Float

from assim.errors import GridMismatchError, InputError
from assim.io.cf_axes import (
    ROLES,
    _extent,
    _horizontal_dims,
    _resolve,
    _where,
    horizontal,
    recognise_axes,
)
from assim.io.units import convert_units
from assim.progress import reading
from models.grid import CartesianGrid, LatLonGrid, Periodic

__all__ = ["ROLES", "FieldSource", "field_on_grid", "convert_units", "domain_mask", "grid_from_source", "horizontal",
           "onto_grid", "open_source", "recognise_axes", "samples"]  # fmt: skip


@dataclass(frozen=True)
class FieldSource:
    """A field in a file: variable, label/index selections, coordinate ranges, coarsening, units and scale.

    sel: {dim: label | [labels] | {"start": a, "stop": b}} (date strings allowed); isel: {dim: i | [i, j, k] |
    [start, stop] | {"start": i, "stop": j} | {"points": [i, j]}} (a two-element list is a range);
    subset: {role or coordinate: [a, b]}, both ends included, longitudes modulo 360 and relabelled to start at a;
    coarsen: a block-mean factor for the horizontal axes or {role or dim: factor}. Keys may be axis roles.
    """

    path: str
    variable: str
    sel: dict = field(default_factory=dict)
    isel: dict = field(default_factory=dict)
    subset: dict = field(default_factory=dict)
    coarsen: int | dict = 1
    units: str | None = None
    assume_units: str | None = None
    scale: float = 1.0


# ---------------------------------------------------------------- opening a source
def _label(v):
    return slice(v.get("start"), v.get("stop")) if isinstance(v, dict) else v


def _index(v):
    if isinstance(v, dict):
        return list(v["points"]) if "points" in v else slice(v.get("start"), v.get("stop"))
    return slice(int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) and len(v) == 2 else v


def _nothing(da, kind, key, value, dim, fix="pick values inside that range"):
    return InputError(f"{_where(da)}: {kind} {key}={value!r} matches nothing; the data cover {key} "
                      f"{_extent(da, dim)}; {fix}")  # fmt: skip


def _select(da, kind: str, key: str, value):
    """da.sel / da.isel along one key (a slice on a decreasing index is flipped), raising when nothing matches."""
    dim = _resolve(da, key, kind)
    v = _label(value) if kind == "sel" else _index(value)
    if kind == "sel" and isinstance(v, slice) and dim in da.indexes and da.indexes[dim].is_monotonic_decreasing:
        v = slice(v.stop, v.start) if (v.start is None or v.stop is None or v.start < v.stop) else v
    try:
        out = da.sel({dim: v}) if kind == "sel" else da.isel({dim: v})
    except (KeyError, IndexError, ValueError, TypeError):
        raise _nothing(da, kind, key, value, dim) from None
    if dim in out.dims and out.sizes[dim] == 0:
        raise _nothing(da, kind, key, value, dim)
    return out


def _subset(da, key: str, bounds):
    """Points whose coordinate lies in [a, b]; longitude ranges modulo 360, relabelled to start at a."""
    dim = _resolve(da, key, "subset")
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise InputError(f"{_where(da)}: subset {key}={bounds!r} must be a range [start, stop]")
    if da[dim].ndim != 1:
        raise InputError(f"{_where(da)}: subset {key} needs a 1-D coordinate but {dim!r} is {da[dim].ndim}-D; "
                         "use isel with index ranges instead")  # fmt: skip
    a, b = bounds
    coord = da[dim]
    if not np.issubdtype(coord.dtype, np.number):
        return _select(da, "sel", dim, {"start": a, "stop": b})
    v = np.asarray(coord.values, dtype=float)
    if recognise_axes(da).get("lon") == dim and float(b) - float(a) < 360.0:
        off = np.mod(v - float(a) + 1e-6, 360.0) - 1e-6
        idx = np.nonzero(off <= float(b) - float(a) + 1e-6)[0]
        idx = idx[np.argsort(off[idx], kind="stable")]
        out = da.isel({coord.dims[0]: idx}).assign_coords({dim: (coord.dims, float(a) + off[idx], coord.attrs)})
    else:
        lo, hi = sorted((float(a), float(b)))
        out = da.isel({coord.dims[0]: np.nonzero((v >= lo) & (v <= hi))[0]})
    if out.sizes[coord.dims[0]] == 0:
        raise _nothing(da, "subset", key, bounds, dim)
    return out


def _coarsen(da, factor):
    """Block means (boundary trimmed, NaN only where a whole block is NaN) over the horizontal dims or given ones."""
    if isinstance(factor, dict):
        factors = {_resolve(da, k, "coarsen"): f for k, f in factor.items()}
        factors = {(da[d].dims[0] if d not in da.dims else d): f for d, f in factors.items()}
    else:
        factors = {d: factor for d in _horizontal_dims(da, recognise_axes(da))}
    for d, f in factors.items():
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or not 1 <= f <= da.sizes[d]:
            raise InputError(f"{_where(da)}: coarsen factor {f!r} for {d!r} must be a positive integer no larger "
                             f"than the axis ({da.sizes[d]} points); give coarsen = 1..{da.sizes[d]}")  # fmt: skip
    factors = {d: int(f) for d, f in factors.items() if f != 1}
    if not factors:
        return da
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return da.coarsen(factors, boundary="trim").mean(keep_attrs=True)  # skips NaN (float data)


def open_source(src: FieldSource) -> xr.DataArray:
    """The source's field, in memory: variable picked, sel, isel, subset, coarsen applied, units converted."""
    path, where = str(src.path), f"{src.path}, variable {src.variable!r}"
    if not Path(path).exists():
        raise InputError(f"{where}: the file does not exist (relative paths are relative to {Path.cwd()}); "
                         "check the source's path")  # fmt: skip
    try:
        with warnings.catch_warnings():  # e.g. unpadded reference years in time units: decoded all the same
            warnings.simplefilter("ignore", xr.SerializationWarning)
            ds = xr.open_dataset(path, engine="zarr") if path.rstrip("/").endswith(".zarr") else xr.open_dataset(path)
    except (OSError, ValueError, ImportError, TypeError, RuntimeError) as exc:
        raise InputError(f"{where}: cannot read the file ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
                         "give a netCDF file (or another format xarray opens)") from None  # fmt: skip
    with ds, reading(path):  # the data load below (a spinner names the file while it does)
        if src.variable not in ds.data_vars:
            raise InputError(f"{where}: no such variable; the file holds {sorted(map(str, ds.data_vars))}; "
                             "set the source's variable to one of them")  # fmt: skip
        da = ds[src.variable]
        da.encoding["source"] = path
        for kind, items in (("sel", src.sel), ("isel", src.isel)):
            for key, value in items.items():
                da = _select(da, kind, key, value)
        for key, bounds in src.subset.items():
            da = _subset(da, key, bounds)
        da = _coarsen(da, src.coarsen).load()
    da.encoding["source"] = path
    units = da.attrs.get("units", src.assume_units)
    if src.units is not None:
        if units is None:
            raise InputError(f"{where}: the data have no units attribute but {src.units!r} are needed; "
                             "set assume_units to the units the file means")  # fmt: skip
        try:
            da = convert_units(da, units, src.units)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
    elif units is not None:
        da.attrs["units"] = units
    if src.scale != 1.0:
        da = da.copy(data=da.data * src.scale)
    return da


# ---------------------------------------------------------------- grids and interpolation
def _spacing(v: np.ndarray, name: str, da) -> float:
    """Spacing of regularly spaced increasing centres (GridMismatchError suggesting interpolation otherwise)."""
    d = np.diff(v)
    if v.size < 3 or not np.all(np.isfinite(v)) or not (d[0] > 0 and np.allclose(d, d[0], rtol=1e-5, atol=0)):
        raise GridMismatchError(f"{_where(da)}: coordinate {name!r} is not regularly spaced ({v.size} values, steps "
                                f"{d.min() if d.size else 0:g}..{d.max() if d.size else 0:g}); interpolate the data "
                                "onto a regular grid (da.interp) or give the grid explicitly")  # fmt: skip
    return float((v[-1] - v[0]) / (v.size - 1))


def grid_from_source(da: xr.DataArray, *, boundaries=None, poles=None, mask=None, radius=None):
    """The model grid whose cell centres are the field's: a LatLonGrid (lat, lon) or a CartesianGrid (y, x) / (x,)."""
    h = horizontal(da)
    options = {k: v for k, v in (("boundaries", boundaries), ("mask", mask)) if v is not None}
    lat_name = recognise_axes(h).get("lat")
    if lat_name is not None and h[lat_name].ndim != 1:
        raise GridMismatchError(f"{_where(da)}: latitude {lat_name!r} is 2-D (a curvilinear grid); interpolate the "
                                "data onto a regular lat-lon or x/y grid first (xesmf or da.interp)")  # fmt: skip
    missing = [d for d in h.dims[-2:] if d in ("lat", "lon", "y", "x") and d not in h.coords]
    if missing:
        raise InputError(f"{_where(da)}: no coordinate values for {missing}; give the file coordinate variables "
                         "for its horizontal dims")  # fmt: skip
    if "lat" in h.dims:
        lat, lon = (np.asarray(h[d].values, dtype=float) for d in ("lat", "lon"))
        _spacing(lat, "lat", da)
        _spacing(lon, "lon", da)
        extra = {k: v for k, v in (("poles", poles), ("radius", radius)) if v is not None}
        return LatLonGrid(lat, lon, **extra, **options)
    names = ("y", "x") if "y" in h.dims else ("x",)
    values = [np.asarray(h[d].values, dtype=float) for d in names]
    steps = [_spacing(v, d, da) for v, d in zip(values, names)]
    origin = [v[0] - s / 2 for v, s in zip(values, steps)]
    return CartesianGrid(tuple(v.size for v in values), tuple(v.size * s for v, s in zip(values, steps)),
                         origin=origin, **options)  # fmt: skip


def _grid_steps(grid) -> tuple[float, ...]:
    c = grid.coords()
    return tuple(float(c[d][1] - c[d][0]) for d in grid.dims)


def _period(d: str, s: np.ndarray, grid, axis: int) -> float | None:
    """360 for longitudes that cover the circle; a periodic Cartesian axis's length when the source spans it."""
    if s.size < 2:
        return None
    span = (s[-1] - s[0]) * s.size / (s.size - 1)
    if d == "lon":
        return 360.0 if abs(span - 360.0) < 1e-3 * (s[1] - s[0]) else None
    length = getattr(grid, "lengths", (None,) * grid.ndim)[axis]
    periodic = isinstance(grid.boundaries[axis], Periodic)
    return length if periodic and abs(span - length) < 1e-3 * (s[1] - s[0]) else None


def onto_grid(da: xr.DataArray, grid, *, what: str) -> tuple[Float[np.ndarray, "*lead_and_grid"], dict[str, Any]]:
    """The field at the grid's cell centres (leading dims kept) and how it got there: exact match or bilinear."""
    h = horizontal(da)
    dims, target = grid.dims, grid.coords()
    if tuple(h.dims[-len(dims) :]) != dims or any(d not in h.coords for d in dims):
        raise GridMismatchError(f"{what}: the source's horizontal dims {tuple(h.dims)} do not match the grid's {dims}; "
                                "give a source on the same kind of grid (lat/lon or x/y)")  # fmt: skip
    h = h.astype(float) if not np.issubdtype(h.dtype, np.floating) else h
    mapped, exact, periods = {}, {}, {}
    for axis, (d, step) in enumerate(zip(dims, _grid_steps(grid))):
        s, t, tol = np.asarray(h[d].values, dtype=float), np.asarray(target[d], dtype=float), 1e-6 * abs(step)
        p = periods[d] = _period(d, s, grid, axis)
        if d == "lon" or p is not None:
            t = s[0] + np.mod(t - s[0] + tol, p or 360.0) - tol
        if p is None and (t.min() < s[0] - tol or t.max() > s[-1] + tol):
            ext = ", ".join(f"{e} {h[e].values.min():g}..{h[e].values.max():g}" for e in dims)
            grid_ext = ", ".join(f"{e} {target[e].min():g}..{target[e].max():g}" for e in dims)
            raise GridMismatchError(f"{what}: the source covers {ext} but the grid spans {grid_ext}; interpolation "
                                    "never extrapolates: subset the grid to the source's extent or give a source "
                                    "that covers it")  # fmt: skip
        idx = np.clip(np.searchsorted(s, t), 1, s.size - 1)
        idx = np.where(np.abs(s[idx - 1] - t) <= np.abs(s[idx] - t), idx - 1, idx)
        mapped[d], exact[d] = t, idx if np.all(np.abs(s[idx] - t) <= tol) else None
    shapes = {"source_shape": tuple(h.shape[-len(dims) :]), "target_shape": tuple(grid.shape)}
    if all(v is not None for v in exact.values()):
        out = h.isel({d: exact[d] for d in dims})
        same = all(np.array_equal(exact[d], np.arange(h.sizes[d])) for d in dims)
        return np.asarray(out.values), {"method": "none"} if same else {"method": "none", **shapes}
    for d in dims:
        if periods[d] is not None:  # one wrapped column on each side
            p, n = periods[d], h.sizes[d]
            c = np.asarray(h[d].values, dtype=float)
            h = xr.concat([h.isel({d: [n - 1]}).assign_coords({d: [c[-1] - p]}), h,
                           h.isel({d: [0]}).assign_coords({d: [c[0] + p]})], dim=d)  # fmt: skip
        h = h.interp({d: mapped[d]}, method="linear", assume_sorted=True)  # one axis at a time: NaN stays local
    provenance = {"method": "bilinear", **shapes, "periodic_lon": periods.get("lon") is not None}
    return np.asarray(h.transpose(..., *dims).values), provenance


# ---------------------------------------------------------------- masks, samples and statistics
def domain_mask(
    da: xr.DataArray, dims_to_reduce=None, rule: Literal["all", "any"] = "all"
) -> Bool[np.ndarray, "*grid"]:
    """Sea (True) where the field is finite in every sample ("all") or in at least one ("any") of the other dims."""
    h = horizontal(da)
    hd = [d for d in ("lat", "lon", "y", "x") if d in h.dims]
    reduce = [d for d in h.dims if d not in hd] if dims_to_reduce is None else list(dims_to_reduce)
    left = [d for d in h.dims if d not in hd and d not in reduce]
    if rule not in ("all", "any") or left:
        raise InputError(f"{_where(da)}: domain_mask needs rule 'all' or 'any' (got {rule!r}) and must reduce every "
                         f"non-horizontal dim (left {left}); add them to dims_to_reduce")  # fmt: skip
    finite = cast(xr.DataArray, np.isfinite(h))  # a DataArray ufunc
    finite = (finite.all if rule == "all" else finite.any)(reduce) if reduce else finite
    return np.asarray(finite.transpose(*hd).values, dtype=bool)


def samples(da: xr.DataArray, dim: str, select) -> xr.DataArray:
    """Samples along a dataset dim: labels, a {"start", "stop"} label range or {"index": [i0, i1]} (None: all)."""
    name = _resolve(da, dim, "samples")
    if name not in da.dims:
        raise InputError(f"{_where(da)}: no sample dimension {dim!r}; the data have dims {list(da.dims)}")
    if select is None:
        return da
    if isinstance(select, dict) and "index" in select:
        return _select(da, "isel", name, {"start": select["index"][0], "stop": select["index"][1]})
    if isinstance(select, dict) and "labels" in select:  # every label must be there
        return _select(da, "sel", name, list(select["labels"]))
    return _select(da, "sel", name, select if isinstance(select, (dict, list, tuple)) else [select])


def averaged(da: xr.DataArray, source, what: str) -> xr.DataArray:
    """The source's field averaged over its `mean` dimensions (each must be a dimension of the variable)."""
    if missing := sorted(set(source.mean) - set(da.dims)):
        raise InputError(f"{what}: mean names {missing}, not dimensions of {source.variable!r} {tuple(da.dims)} in "
                         f"{source.file}; list only its dimensions in {what}.mean")  # fmt: skip
    return da.mean(source.mean, skipna=True, keep_attrs=True) if source.mean else da


def field_on_grid(source, grid, units: str | None, what: str) -> tuple[np.ndarray, dict]:
    """A model field from its source table: opened, averaged over `mean`, interpolated onto the grid."""
    da = averaged(open_source(source.build(units=units)), source, what)
    values, provenance = onto_grid(horizontal(da), grid, what=f"{what} ({source.file}, variable {source.variable!r})")
    if values.shape != tuple(grid.shape):
        raise InputError(f"{source.file}: {what} ({source.variable}) has shape {values.shape} on the grid, not "
                         f"{tuple(grid.shape)}; select or average its other dimensions (sel, isel, mean)")  # fmt: skip
    return values, provenance
