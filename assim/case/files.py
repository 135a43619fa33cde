"""Cases that assimilate observations read from a netCDF file (observations.file): no truth, no twin.

The grid is the case's [grid] (or grid.file's coordinates), the observations come from
`assim.io.observation_files.read_observations` (gridded fields with NaN for missing values, or
station/track tables; times in model time since the window start), with their errors from the
file unless observations.noise replaces them. The background x_b is the field of
background.file (a variable `background`, or the file's one field on the grid; its first time
if it has a time axis; an analysis.nc of an earlier run qualifies), or else the model's
configured initial state (model.initial; lorenz96: the spun-up state).
"""

from __future__ import annotations

import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jaxtyping import Array, Float

from assim.case.config import Case
from assim.covariances.covariance import DiagonalObservationError
from assim.errors import ConfigError, GridMismatchError, InputError
from assim.io.observation_files import ALIASES, read_observations
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import component_names
from assim.problems.twin import TwinExperiment
from models.grid import AbstractGrid


def background_from_file(path: str | Path, grid: AbstractGrid) -> Float[np.ndarray, "..."]:
    """x_b: the variable `background` (or the file's one field on the grid), at its first time, on `grid`."""
    try:
        with xr.open_dataset(path, engine="netcdf4", decode_times=False) as ds:
            ds = ds.load()
    except FileNotFoundError:
        raise InputError(f"background file {str(path)!r} does not exist; check background.file "
                         "(relative to the case file)") from None  # fmt: skip
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read background file {str(path)!r} as netCDF: {exc}") from None
    names = {d: next((n for n in ALIASES[d] if n in ds.dims), None) for d in grid.dims}
    if not all(names.values()):
        raise GridMismatchError(f"{path}: the file has dims {tuple(ds.dims)} but the model grid has dims {grid.dims}; "
                                "write the background on the model grid")  # fmt: skip
    grid_dims = set(names.values())
    on_grid = [v for v in ds.data_vars if set(ds[v].dims) - {"time"} == grid_dims]
    if "background" in ds.data_vars:
        var = ds["background"]
    elif len(on_grid) == 1:
        var = ds[on_grid[0]]
    else:
        raise InputError(f"{path}: expected a variable `background` or one field on {grid.dims} (found {on_grid}); "
                         "name the background field `background`")  # fmt: skip
    if "time" in var.dims:
        var = var.isel(time=0)
    if set(var.dims) != grid_dims:
        raise GridMismatchError(f"{path}: {var.name} has dims {var.dims} but the model grid has dims {grid.dims}; "
                                "write the background on the model grid")  # fmt: skip
    var = var.transpose(*(names[d] for d in grid.dims))
    for dim in grid.dims:
        have = np.asarray(ds[names[dim]].values, dtype=float)
        want = np.asarray(grid.coords()[dim], dtype=float)
        if have.shape != want.shape or not np.allclose(have, want, rtol=0, atol=1e-6 * max(1.0, np.abs(want).max())):
            raise GridMismatchError(f"{path}: the background's {names[dim]} ({have.size} points) differs from the "
                                    f"model grid's {dim} ({want.size} points); regrid it (ds.interp) or take the grid "
                                    "from the same file (grid.file)")  # fmt: skip
    values = np.asarray(var.values, dtype=float)
    n_bad = int(np.sum(~np.isfinite(values)))
    if n_bad:
        raise InputError(f"{path}: the background has {n_bad} missing or non-finite values; fill them (e.g. with "
                         "the climatology) before assimilating")  # fmt: skip
    return values


def file_observations(case: Case, grid: AbstractGrid, state=None, start=None) -> tuple[ObservationSet, np.ndarray]:
    """The case's observation set read from observations.file (σ = observations.noise where given), and locations.

    `state`: a model state whose components a file's `component` may name; `start`: the window's date."""
    o = case.observations
    read = read_observations(o.file, grid, case.time.dt, case.time.n_steps, start=start,
                             component=getattr(case.model, "component", None),
                             components=None if state is None else component_names(state))  # fmt: skip
    obs = read.observations
    if o.noise is not None:  # the case overrides the file's errors; observations the file masked stay masked
        error = DiagonalObservationError(jnp.full(obs.values.shape, o.noise), obs.mask)
        obs = eqx.tree_at(lambda s: s.error, obs, error)
    return obs, read.locations


def check(case: Case) -> None:
    """Construct the grid, model, B and solver and read the observation and background files (no run)."""
    from assim.case.experiment import (
        make_covariance,
        make_grid,
        make_model,
        make_solver,
    )

    grid = make_grid(case)
    model, initial = make_model(case, grid, spin_up=False)
    make_covariance(case, grid)
    make_solver(case)
    file_observations(case, grid, initial)
    if case.background.file is not None:
        model.check_state(jnp.asarray(background_from_file(case.background.file, grid)))


def build(case: Case, sample: int = 0):
    """The Experiment of a case with observations.file: grid, model, B, solver, observations and x_b (no truth)."""
    from assim.case.experiment import (
        Experiment,
        make_covariance,
        make_grid,
        make_model,
        make_solver,
    )

    if sample:
        raise ConfigError(f"a case with observations.file has one window (sample 0); got sample {sample}")
    start = time.perf_counter()
    grid = make_grid(case)
    model, initial = make_model(case, grid)
    covariance = make_covariance(case, grid)
    obs, locations = file_observations(case, grid, initial)
    if case.background.file is not None:
        background: Array = jnp.asarray(background_from_file(case.background.file, grid))
    else:
        background = jnp.asarray(initial, dtype=float)
    model.check_state(background)
    twin = TwinExperiment(truth=None, observations=(obs,), background=background)
    exp = Experiment(case, grid, model, covariance, make_solver(case, background), twin, locations, obs.steps)
    jax.block_until_ready(background)
    exp.timings["build_s"] = time.perf_counter() - start
    return exp


__all__ = ["background_from_file", "build", "file_observations"]
