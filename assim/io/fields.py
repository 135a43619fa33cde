"""Model parameters from data: a source's field on the model grid (or a 1-D vector), in the needed units, checked.

`parameter_field` is `assim.io.sources.field_on_grid` for a physical parameter (a diffusivity, a depth, a
background spread): units converted (as a difference where `anomaly`), the values checked finite and positive on
every active cell, inactive cells filled with the active mean (the models ignore them), and the interpolation,
units and range recorded in the provenance dict. `parameter_vector` takes a 1-D source of length n by index.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from assim.errors import InputError
from assim.io.sources import averaged, horizontal, onto_grid, open_source
from assim.io.units import convert_units

__all__ = ["parameter_field", "parameter_vector"]


def _open(source, units: str | None, what: str, anomaly: bool, implied: bool = False, horizontal_axes: bool = True):
    """The source's values (mean over `mean` dims), in `units` where given (`implied`: a file naming none means
    them), and the units conversion made."""
    where = f"{what} ({source.file}, variable {source.variable!r})"
    src = source.build(units=None)
    if not horizontal_axes and src.coarsen == 1:  # a vector without horizontal axes: nothing to coarsen
        src = dataclasses.replace(src, coarsen={})
    da = averaged(open_source(src), source, what)
    have = da.attrs.get("units")
    if units is None:
        return da, where, have
    if have is None and implied:
        return da, where, f"{units} (implied)"
    if have is None:
        raise InputError(f"{where}: the data have no units attribute but {units!r} are needed; set assume_units "
                         "to the units the file means")  # fmt: skip
    try:
        da = convert_units(da, have, units, anomaly=anomaly)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return da, where, f"{have} -> {units}"


def _check(values: np.ndarray, active: np.ndarray, where: str, positive: bool) -> np.ndarray:
    """Values checked finite (and > 0) on active cells; inactive cells set to the active mean."""
    bad = active & ~(np.isfinite(values) & ((values > 0) if positive else True))
    if np.any(bad):
        first = tuple(int(i[0]) for i in np.nonzero(bad))
        finite = values[active & np.isfinite(values)]
        low = f"minimum {finite.min():.3g}" if finite.size else "no finite value"
        need = "positive and finite" if positive else "finite"
        raise InputError(f"{where}: must be {need} on every active cell but {int(bad.sum())} cells are not "
                         f"(first at index {first}; {low}); fix the field, or mask or subset those cells")  # fmt: skip
    return np.where(active, values, float(np.mean(values[active])))


def parameter_field(
    source,
    grid,
    what: str,
    *,
    units: str | None = None,
    anomaly: bool = False,
    implied: bool = False,
    positive: bool = True,
    provenance: dict | None = None,
    key: str | None = None,
) -> np.ndarray:
    """The parameter field of `source` on the grid (checked, inactive cells filled); how into provenance[key]."""
    da, where, unit_note = _open(source, units, what, anomaly, implied)
    values, how = onto_grid(horizontal(da), grid, what=where)
    if values.shape != tuple(grid.shape):
        raise InputError(f"{where}: has shape {values.shape} on the grid, not {tuple(grid.shape)}; select or average "
                         "its other dimensions (sel, isel, mean)")  # fmt: skip
    values = _check(np.asarray(values, dtype=float), np.asarray(grid.active, dtype=bool), where, positive)
    if provenance is not None:
        provenance[key or what] = _record(source, how, unit_note, values[np.asarray(grid.active, dtype=bool)])
    return values


def parameter_vector(
    source, n: int, what: str, *, positive: bool = False, provenance: dict | None = None, key: str | None = None
) -> np.ndarray:
    """A 1-D parameter of length n from `source`, taken by index (e.g. Lorenz-96 forcing per variable)."""
    da, where, unit_note = _open(source, None, what, False, horizontal_axes=False)
    if da.ndim != 1 or da.size != n:
        raise InputError(f"{where}: needs a 1-D variable of length {n} but has dims {dict(da.sizes)}; select or "
                         "average its other dimensions (sel, isel, mean)")  # fmt: skip
    values = _check(np.asarray(da.values, dtype=float), np.ones(n, bool), where, positive)
    if provenance is not None:
        provenance[key or what] = _record(source, {"method": "by_index", "length": n}, unit_note, values)
    return values


def _record(source, how: dict, units: str | None, values: np.ndarray) -> dict[str, Any]:
    """Provenance of one parameter: file, variable, interpolation, units and range on active cells."""
    return {"file": str(source.file), "variable": source.variable, **how, "units": units,
            "min": float(values.min()), "max": float(values.max())}  # fmt: skip
