"""Time-varying fields from data: a source whose variable keeps a time dimension, each time put onto the grid.

Times become model time since the window start: seconds for dates (after the window's `start`) and for
time deltas, the file's own numbers otherwise (model time units on a Cartesian grid). A source without a
time dimension is one steady field, exactly as `assim.io.sources.field_on_grid` gives it.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from jaxtyping import Float

from assim.errors import InputError
from assim.io.sources import (
    averaged,
    field_on_grid,
    horizontal,
    onto_grid,
    open_source,
    recognise_axes,
)


def model_times(values: np.ndarray, start, what: str) -> Float[np.ndarray, " time"]:
    """Model time since the window start of a time coordinate's values."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.datetime64):
        if start is None:
            raise InputError(f"{what}: its times are dates but the window has none; give the times as model time "
                             "since the window start (numbers), or a [data] case whose window has a date")  # fmt: skip
        return (values - np.datetime64(start, "ns")) / np.timedelta64(1, "s")
    if np.issubdtype(values.dtype, np.timedelta64):
        return values / np.timedelta64(1, "s")
    if not np.issubdtype(values.dtype, np.number):
        raise InputError(f"{what}: its time coordinate holds {values.dtype} values; give dates or numbers")
    return values.astype(float)


def _time_dim(da: xr.DataArray) -> str | None:
    """The dimension of the field's time axis (CF attributes, names or datetime values), None if it has none."""
    name = recognise_axes(da).get("time")
    if name in da.dims:
        return name
    if name in da.coords and da[name].ndim == 1:
        return str(da[name].dims[0])
    return None


def _open(source, units: str | None, what: str) -> xr.DataArray:
    return averaged(open_source(source.build(units=units)), source, what)


def source_times(source, start, what: str) -> Float[np.ndarray, " time"] | None:
    """Model times of a source's time axis (after sel, isel and mean), None for a steady source."""
    da = _open(source, None, what)
    dim = _time_dim(da)
    return None if dim is None else model_times(da[dim].values, start, f"{what} ({source.file}, {source.variable!r})")


def check_covers(times: np.ndarray, length: float, what: str) -> None:
    """A record whose times span the window [0, length] of model time (InputError naming the gap otherwise)."""
    tol = 1e-9 * max(1.0, abs(length))
    if times[0] > tol or times[-1] < length - tol:
        raise InputError(f"{what}: the record covers model time {times[0]:g}..{times[-1]:g} but the window spans "
                         f"0..{length:g}; give times from the window start to its end, or steady = true with one "
                         "time selected (sel) or averaged (mean)")  # fmt: skip


def field_series_on_grid(
    source, grid, units: str | None, what: str, start=None
) -> tuple[Float[np.ndarray, "*time_and_grid"], Float[np.ndarray, " time"] | None, dict]:
    """(values (time, *grid), model times, provenance) of a source with a time axis; (values, None, …) without."""
    da = _open(source, units, what)
    dim = _time_dim(da)
    label = f"{what} ({source.file}, variable {source.variable!r})"
    if dim is None:
        values, how = field_on_grid(source, grid, units, what)
        return values, None, how
    da = da.transpose(dim, ...)
    times = model_times(da[dim].values, start, label)
    if times.size > 1 and not np.all(np.diff(times) > 0):
        raise InputError(f"{label}: its times are not strictly increasing; sort the file by {dim!r}")
    values, how = onto_grid(horizontal(da), grid, what=label)
    if values.shape != (times.size, *grid.shape):
        raise InputError(f"{source.file}: {what} ({source.variable}) has shape {values.shape} on the grid, not "
                         f"{(times.size, *grid.shape)} ({dim}, grid); select or average its other dimensions "
                         "(sel, isel, mean)")  # fmt: skip
    how["times"] = [float(t) for t in times]
    how["time_labels"] = [str(v) for v in np.asarray(da[dim].values)]
    return values, times, how


__all__ = ["check_covers", "field_series_on_grid", "model_times", "source_times"]
