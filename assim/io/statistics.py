"""Climatological statistics of a field's samples: the mean and spread, and the anomalies' correlation length."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from jaxtyping import Float

from assim.errors import GridMismatchError, InputError
from assim.io.cf_axes import _resolve, _where, horizontal
from models.grid import LatLonGrid, Periodic

__all__ = ["climatology", "correlation_length"]


def _oriented(da):
    try:
        return horizontal(da)
    except InputError:
        return da


def climatology(da: xr.DataArray, dim: str) -> tuple[Float[np.ndarray, "*grid"], Float[np.ndarray, "*grid"]]:
    """Mean and standard deviation (population, NaN skipped) over the samples along `dim`."""
    h = _oriented(da)
    name = _resolve(h, dim, "climatology")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.asarray(h.mean(name, skipna=True).values, dtype=float),
                np.asarray(h.std(name, skipna=True, ddof=0).values, dtype=float))  # fmt: skip


def _distances(grid, points: np.ndarray) -> np.ndarray:
    """Pairwise distances between flat cell indices: great-circle (metres) or Euclidean (periodic minimum image)."""
    idx = np.unravel_index(points, grid.shape)
    c = grid.coords()
    if isinstance(grid, LatLonGrid):
        lat, lon = np.deg2rad(c["lat"][idx[0]]), np.deg2rad(c["lon"][idx[1]])
        hav = (np.sin((lat[:, None] - lat) / 2) ** 2
               + np.cos(lat[:, None]) * np.cos(lat) * np.sin((lon[:, None] - lon) / 2) ** 2)  # fmt: skip
        return 2 * grid.radius * np.arcsin(np.sqrt(np.clip(hav, 0, 1)))
    sq = 0.0
    for axis, d in enumerate(grid.dims):
        x = c[d][idx[axis]]
        diff = np.abs(x[:, None] - x)
        if isinstance(grid.boundaries[axis], Periodic):
            diff = np.minimum(diff, grid.lengths[axis] - diff)
        sq = sq + diff**2
    return np.sqrt(sq)


def correlation_length(anomalies: xr.DataArray, dim: str, grid, *, max_points: int = 1500) -> float:
    """Gaussian correlation length L of sample anomalies, from the binned mean correlation against distance.

    Estimator: remove each point's sample mean along `dim` and standardise; on all points (or a fixed random
    subsample of `max_points`) compute the sample correlation of every pair; average it in distance bins one grid
    spacing wide (great-circle distance with grid.radius on a LatLonGrid, Euclidean with periodic minimum image
    on a CartesianGrid); fit rho(r) = exp(-r^2 / 2L^2) by least squares, weighted by pair counts, over the bins
    from r > 0 up to the first bin where the mean correlation drops to 0.2 or below. L is in metres on a
    LatLonGrid and in the grid's length units on a CartesianGrid.
    """
    from scipy.optimize import minimize_scalar

    h = _oriented(anomalies)
    name = _resolve(h, dim, "correlation_length")
    x = np.asarray(h.transpose(name, ...).values, dtype=float)
    if x.shape[1:] != tuple(grid.shape) or x.shape[0] < 3:
        raise GridMismatchError(f"{_where(anomalies)}: anomalies of shape {x.shape} need (samples >= 3, *{grid.shape}) "
                                f"along ({dim}, grid dims); put them on the grid first (onto_grid)")  # fmt: skip
    x = x.reshape(x.shape[0], -1)
    x = x - x.mean(0)
    sd = x.std(0)
    points = np.nonzero(np.all(np.isfinite(x), 0) & (sd > 0))[0]
    if points.size > max_points:
        points = np.sort(np.random.default_rng(0).choice(points, max_points, replace=False))
    z = x[:, points] / sd[points]
    rho, r = (z.T @ z / z.shape[0]), _distances(grid, points)
    upper = np.triu_indices(points.size, 1)
    rho, r = rho[upper], r[upper]
    if isinstance(grid, LatLonGrid):
        width = grid.radius * min(grid.dlat, grid.dlon * float(np.max(grid.mean_cos_lat())))
    else:
        width = min(grid.spacing)
    bins = np.floor(r / width + 0.5).astype(int)  # bin k holds distances in ((k - 1/2) w, (k + 1/2) w]
    count = np.bincount(bins)
    keep = count > 0
    rb = np.bincount(bins, r)[keep] / count[keep]
    pb, nb = np.bincount(bins, rho)[keep] / count[keep], count[keep]
    low = np.nonzero(pb <= 0.2)[0]
    use = np.arange(low[0] if low.size else pb.size)
    use = use[rb[use] > 0]
    if use.size == 0:
        raise InputError(f"{_where(anomalies)}: the correlation falls below 0.2 within one grid spacing; the "
                         "correlation length is shorter than the grid resolves: give it explicitly")  # fmt: skip
    rb, pb, nb = rb[use], pb[use], nb[use]

    def cost(log_l):
        return float(np.sum(nb * (pb - np.exp(-(rb**2) / (2 * np.exp(2 * log_l)))) ** 2))

    guess = np.sqrt(np.sum(nb * rb**4) / max(np.sum(nb * rb**2 * -2 * np.log(np.clip(pb, 1e-6, 1))), 1e-300))
    best = minimize_scalar(cost, bounds=(np.log(guess) - 3, np.log(guess) + 3), method="bounded")
    return float(np.exp(best.x))  # pyright: ignore[reportAttributeAccessIssue]  (SciPy types the result as object)
