"""Cases that assimilate observations read from a netCDF file (observations.file): no truth, no twin.

The grid is the case's [grid] (or grid.file's coordinates), the observations come from
`assim.io.observation_files.read_observations` (gridded fields with NaN for missing values, or
station/track tables; times in model time since the window start), with their errors from the
file unless observations.noise replaces them. observations.file may list several files: each
is one observation set of the window (e.g. η from one file and u from another in a shallow-water
case; a file's `component` attribute or column names the field it observes, η where it names
none). The background x_b is the field of background.file (a variable `background`, or the
file's one field on the grid; its first time if it has a time axis; an analysis.nc of an earlier
run qualifies); for a multi-field state (shallow water) one variable per component, named as the
component (`eta`, `u`, `v`), on the grid's (y, x) at the state's indices or, for u and v, on the
face coordinates x_u / y_v that `assim run` writes. Without background.file x_b is the model's
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

from assim.case.config import Case
from assim.case.schema import ClimatologyB
from assim.covariances.covariance import DiagonalObservationError
from assim.errors import ConfigError, GridMismatchError, InputError
from assim.io.observation_files import ALIASES, flat_locations, read_observations
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import component_names
from assim.problems.twin import TwinExperiment
from assim.progress import reading
from models.grid import AbstractGrid, CartesianGrid


def _open_background(path: str | Path) -> xr.Dataset:
    try:
        with reading(path), xr.open_dataset(path, engine="netcdf4", decode_times=False) as ds:
            return ds.load()
    except FileNotFoundError:
        raise InputError(f"background file {str(path)!r} does not exist; check background.file "
                         "(relative to the case file)") from None  # fmt: skip
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read background file {str(path)!r} as netCDF: {exc}") from None


FACES = {"x": "x_u", "y": "y_v"}  # C-grid face dims of assim's outputs (u on east faces, v on north faces)


def _on_grid(ds: xr.Dataset, var: xr.DataArray, grid: AbstractGrid, path) -> np.ndarray:
    """A variable's values on `grid` (first time where it has a time axis); faces x_u / y_v sit half a cell on."""
    if "time" in var.dims:
        var = var.isel(time=0)
    names = {}
    for d in grid.dims:
        names[d] = next((n for n in (*ALIASES[d], FACES.get(d)) if n is not None and n in var.dims), None)
    if not all(names.values()) or len(var.dims) != grid.ndim:
        raise GridMismatchError(f"{path}: {var.name} has dims {var.dims} but the model grid has dims {grid.dims}; "
                                "write the background on the model grid")  # fmt: skip
    var = var.transpose(*(names[d] for d in grid.dims))
    for dim in grid.dims:
        have = np.asarray(ds[names[dim]].values, dtype=float)
        want = np.asarray(grid.coords()[dim], dtype=float)
        if names[dim] == FACES.get(dim):  # a face coordinate: half a cell past the centre
            assert isinstance(grid, CartesianGrid), "face coordinates x_u / y_v are on Cartesian grids"
            want = want + 0.5 * grid.spacing[list(grid.dims).index(dim)]
        if have.shape != want.shape or not np.allclose(have, want, rtol=0, atol=1e-6 * max(1.0, np.abs(want).max())):
            raise GridMismatchError(f"{path}: the background's {names[dim]} ({have.size} points) differs from the "
                                    f"model grid's {dim} ({want.size} points); regrid it (ds.interp) or take the grid "
                                    "from the same file (grid.file)")  # fmt: skip
    values = np.asarray(var.values, dtype=float)
    n_bad = int(np.sum(~np.isfinite(values)))
    if n_bad:
        raise InputError(f"{path}: the background {var.name} has {n_bad} missing or non-finite values; fill them "
                         "(e.g. with the climatology) before assimilating")  # fmt: skip
    return values


def background_from_file(
    path: str | Path, grid: AbstractGrid, components: tuple[str, ...] | None = None
) -> np.ndarray | dict[str, np.ndarray]:
    """x_b: the variable `background` (or the file's one field on the grid), at its first time, on `grid`.

    `components` (a multi-field state's names, e.g. ("eta", "u", "v")): one variable per component, named as
    the component; returns {name: values}."""
    ds = _open_background(path)
    if components is not None:
        missing = [c for c in components if c not in ds.data_vars]
        if missing:
            raise InputError(f"{path}: no variable {missing[0]!r} for the {missing[0]} component of the background "
                             f"state (found {sorted(map(str, ds.data_vars))}); write one variable per component "
                             f"{list(components)} on the grid")  # fmt: skip
        return {c: _on_grid(ds, ds[c], grid, path) for c in components}
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
    if set(var.dims) - {"time"} != grid_dims:
        raise GridMismatchError(f"{path}: {var.name} has dims {var.dims} but the model grid has dims {grid.dims}; "
                                "write the background on the model grid")  # fmt: skip
    return _on_grid(ds, var, grid, path)


def _background_file(case: Case) -> str | None:
    """background.file (B of a climatology, a [data] case's only, never reaches this form: checked)."""
    assert not isinstance(case.background, ClimatologyB), "a case with observations.file and no [data]"
    return case.background.file


def file_background(case: Case, grid: AbstractGrid, initial):
    """x_b of a case with observations.file: background.file's field(s) in the state's form, else `initial`."""
    path = _background_file(case)
    if path is None:
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), initial)
    names = component_names(initial)
    fields = background_from_file(path, grid, names)
    if names is None:
        return jnp.asarray(fields)
    assert isinstance(fields, dict), "one field per component"
    fields = {c: jnp.asarray(v) for c, v in fields.items()}
    if hasattr(initial, "_replace"):  # NamedTuple states (shallow water)
        return initial._replace(**fields)
    if isinstance(initial, dict):
        return {**initial, **fields}
    return eqx.tree_at(lambda s: tuple(getattr(s, c) for c in names), initial, tuple(fields[c] for c in names))


def observation_paths(case: Case) -> tuple[str, ...]:
    """observations.file as a tuple of paths (one path or a list)."""
    f = case.observations.file
    return () if f is None else (f,) if isinstance(f, str) else tuple(f)


def file_observations(
    case: Case, grid: AbstractGrid, state=None, start=None
) -> tuple[tuple[ObservationSet, ...], np.ndarray, tuple[int, ...]]:
    """The case's observation sets, one per observations.file (σ = observations.noise where given), and the
    Experiment's locations and steps: one file's own, or one row per observation of every set (several files).

    `state`: a model state whose components a file's `component` may name; `start`: the window's date."""
    o = case.observations
    sets, locations = [], []
    for path in observation_paths(case):
        read = read_observations(path, grid, case.time.dt, case.time.n_steps, start=start,
                                 component=getattr(case.model, "component", None),
                                 components=None if state is None else component_names(state))  # fmt: skip
        obs = read.observations
        if o.noise is not None:  # the case overrides the file's errors; observations the file masked stay masked
            error = DiagonalObservationError(jnp.full(obs.values.shape, o.noise), obs.mask)
            obs = eqx.tree_at(lambda s: s.error, obs, error)
        sets.append(obs)
        locations.append(read.locations)
    if len(sets) == 1:
        return tuple(sets), locations[0], sets[0].steps
    steps = tuple(sorted({s for obs in sets for s in obs.steps}))
    return tuple(sets), flat_locations(sets, locations), steps


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
    make_solver(case, grid=grid)
    file_observations(case, grid, initial)
    if _background_file(case) is not None:
        model.check_state(file_background(case, grid, initial))


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
    sets, locations, steps = file_observations(case, grid, initial)
    background = file_background(case, grid, initial)
    model.check_state(background)
    twin = TwinExperiment(truth=None, observations=sets, background=background)
    exp = Experiment(case, grid, model, covariance, make_solver(case, background, grid=grid), twin, locations, steps)
    jax.block_until_ready(background)
    exp.timings["build_s"] = time.perf_counter() - start
    return exp


__all__ = ["background_from_file", "build", "file_background", "file_observations", "observation_paths"]
