"""Synthetic observing networks on any 2-D grid (latitude-longitude or Cartesian), written as CF point tables.

`positions` places the case's network: stations at random points (or given points) reporting at
every observation time, one tilted satellite pass per observation time (`stations_and_tracks`),
or a random fraction of the domain's active cells. `synthetic_table` samples a truth trajectory
there (bilinear), adds noise of σ = observations.noise, and marks as missing (NaN) every value
whose stencil touches a masked (land) cell or a cell where the truth sample had no data: such
observations are masked and counted when the table is read back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from assim.case.config import Case
from assim.errors import ConfigError
from assim.io.observation_files import observation_table
from assim.observations.operators import SwathObservation
from models.grid import AbstractGrid


def _extent(grid: AbstractGrid) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) cell-centre coordinates of each axis."""
    coords = list(grid.coords().values())
    return np.array([c[0] for c in coords], dtype=float), np.array([c[-1] for c in coords], dtype=float)


def positions(case: Case, grid: AbstractGrid, key: PRNGKeyArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model times, points (obs, 2), platform kind 0 = station / 1 = track) of the case's synthetic network.

    Stations report at every observation time; a pass of `track_points` points runs from the first row
    to the last (capped at 87.5° on a sphere), tilted `track_tilt` degrees, and moves `track_shift`
    along the second axis between observation times.
    """
    net, o = case.observations.network, case.observations
    assert net is not None, "a [data] case without observations.file has a network (checked)"
    if grid.ndim != 2:
        raise ConfigError(f"observations.network: a [data] case's network needs a 2-D grid (got {grid.ndim}-D)")
    lo, hi = _extent(grid)
    k_st, k_tr = jax.random.split(key)
    steps = list(range(0, case.time.n_steps + 1, o.every))
    if net.kind == "random_fraction":
        active = np.flatnonzero(grid.active.reshape(-1))
        count = int(net.fraction * active.size)
        if count < 1:
            raise ConfigError(f"observations.network.fraction: observes none of the {active.size} active cells; "
                              "raise it")  # fmt: skip
        cells = np.sort(np.asarray(jax.random.choice(k_st, active, (count,), replace=False)))
        centres = np.stack([a.reshape(-1) for a in np.meshgrid(*grid.coords().values(), indexing="ij")], axis=-1)
        fixed = centres[cells]
    elif net.kind == "stations" or net.kind == "stations_and_tracks":
        count = net.count if net.kind == "stations" else net.stations
        points = getattr(net, "points", None)
        if points is not None:
            fixed = np.asarray(points, dtype=float)
            if fixed.ndim != 2 or fixed.shape[1] != 2:
                raise ConfigError("observations.network.points: each station needs 2 coordinates "
                                  f"({', '.join(grid.dims)})")  # fmt: skip
        else:
            u = np.asarray(jax.random.uniform(k_st, (count, 2)))
            fixed = lo + u * (hi - lo)
    else:
        raise ConfigError(f"observations.network.kind: {net.kind!r} is not available on a [data] grid; "
                          "use random_fraction, stations or stations_and_tracks")  # fmt: skip
    first = float(np.asarray(jax.random.uniform(k_tr, ())))
    times, pts, kind = [], [], []
    for p, step in enumerate(steps):
        times += [step * case.time.dt] * len(fixed)
        pts.append(fixed)
        kind += [0] * len(fixed)
        if net.kind == "stations_and_tracks":
            top = min(hi[0], 87.5) if grid.dims[0] == "lat" else hi[0]
            row = np.linspace(lo[0], top, net.track_points)
            along = lo[1] + np.mod(first * (hi[1] - lo[1]) + p * net.track_shift, hi[1] - lo[1])
            col = along + (row - lo[0]) * np.tan(np.deg2rad(net.track_tilt))  # a tilted pass; it may leave the domain
            times += [step * case.time.dt] * net.track_points
            pts.append(np.stack([row, col], axis=-1))
            kind += [1] * net.track_points
    return np.asarray(times), np.concatenate(pts), np.asarray(kind)


def sample_truth(
    grid: AbstractGrid, states: Float[Array, "obs ..."] | Float[np.ndarray, "obs ..."],
    points: Float[np.ndarray, "obs 2"], present: Bool[np.ndarray, "..."],
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(bilinear values of each state at its point, whether the value's stencil touches only cells with data)."""
    operator = SwathObservation(grid, points[:, None, :])  # one point per row
    clean = np.asarray(jax.vmap(lambda s, i, w: jnp.sum(w * s.reshape(-1)[i], axis=-1))(
        jnp.asarray(states), operator.indices, operator.weights))[:, 0]  # fmt: skip
    touched = np.asarray(operator.indices)[:, 0, :]
    weight = np.asarray(operator.weights)[:, 0, :]
    ok = np.all(present.reshape(-1)[touched] | (weight == 0), axis=-1) & np.asarray(operator.inside)[:, 0]
    return clean, ok


def synthetic_table(
    case: Case, grid: AbstractGrid, truth: Float[Array, "time ..."], present: Bool[np.ndarray, "..."],
    key: PRNGKeyArray, start, label: str, attrs: dict,
) -> xr.Dataset:  # fmt: skip
    """CF point table of noisy observations of the truth (NaN where a stencil touches land or missing data)."""
    times, points, kind = positions(case, grid, key)
    steps = np.rint(times / case.time.dt).astype(int)
    clean, ok = sample_truth(grid, np.asarray(truth)[steps], points, present)
    sigma = case.observations.noise
    noise = sigma * np.asarray(jax.random.normal(jax.random.fold_in(key, 1), clean.shape))
    values = np.where(ok, clean + noise, np.nan)
    extra = {}
    if start is not None:
        iso = np.datetime_as_string(np.datetime64(start, "s"), unit="s").replace("T", " ")
        extra = {"start": start, "time_units": f"seconds since {iso}"}
    name = attrs.get("long_name", attrs.get("name", "state"))
    return observation_table(grid, times, points, values, np.full(values.shape, sigma),
                             value_units=attrs.get("units", "1"), kind=kind,
                             attrs={"title": f"synthetic observations of {name}, sample {label}",
                                    "source": f"assim case {case.name!r}: synthetic network of the truth sample"},
                             **extra)  # fmt: skip


__all__ = ["positions", "sample_truth", "synthetic_table"]
