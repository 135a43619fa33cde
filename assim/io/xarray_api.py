"""4D-Var from xarray objects: a background DataArray and observations as a Dataset or DataFrame in, a Dataset out.

The notebook path of the same experiment a case file runs: `grid_from_source` gives the grid of a
DataArray (CF latitude/longitude or x/y, NaN → domain mask), any model on that grid and any B,
observations as a CF point table (`obs` dimension with time, position, value, error), a gridded
field on (time, *grid dims), or a pandas DataFrame with those columns; `assimilate` solves one
strong-constraint window and returns the analysis on the background's own coordinates.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import xarray as xr

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.errors import InputError
from assim.io.observation_files import TABLE_NAMES, observations_from_dataset
from assim.io.sources import horizontal
from assim.problems.analysis import analyse
from assim.problems.cost import StrongConstraint4DVar
from assim.solvers.gauss_newton import GaussNewton
from models.base import AbstractModel


def observation_dataset(observations, grid) -> xr.Dataset:
    """A CF point table (or gridded field) Dataset from a Dataset, or from a DataFrame with one row per observation."""
    if isinstance(observations, xr.Dataset):
        return observations
    columns = getattr(observations, "columns", None)
    if columns is None:
        raise InputError(
            f"observations must be an xarray Dataset or a pandas DataFrame; got {type(observations).__name__}"
        )
    needed = ["time", *(TABLE_NAMES[d] for d in grid.dims), "value", "error"]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InputError(f"the observation table lacks the columns {missing}; give {needed}")
    table = xr.Dataset({c: ("obs", np.asarray(observations[c])) for c in needed})
    table.attrs["featureType"] = "point"
    return table


def assimilate(
    model: AbstractModel,
    background: xr.DataArray,
    covariance: AbstractBackgroundCovariance,
    observations,
    n_steps: int,
    *,
    solver: GaussNewton = GaussNewton(max_outer=5, cg_tol=1e-8),
    start: np.datetime64 | None = None,
) -> xr.Dataset:
    """One strong-constraint window from xarray inputs; the analysis trajectory and diagnostics as a Dataset."""
    grid = getattr(covariance, "grid", getattr(model, "grid", None))
    if grid is None:
        raise InputError("the covariance or the model must carry the grid (a `grid` field)")
    bg = horizontal(background)
    mask = getattr(grid, "mask", None)
    values = np.asarray(bg.values, dtype=float)
    if values.shape != tuple(grid.shape):
        raise InputError(f"the background has shape {values.shape}, the grid {tuple(grid.shape)}; give one state")
    filled = np.where(np.isfinite(values), values, np.nanmean(values))
    if mask is None and not np.all(np.isfinite(values)):
        raise InputError("the background holds NaN on a grid without a domain mask; fill it or mask those cells")
    read = observations_from_dataset(observation_dataset(observations, grid), grid, model.dt, n_steps, start=start)
    problem = StrongConstraint4DVar(model, jnp.asarray(filled), covariance, read.observations, n_steps=n_steps)
    window = analyse(solver, problem)  # the same core as `assim run`
    result, analysis, forecast = window.result, np.asarray(window.analysis), np.asarray(window.background)
    if mask is not None:
        analysis, forecast = np.where(mask, analysis, np.nan), np.where(mask, forecast, np.nan)
    dims = tuple(bg.dims)
    times = np.arange(n_steps + 1) * model.dt
    if start is not None:
        times = np.datetime64(start, "ns") + (times * 1e9).astype("timedelta64[ns]")  # pyright: ignore[reportCallIssue, reportArgumentType]  (NumPy's stubs refuse a datetime64 value here)
    coords: dict[Any, Any] = {d: bg[d] for d in dims if d in bg.coords}
    coords["time"] = ("time", times)
    obs = read.observations
    valid = np.asarray(obs.mask)
    y = np.where(valid, np.asarray(obs.values), np.nan)
    attrs = dict(bg.attrs)
    data = {
        "background": (("time", *dims), forecast, {**attrs, "long_name": "background forecast"}),
        "analysis": (("time", *dims), analysis, {**attrs, "long_name": "analysis trajectory"}),
        "increment": (dims, analysis[0] - forecast[0], {**attrs, "long_name": "analysis increment at the start"}),
        "obs_value": (("obs_time", "obs"), y),
        "obs_innovation": (("obs_time", "obs"), y - np.asarray(obs.predict(jnp.asarray(np.nan_to_num(forecast))))),
        "obs_residual": (("obs_time", "obs"), y - np.asarray(obs.predict(jnp.asarray(np.nan_to_num(analysis))))),
    }
    d = result.diagnostics
    k = int(d.n_outer)
    info = {"converged": int(bool(result.converged)), "reason": result.message(), "outer_iterations": k,
            "cg_iterations": int(np.sum(np.asarray(d.cg_iterations)[: k + 1])),
            "final_cost": float(np.asarray(d.cost)[k]), "n_observations": int(valid.sum()),
            "n_observations_masked": int((~valid).sum())}  # fmt: skip
    return xr.Dataset(data, coords=coords, attrs=info)


__all__ = ["assimilate", "observation_dataset"]
