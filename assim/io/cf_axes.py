"""Horizontal axes of gridded data: CF recognition (cf-xarray, then common names) and the canonical orientation.

Roles lat, lon, y, x, time are found from CF attributes (standard_name, units degrees_north/east, axis)
through cf-xarray, falling back to common names. `horizontal` puts a field in the orientation every other
function works in: horizontal dims renamed to the model's (lat, lon) or (y, x) / (x,), placed last,
latitudes ascending, longitudes increasing and contiguous.
"""

from __future__ import annotations

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import numpy as np
import xarray as xr

from assim.errors import InputError

ROLES = ("lat", "lon", "y", "x", "time")
_NAMES = {"lat": ("lat", "latitude", "nav_lat", "lats"), "lon": ("lon", "longitude", "nav_lon", "lons"),
          "y": ("y",), "x": ("x",), "time": ("time", "t")}  # fmt: skip
_CF = {"lat": ("coordinates", "latitude"), "lon": ("coordinates", "longitude"), "time": ("coordinates", "time"),
       "y": ("axes", "Y"), "x": ("axes", "X")}  # fmt: skip


def _where(da) -> str:
    """'file, variable v' for messages, from what open_source recorded."""
    return f"{da.encoding.get('source', '<in-memory data>')}, variable {str(da.name)!r}"


def _extent(da, dim) -> str:
    if dim not in da.coords:
        return f"indices 0..{da.sizes[dim] - 1}"
    v = da[dim].values
    if not v.size:
        return "nothing"
    lo, hi = v.min(), v.max()
    if np.issubdtype(v.dtype, np.datetime64):
        lo, hi = np.datetime_as_string(lo, unit="s"), np.datetime_as_string(hi, unit="s")
    return f"{lo}..{hi} ({v.size} values)"


def recognise_axes(obj: xr.DataArray | xr.Dataset) -> dict[str, str]:
    """Coordinate (or dim) name of each axis role present: lat, lon, y, x, time (CF attributes first, then names)."""
    roles: dict[str, str] = {}
    for role, (kind, key) in _CF.items():
        names = [n for n in getattr(obj.cf, kind).get(key, []) if n not in roles.values()]
        names.sort(key=lambda n: n not in obj.dims)  # dimension coordinates first
        if role in ("x", "y"):
            names = [n for n in names if obj[n].ndim == 1]
        if role == "time" and not names:
            names = list(obj.cf.axes.get("T", []))
        if names:
            roles[role] = names[0]
    known = {str(n).lower(): str(n) for n in [*obj.dims, *obj.coords]}
    for role in ROLES:
        if role not in roles:
            name = next((known[n] for n in _NAMES[role] if n in known and known[n] not in roles.values()), None)
            if name is None and role == "time":
                name = next((str(n) for n in obj.coords if np.issubdtype(obj[n].dtype, np.datetime64)), None)
            if name is not None:
                roles[role] = name
    if not ({"lat", "lon"} <= roles.keys() or "x" in roles):
        where = _where(obj) if isinstance(obj, xr.DataArray) else obj.encoding.get("source", "the data")
        raise InputError(f"{where}: no horizontal axes recognised among {list(obj.dims)}; give the coordinates CF "
                         "attributes (standard_name latitude/longitude, units degrees_north/east, or axis Y/X)")  # fmt: skip
    return roles


def _horizontal_dims(da, roles) -> tuple[str, ...]:
    """The data's horizontal dims, in (y, x) order."""
    if "lat" in roles and "lon" in roles and da[roles["lat"]].ndim == 1 and da[roles["lon"]].ndim == 1:
        return (da[roles["lat"]].dims[0], da[roles["lon"]].dims[0])
    if "lat" in roles and da[roles["lat"]].ndim == 2:
        return tuple(da[roles["lat"]].dims)
    ys = (roles["y"],) if "y" in roles else ()
    return tuple((da[n].dims[0] if n in da.coords else n) for n in (*ys, roles["x"]))


def _resolve(da, key: str, what: str) -> str:
    """The dim or coordinate that a role or a name means (InputError listing them otherwise)."""
    if key in da.dims or key in da.coords:
        return key
    roles = recognise_axes(da)
    if key in roles:
        return roles[key]
    raise InputError(f"{_where(da)}: {what} key {key!r} is neither a dimension, a coordinate nor an axis role; "
                     f"use one of {sorted({*map(str, da.dims), *roles})}")  # fmt: skip


def _contiguous_lon(lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order and values that make longitudes increasing and contiguous (one duplicated cyclic column dropped)."""
    order = np.argsort(lon, kind="stable")
    s = lon[order]
    if s.size > 2 and abs(s[-1] - s[0] - 360.0) <= 1e-6 * (s[1] - s[0]):
        order, s = order[:-1], s[:-1]
    m_order = np.argsort(np.mod(s, 360.0), kind="stable")
    m = np.mod(s, 360.0)[m_order]
    gaps = np.diff(np.append(m, m[0] + 360.0))
    k = int(np.argmax(gaps))
    if s.size < 2 or gaps[k] <= s[0] + 360.0 - s[-1] + 1e-6 * np.median(gaps):
        return order, s
    v = np.unwrap(np.roll(m, -(k + 1)), period=360.0)
    return order[np.roll(m_order, -(k + 1))], v - 360.0 if v[0] >= 180.0 else v


def horizontal(da: xr.DataArray) -> xr.DataArray:
    """The field with horizontal dims renamed to the model's, placed last, latitudes ascending, longitudes contiguous."""
    roles = recognise_axes(da)
    hdims = _horizontal_dims(da, roles)
    latlon = "lat" in roles and "lon" in roles and da[roles["lat"]].ndim == 1 and da[roles["lon"]].ndim == 1
    names = ("lat", "lon") if latlon else ("y", "x")[2 - len(hdims) :]
    coord_names = (roles["lat"], roles["lon"]) if latlon else tuple(roles.get(r, d) for r, d in zip(names, hdims))
    drop = [n for n in names if n in da.coords and n not in coord_names and n not in hdims]
    out = da.drop_vars(drop)
    for dim, coord, name in zip(hdims, coord_names, names):
        if coord != dim and coord in out.coords and out[coord].dims == (dim,):
            out = out.swap_dims({dim: coord})
            dim = coord
        if dim != name:
            out = out.rename({dim: name})
    out = out.transpose(..., *names)
    for name in names:
        if name not in out.coords:
            continue
        v = np.asarray(out[name].values, dtype=float)
        if name == "lon":
            order, v = _contiguous_lon(v)
            out = out.isel(lon=order).assign_coords(lon=("lon", v, out["lon"].attrs))
        elif np.any(np.diff(v) < 0):
            out = out.isel({name: np.argsort(v, kind="stable")})
    out.encoding = dict(da.encoding)
    return out
