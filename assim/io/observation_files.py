"""Observations in and out of CF-convention netCDF: gridded fields (NaN = missing) and station/track tables.

Two layouts are read into the existing observation operators on a model grid:

* gridded: a variable on (time, *grid dims) whose coordinates equal the grid's cell centres
  (lat/lon in degrees, or y/x); NaN marks a missing value. Errors: a variable `error`
  broadcastable to the values, or a scalar attribute `error` of the value variable.
  → `GriddedObservation` of every cell, missing values masked.
* table (CF `featureType` "point" for stations, "trajectory" for along-track passes; a
  (trajectory, obs) table is flattened; any other featureType is refused): variables on one `obs` dimension — `time`, the position
  (`latitude`, `longitude` on a LatLonGrid; `y`, `x` or `x` on a CartesianGrid), `value`,
  `error`. Rows are grouped by model step into a `SwathObservation` (stations and tracks
  alike), shorter groups padded with masked slots.

The observed component of a multi-field state (e.g. "eta", "u", "v") is the value variable's or
the file's `component` attribute, or a uniform `component` column; it must be one of the model's.
Times map to model steps (nearest step, `steps_from_times`): datetimes relative to the
window `start`, plain numbers as model time since the window start. Missing or unusable
values are counted in the `ObservationReport` and never reach the cost. A file on another
grid, or with times outside the window, raises the project's error naming the fix. A case with
several files (observations.file = [...]) gets one set per file; `flat_locations` and
`observation_rows` give one row per observation of all of them (position; set, step, component).
`write_observation_table` writes the table layout (atomically) for `read_observations`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from jaxtyping import Float

from assim.errors import GridMismatchError, InputError, ObservationError
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import (
    GriddedObservation,
    SwathObservation,
    steps_from_times,
)
from assim.progress import reading

FEATURE_TYPES = ("point", "trajectory")  # CF featureType of a table; along-track satellite passes: trajectory
from models.grid import AbstractGrid, LatLonGrid

ALIASES = {"lat": ("lat", "latitude"), "lon": ("lon", "longitude"), "y": ("y",), "x": ("x",)}
TABLE_NAMES = {"lat": "latitude", "lon": "longitude", "y": "y", "x": "x"}
AXIS_ATTRS = {
    "lat": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"},
    "lon": {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
}


@dataclass(frozen=True)
class FileObservations:
    """Observations read from a file: the set for the cost, where they are, and their times and steps."""

    observations: ObservationSet
    locations: np.ndarray  # gridded: (obs, ndim); table: (time, obs, ndim) with NaN in padding slots
    times: np.ndarray  # model time since the window start of each observation time
    n_padding: int  # table slots added to even out the groups (counted as masked in the report)


def _open(path: str | Path) -> xr.Dataset:
    try:
        return xr.open_dataset(path, engine="netcdf4")
    except FileNotFoundError:
        raise ObservationError(f"observation file {str(path)!r} does not exist; check the path") from None
    except (OSError, ValueError) as exc:
        raise ObservationError(f"cannot read observation file {str(path)!r} as netCDF: {exc}") from None


def _model_times(time: xr.DataArray, start, path) -> np.ndarray:
    """Model time (seconds for datetimes, else the file's numbers) since the window start."""
    values = np.asarray(time.values)
    if np.issubdtype(values.dtype, np.datetime64):
        if start is None:
            raise ObservationError(
                f"{path}: observation times are dates; give the window start (start=<datetime64>) to map them to steps."
            )
        return (values - np.datetime64(start, "ns")) / np.timedelta64(1, "s")
    if np.issubdtype(values.dtype, np.timedelta64):
        return values / np.timedelta64(1, "s")
    return values.astype(float)


def _find(ds: xr.Dataset, dim: str, path) -> xr.DataArray:
    for name in ALIASES[dim]:
        if name in ds.variables:
            return ds[name]
    raise ObservationError(f"{path}: no {' or '.join(ALIASES[dim])} variable; the grid needs {dim!r} coordinates.")


def _component(ds: xr.Dataset, var: xr.DataArray, path, component, components):
    """The observed component: the value variable's (or the file's) `component` attribute, or a uniform column."""
    named = var.attrs.get("component", ds.attrs.get("component"))
    if "component" in ds.variables:
        column = np.unique(np.asarray(ds["component"].values).astype(str))
        if column.size != 1:
            raise ObservationError(f"{path}: variable `component` names several components {list(column)}; "
                                   "write one file per component")  # fmt: skip
        named = str(column[0])
    if named is None:
        return component
    named = str(named)
    if components is None or named not in components:
        have = "one field (no components)" if components is None else f"components {list(components)}"
        raise ObservationError(f"{path}: variable {var.name!r} observes component {named!r} but the model's state has "
                               f"{have}; fix the `component` attribute or column")  # fmt: skip
    return named


def _read_gridded(ds, grid, dt, n_steps, start, path, component) -> FileObservations:
    candidates = [v for v in ds.data_vars if ds[v].ndim == grid.ndim + 1 and "time" in ds[v].dims and v != "error"]
    if len(candidates) != 1:
        raise ObservationError(
            f"{path}: expected one observed variable on (time, {', '.join(grid.dims)}), found {candidates}; "
            "keep one value variable (and an optional `error`) per file."
        )
    var = ds[candidates[0]]
    for dim in grid.dims:
        axis_name = next((n for n in ALIASES[dim] if n in var.dims), None)
        if axis_name is None:
            raise GridMismatchError(
                f"{path}: {var.name} has dims {var.dims} but the model grid has dims {grid.dims}; "
                "write the file on the model grid's dims."
            )
    order = ["time"] + [next(n for n in ALIASES[d] if n in var.dims) for d in grid.dims]
    var = var.transpose(*order)
    component = _component(ds, var, path, *component)
    for dim, name in zip(grid.dims, order[1:]):
        have = np.asarray(ds[name].values, dtype=float)
        want = np.asarray(grid.coords()[dim], dtype=float)
        if have.shape != want.shape or not np.allclose(have, want, rtol=0, atol=1e-6 * max(1.0, np.abs(want).max())):
            raise GridMismatchError(
                f"{path}: the file's {name} ({have.size} points, {have.min():g}..{have.max():g}) differs from the "
                f"model grid's {dim} ({want.size} points, {want.min():g}..{want.max():g}); regrid the "
                "observations onto the model grid (e.g. ds.interp) or run the model on the file's grid."
            )
    times = _model_times(ds["time"], start, path)
    steps = steps_from_times(times, dt, n_steps)
    values = np.asarray(var.values, dtype=float).reshape(len(times), -1)
    if "error" in ds.variables:
        err = ds["error"]
        if err.ndim == 0:
            errors = float(err)
        elif set(err.dims) <= set(order):
            errors = np.asarray(err.broadcast_like(var).transpose(*order).values, dtype=float).reshape(values.shape)
        else:
            raise ObservationError(f"{path}: `error` must be a scalar or lie on the value's dims {tuple(order)}.")
    elif "error" in var.attrs:
        errors = float(var.attrs["error"])
    else:
        raise ObservationError(
            f"{path}: give observation errors (a variable `error` or an attribute {var.name}:error)."
        )
    operator = GriddedObservation(grid, np.arange(grid.size), component)
    centres = np.stack([a.reshape(-1) for a in np.meshgrid(*grid.coords().values(), indexing="ij")], axis=-1)
    obs = ObservationSet(operator, steps, values, errors)
    return FileObservations(obs, centres, times, 0)


def _read_table(ds, grid, dt, n_steps, start, path, component) -> FileObservations:
    needed = ["time", *(TABLE_NAMES[d] for d in grid.dims), "value", "error"]
    missing = [n for n in needed if n not in ds.variables]
    if missing:
        raise ObservationError(f"{path}: an observation table needs variables {needed}; missing {missing}.")
    if any(ds[n].dims != ("obs",) for n in needed):
        raise ObservationError(f"{path}: every table variable {needed} must lie on the one dimension `obs`.")
    component = _component(ds, ds["value"], path, *component)
    times = _model_times(ds["time"], start, path)
    steps = np.asarray(steps_from_times(times, dt, n_steps))
    points = np.stack([np.asarray(ds[TABLE_NAMES[d]].values, dtype=float) for d in grid.dims], axis=-1)
    if isinstance(grid, LatLonGrid):
        lon = points[:, 1]
        points[:, 1] = grid.lon[0] + np.mod(lon - grid.lon[0], 360.0)  # the grid's longitude range
    values = np.asarray(ds["value"].values, dtype=float)
    errors = np.asarray(ds["error"].values, dtype=float)
    unique = np.unique(steps)
    n_max = max(int(np.sum(steps == s)) for s in unique)
    shape = (unique.size, n_max)
    P = np.full(shape + (grid.ndim,), np.nan)
    Y, E = np.full(shape, np.nan), np.ones(shape)
    keep = np.zeros(shape, bool)
    for i, s in enumerate(unique):
        rows = np.flatnonzero(steps == s)
        P[i, : rows.size], Y[i, : rows.size], E[i, : rows.size] = points[rows], values[rows], errors[rows]
        keep[i, : rows.size] = True
    centre = np.array([v[0] for v in grid.coords().values()], dtype=float)
    positions = np.where(keep[..., None], P, centre)  # padding slots sit on a cell centre, masked
    operator = SwathObservation(grid, positions, component)
    obs = ObservationSet(operator, tuple(int(s) for s in unique), np.where(keep, Y, 0.0), E, mask=keep)
    return FileObservations(obs, P, unique * dt, int(np.sum(~keep)))


def read_observations(
    path: str | Path,
    grid: AbstractGrid,
    dt: float,
    n_steps: int,
    *,
    start: np.datetime64 | None = None,
    component=None,
    components: tuple[str, ...] | None = None,
) -> FileObservations:
    """Observations of a CF netCDF file (gridded field or station/track table) on `grid`, times mapped to steps."""
    with reading(path), _open(path) as ds:
        ds = ds.load()
    return observations_from_dataset(ds, grid, dt, n_steps, start=start, component=component, components=components,
                                     source=str(path))  # fmt: skip


def observations_from_dataset(
    ds: xr.Dataset,
    grid: AbstractGrid,
    dt: float,
    n_steps: int,
    *,
    start: np.datetime64 | None = None,
    component=None,
    components: tuple[str, ...] | None = None,
    source: str = "observations",
) -> FileObservations:
    """Observations of an in-memory CF dataset (gridded field or point/trajectory table) on `grid`; masked cells masked.

    `component`: the field observed when the file names none; `components`: the model state's component names."""
    feature = ds.attrs.get("featureType")
    if feature is not None and str(feature).lower() not in FEATURE_TYPES:
        raise InputError(f"{source}: featureType {feature!r} is not an observation table this reader knows; "
                         f"write the table as featureType 'point' (stations) or 'trajectory' (tracks)")  # fmt: skip
    if "obs" in ds.dims and str(feature).lower() == "trajectory" and "trajectory" in ds.dims:
        ds = _flatten_trajectories(ds)
    if "obs" in ds.dims:
        read = _read_table(ds, grid, dt, n_steps, start, source, (component, components))
    elif "time" in ds.dims:
        read = _read_gridded(ds, grid, dt, n_steps, start, source, (component, components))
    else:
        raise ObservationError(f"{source}: neither an `obs` table nor a gridded field with a `time` dimension.")
    return _on_domain(read, grid)


def _flatten_trajectories(ds: xr.Dataset) -> xr.Dataset:
    """An orthogonal/incomplete (trajectory, obs) table as one `obs` table; rows without a time are dropped."""
    flat = {}
    for name, var in ds.variables.items():
        if "obs" in var.dims:
            var = var.set_dims(dict(ds["time"].sizes)) if var.dims != ds["time"].dims else var  # e.g. (obs,) per track
            flat[name] = xr.Variable(
                ("obs",), np.asarray(var.transpose(*ds["time"].dims).values).reshape(-1), var.attrs
            )
    out = xr.Dataset(flat, attrs=ds.attrs)
    t = np.asarray(out["time"].values)
    return out.isel(obs=np.flatnonzero(~np.isnat(t) if np.issubdtype(t.dtype, np.datetime64) else np.isfinite(t)))


def _on_domain(read: FileObservations, grid: AbstractGrid) -> FileObservations:
    """Mask (and count) every observation whose interpolation stencil touches a masked (land) cell."""
    mask = getattr(grid, "mask", None)
    if mask is None:
        return read
    op = read.observations.operator
    indices, weights = np.asarray(op.indices), np.asarray(op.weights)
    touches = np.any(~mask.reshape(-1)[indices] & (weights != 0), axis=-1)  # (obs,) or (time, obs) for tracks
    keep = ~np.broadcast_to(touches, read.observations.values.shape)
    return dataclasses.replace(read, observations=read.observations.with_mask(keep))


def observation_table(
    grid: AbstractGrid,
    times: Float[np.ndarray, " obs"],
    points: Float[np.ndarray, "obs ndim"],
    values: Float[np.ndarray, " obs"],
    errors: Float[np.ndarray, " obs"],
    *,
    time_units: str = "seconds since 2000-01-01 00:00:00",
    start: np.datetime64 | None = None,
    value_units: str = "1",
    kind: np.ndarray | None = None,
    attrs: dict | None = None,
    feature_type: str = "point",
    component: str | None = None,
) -> xr.Dataset:
    """A CF point (or trajectory) table of observations: time, position, value, error; `start` gives dates."""
    points = np.asarray(points, dtype=float)
    n = points.shape[0]
    times = np.asarray(times, dtype=float)
    if start is not None:
        t = np.datetime64(start, "ns") + (times * 1e9).astype("timedelta64[ns]")  # pyright: ignore[reportCallIssue, reportArgumentType]  (NumPy's stubs refuse a datetime64 value here)
        time = xr.Variable(("obs",), t, {"standard_name": "time", "long_name": "observation time"},
                           encoding={"units": time_units, "dtype": "float64"})  # fmt: skip
    else:
        time = xr.Variable(("obs",), times, {"standard_name": "time", "long_name": "model time since window start",
                                              "units": "s"})  # fmt: skip
    data = {"time": time}
    for a, dim in enumerate(grid.dims):
        data[TABLE_NAMES[dim]] = xr.Variable(("obs",), points[:, a], AXIS_ATTRS.get(dim, {"units": "1"}))
    value_attrs = {"units": value_units, "long_name": "observed value"}
    data["value"] = xr.Variable(
        ("obs",),
        np.asarray(values, float),
        value_attrs if component is None else {**value_attrs, "component": component},
    )
    data["error"] = xr.Variable(("obs",), np.asarray(errors, float),
                                {"units": value_units, "long_name": "observation error standard deviation"})  # fmt: skip
    if kind is not None:
        data["platform"] = xr.Variable(("obs",), np.asarray(kind, dtype=np.int8),
                                       {"long_name": "platform kind", "flag_values": np.array([0, 1], np.int8),
                                        "flag_meanings": "station track"})  # fmt: skip
    if any(np.shape(v) != (n,) for v in (times, values, errors)):
        raise ObservationError("times, values and errors need one entry per observation position.")
    return xr.Dataset({k: v for k, v in data.items()},
                      attrs={"Conventions": "CF-1.10", "featureType": feature_type, **(attrs or {})})  # fmt: skip


def observation_field(
    grid: AbstractGrid,
    times: Float[np.ndarray, " time"],
    values: Float[np.ndarray, "time ..."],
    errors: Float[np.ndarray, "..."] | float,
    *,
    value_units: str = "1",
    attrs: dict | None = None,
) -> xr.Dataset:
    """A CF gridded observation field on (time, *grid dims) with NaN where nothing is observed, and its errors."""
    values = np.asarray(values, dtype=float)
    times = np.asarray(times, dtype=float)
    if values.shape != (times.size, *grid.shape):
        raise ObservationError(f"values must have shape (time, *grid) = ({times.size}, {grid.shape}); "
                               f"got {values.shape}.")  # fmt: skip
    coords = {"time": xr.Variable(("time",), times, {"standard_name": "time", "units": "s",
                                                     "long_name": "model time since window start"})}  # fmt: skip
    for dim, centres in grid.coords().items():
        coords[dim] = xr.Variable((dim,), np.asarray(centres, dtype=float),
                                  AXIS_ATTRS.get(dim, {"units": "1", "long_name": f"{dim} (cell centre)"}))  # fmt: skip
    dims = ("time", *grid.dims)
    error_attrs = {"units": value_units, "long_name": "observation error standard deviation"}
    errors = np.asarray(errors, dtype=float)
    error = xr.Variable(dims[-errors.ndim :] if errors.ndim else (), errors, error_attrs)
    data = {"observation": xr.Variable(dims, values, {"units": value_units, "long_name": "observed value",
                                                      "missing_value_meaning": "NaN: not observed"}),
            "error": error}  # fmt: skip
    return xr.Dataset(data, coords=coords, attrs={"Conventions": "CF-1.10", **(attrs or {})})


def flat_locations(sets, locations) -> Float[np.ndarray, "row ndim"]:
    """One row per observation of every set (set by set, time-major), its position; NaN in table padding."""
    rows = []
    for obs, loc in zip(sets, locations):
        loc = np.asarray(loc, dtype=float)
        n_t, n_o = np.shape(obs.values)
        rows.append(np.broadcast_to(loc, (n_t, n_o, loc.shape[-1])).reshape(n_t * n_o, -1))
    return np.concatenate(rows)


def observation_rows(sets) -> dict[str, np.ndarray]:
    """Per-observation `set` index, model `step` and observed `component` of several sets, in `flat_locations` order."""
    out = {"set": [], "step": [], "component": []}
    for i, obs in enumerate(sets):
        n_t, n_o = np.shape(obs.values)
        component = obs.operator.component
        out["set"].append(np.full(n_t * n_o, i))
        out["step"].append(np.repeat(np.asarray(obs.steps, dtype=int), n_o))
        out["component"].append(np.full(n_t * n_o, "" if component is None else str(component), dtype=object))
    return {k: np.concatenate(v) for k, v in out.items()}


def write_observation_table(path: str | Path, table: xr.Dataset) -> None:
    """Write an observation table to netCDF atomically (temporary name, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        table.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


__all__ = ["FileObservations", "flat_locations", "observation_field", "observation_rows", "observation_table",
           "observations_from_dataset", "read_observations", "write_observation_table"]  # fmt: skip
