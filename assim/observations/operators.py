"""Observation operators: linear maps from a model state to observed values (grid points, stations, swaths).

Every operator is a sparse interpolation: observation j reads `k` grid cells (flat
indices) with fixed weights, so `apply` is a gather and `adjoint` the matching
scatter-add; `jax.vjp` / `jax.linear_transpose` of `apply` give the same adjoint.
Stations that fall outside the domain get weight 0 and are flagged in `inside`, so
that an `assim.observations.observation_set.ObservationSet` can mask and count them.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from assim.errors import GridMismatchError, ObservationError
from models.grid import AbstractGrid, CartesianGrid, LatLonGrid, Periodic

Component = int | str | None


def select_component(state: PyTree[Array], component: Component, stacked: bool = False) -> Array:
    """The observed field of a state: the state itself, one component of a tuple/dict/Module state, or
    one slice along the leading component axis of an array state (after the time axis when `stacked`)."""
    if component is None:
        return state
    if isinstance(state, (jax.Array, np.ndarray)):  # components stacked along an axis: an int index
        array = cast(Array, state)
        return array[:, component] if stacked else array[component]
    if isinstance(component, int) or isinstance(state, Mapping):
        return state[component]
    return getattr(state, component)


def component_names(state: PyTree[Array]) -> tuple[str, ...] | None:
    """Names of a multi-field state's components (NamedTuple, dict or Module fields); None for one array."""
    if isinstance(state, (jax.Array, np.ndarray)):
        return None
    if isinstance(state, Mapping):
        return tuple(str(k) for k in state)
    if hasattr(state, "_fields"):
        return tuple(state._fields)
    if isinstance(state, eqx.Module):
        import dataclasses

        return tuple(f.name for f in dataclasses.fields(state))
    return None


def _gather(field: Array, indices: Array, weights: Array) -> Array:
    return jnp.sum(weights * field.reshape(-1)[indices], axis=-1)


def _scatter(shape: tuple[int, ...], indices: Array, weights: Array, y: Array, dtype) -> Array:
    flat = jnp.zeros(int(np.prod(shape)), dtype=dtype)
    return flat.at[indices.reshape(-1)].add((weights * y[..., None]).reshape(-1)).reshape(shape)


class AbstractObservationOperator(eqx.Module):
    """Linear observation operator H: the state(s) of a window → observed values, with its adjoint Hᵀ."""

    grid_shape: eqx.AbstractVar[tuple[int, ...]]
    component: eqx.AbstractVar[Component]
    indices: eqx.AbstractVar[Int[Array, "..."]]
    weights: eqx.AbstractVar[Float[Array, "..."]]
    inside: eqx.AbstractVar[Bool[Array, "..."]]

    @property
    def n_obs(self) -> int:
        """Number of observations per observation time."""
        return int(self.indices.shape[-2])

    @property
    @abc.abstractmethod
    def n_times(self) -> int | None:
        """Number of observation times the operator is tied to (None: the same stations at every time)."""

    def check_grid(self, shape: tuple[int, ...], what: str = "the model state") -> None:
        """Raise GridMismatchError if the operator was built for another grid than `shape`."""
        if tuple(shape) != tuple(self.grid_shape):
            raise GridMismatchError(
                f"{type(self).__name__} was built for a grid of shape {tuple(self.grid_shape)} but {what} has "
                f"shape {tuple(shape)}; rebuild the observation operator on the model's grid."
            )

    def check_state(self, state: PyTree[Array], stacked: bool = False) -> Array:
        """The observed field of a state (or of states stacked along time); raise if it does not fit the operator."""
        field = select_component(state, self.component, stacked)
        if not isinstance(field, (jax.Array, np.ndarray)):
            raise ObservationError(
                f"the state has several components ({type(field).__name__}); build {type(self).__name__} with "
                "component=<index or name> of the observed field."
            )
        self.check_grid(field.shape[1:] if stacked else field.shape, "the stacked states" if stacked else "the state")
        return jnp.asarray(field)

    @abc.abstractmethod
    def apply_window(self, states: Float[Array, "time ..."]) -> Float[Array, "time obs"]:
        """Model equivalents of the observations at each observation time, from the states stacked along time."""

    @abc.abstractmethod
    def adjoint_window(self, y: Float[Array, "time obs"]) -> Float[Array, "time ..."]:
        """Adjoint of `apply_window`: observation-space weights → stacked field increments."""


class AbstractStaticObservation(AbstractObservationOperator):
    """An operator that observes the same points at every observation time."""

    @property
    def n_times(self) -> None:
        return None

    def apply(self, state: PyTree[Array]) -> Float[Array, " obs"]:
        """Model equivalents H(x) of the observations from one state."""
        field = self.check_state(state)
        return _gather(field, self.indices, self.weights)

    def adjoint(self, y: Float[Array, " obs"]) -> Float[Array, "..."]:
        """Adjoint Hᵀy: observation-space weights → field increment (of the observed component)."""
        y = jnp.asarray(y)
        return _scatter(self.grid_shape, self.indices, self.weights, y, jnp.result_type(y, self.weights))

    def apply_window(self, states):
        fields = self.check_state(states, stacked=True)
        return jax.vmap(lambda f: _gather(f, self.indices, self.weights))(fields)

    def adjoint_window(self, y):
        return jax.vmap(self.adjoint)(y)


class GriddedObservation(AbstractStaticObservation):
    """Direct sampling of a subset of grid cells, given by their flat (row-major) indices."""

    grid_shape: tuple[int, ...] = eqx.field(static=True)
    component: Component = eqx.field(static=True)
    indices: Int[Array, "obs 1"]
    weights: Float[Array, "obs 1"]
    inside: Bool[Array, " obs"]

    def __init__(self, grid: AbstractGrid, indices: Int[ArrayLike, " obs"], component: Component = None):
        idx = np.asarray(indices)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ObservationError(
                f"gridded observations need a 1-D array of integer flat indices; got dtype {idx.dtype}, "
                f"shape {idx.shape}. Use GriddedObservation.from_mask(grid, mask) for a boolean field."
            )
        if idx.size and (idx.min() < 0 or idx.max() >= grid.size):
            raise ObservationError(
                f"flat indices must lie in [0, {grid.size}) for a grid of shape {grid.shape}; got "
                f"{idx.min()}..{idx.max()}. Build the operator on the grid the indices refer to."
            )
        self.grid_shape = tuple(grid.shape)
        self.component = component
        self.indices = jnp.asarray(idx, dtype=jnp.int32)[:, None]
        self.weights = jnp.ones((idx.size, 1))
        self.inside = jnp.ones(idx.size, dtype=bool)

    @classmethod
    def from_mask(cls, grid: AbstractGrid, mask: Bool[ArrayLike, "..."], component: Component = None):
        """Observe every cell where `mask` is true (row-major order)."""
        mask = np.asarray(mask, dtype=bool)
        grid.check_field(mask, "observation mask", allow_scalar=False)
        return cls(grid, np.flatnonzero(mask), component)


def _axis_stencil(centres: np.ndarray, q: np.ndarray, periodic: bool, lo: float, hi: float):
    """Neighbouring cell indices and linear weights along one axis of a regular grid, and which q are inside."""
    n = centres.size
    h = centres[1] - centres[0]
    finite = np.isfinite(q)
    qf = np.where(finite, q, centres[0])
    s = (qf - centres[0]) / h
    if periodic:
        s = np.mod(s, n)
        i0 = np.floor(s).astype(np.int64)
        frac = s - i0
        i0 = np.mod(i0, n)
        i1 = np.mod(i0 + 1, n)
        inside = finite
    else:
        tol = 1e-9 * max(abs(hi - lo), 1.0)
        inside = finite & (qf >= lo - tol) & (qf <= hi + tol)
        s = np.clip(s, 0.0, n - 1.0)  # between the wall and the first centre: nearest-centre value
        i0 = np.minimum(np.floor(s).astype(np.int64), n - 2)
        frac = s - i0
        i1 = i0 + 1
    return (i0, i1), (1.0 - frac, frac), inside


def _station_stencil(grid: AbstractGrid, points: np.ndarray):
    """Flat indices (n, 2^d), bilinear weights (n, 2^d) and inside-domain flags (n,) of stations on a grid."""
    if isinstance(grid, CartesianGrid):
        centres = [np.asarray(c, dtype=float) for c in grid.coords().values()]
        bounds = [(o, o + L) for o, L in zip(grid.origin, grid.lengths)]
    elif isinstance(grid, LatLonGrid):
        centres = [np.asarray(grid.lat), np.asarray(grid.lon)]
        dlat, dlon = grid.lat[1] - grid.lat[0], grid.lon[1] - grid.lon[0]
        bounds = [
            (max(grid.lat[0] - dlat / 2, -90.0), min(grid.lat[-1] + dlat / 2, 90.0)),
            (grid.lon[0] - dlon / 2, grid.lon[-1] + dlon / 2),
        ]
    else:
        raise ObservationError(
            f"station interpolation supports CartesianGrid and LatLonGrid, not {type(grid).__name__}."
        )
    ndim = grid.ndim
    if points.ndim != 2 or points.shape[1] != ndim:
        raise ObservationError(
            f"station positions must have shape (n_stations, {ndim}) with coordinates in the order {grid.dims}; "
            f"got shape {points.shape}."
        )
    stencils = [
        _axis_stencil(centres[a], points[:, a], isinstance(grid.boundaries[a], Periodic), *bounds[a])
        for a in range(ndim)
    ]
    inside = np.logical_and.reduce([s[2] for s in stencils])
    strides = np.cumprod((grid.shape[1:] + (1,))[::-1])[::-1]  # row-major strides
    flat, weight = [], []
    for corner in np.ndindex(*(2,) * ndim):
        idx = sum(stencils[a][0][c] * strides[a] for a, c in enumerate(corner))
        w = np.prod([stencils[a][1][c] for a, c in enumerate(corner)], axis=0)
        flat.append(idx)
        weight.append(w)
    flat = np.stack(flat, axis=-1)
    weight = np.stack(weight, axis=-1)
    flat = np.where(inside[:, None], flat, 0)
    weight = np.where(inside[:, None], weight, 0.0)
    return flat, weight, inside


class StationObservation(AbstractStaticObservation):
    """Point stations read by bilinear interpolation between cell centres (wrapping on periodic axes).

    Positions are given in the grid's coordinates, in `grid.dims` order: (x,) or (y, x) on a
    CartesianGrid, (lat, lon) in degrees on a LatLonGrid. Between a wall and the first cell
    centre the nearest centre's value is used; stations outside the domain are flagged in
    `inside` (and masked by an ObservationSet).
    """

    grid_shape: tuple[int, ...] = eqx.field(static=True)
    component: Component = eqx.field(static=True)
    indices: Int[Array, "obs corners"]
    weights: Float[Array, "obs corners"]
    inside: Bool[Array, " obs"]

    def __init__(self, grid: AbstractGrid, points: Float[ArrayLike, "obs dim"], component: Component = None):
        flat, weight, inside = _station_stencil(grid, np.asarray(points, dtype=float))
        self.grid_shape = tuple(grid.shape)
        self.component = component
        self.indices = jnp.asarray(flat, dtype=jnp.int32)
        self.weights = jnp.asarray(weight)
        self.inside = jnp.asarray(inside)


class SwathObservation(AbstractObservationOperator):
    """Along-track observations: a different set of stations at each observation time (satellite swaths, drifters).

    `points[t]` are the positions observed at observation time t, interpolated bilinearly as
    in StationObservation; pad shorter tracks with NaN positions (they are masked as outside).
    """

    grid_shape: tuple[int, ...] = eqx.field(static=True)
    component: Component = eqx.field(static=True)
    indices: Int[Array, "time obs corners"]
    weights: Float[Array, "time obs corners"]
    inside: Bool[Array, "time obs"]

    def __init__(self, grid: AbstractGrid, points: Float[ArrayLike, "time obs dim"], component: Component = None):
        points = np.asarray(points, dtype=float)
        if points.ndim != 3:
            raise ObservationError(
                f"swath positions must have shape (n_times, n_obs, {grid.ndim}); got {points.shape}."
            )
        n_t, n_o, d = points.shape
        flat, weight, inside = _station_stencil(grid, points.reshape(n_t * n_o, d))
        self.grid_shape = tuple(grid.shape)
        self.component = component
        self.indices = jnp.asarray(flat.reshape(n_t, n_o, -1), dtype=jnp.int32)
        self.weights = jnp.asarray(weight.reshape(n_t, n_o, -1))
        self.inside = jnp.asarray(inside.reshape(n_t, n_o))

    @property
    def n_times(self) -> int:
        return int(self.indices.shape[0])

    def apply(self, state: PyTree[Array], time_index: Int[ArrayLike, ""]) -> Float[Array, " obs"]:
        """Model equivalents of the observations of observation time `time_index` from one state."""
        field = self.check_state(state)
        return _gather(field, self.indices[time_index], self.weights[time_index])

    def adjoint(self, y: Float[Array, " obs"], time_index: Int[ArrayLike, ""]) -> Float[Array, "..."]:
        """Adjoint of `apply` for observation time `time_index`."""
        y = jnp.asarray(y)
        return _scatter(
            self.grid_shape, self.indices[time_index], self.weights[time_index], y, jnp.result_type(y, self.weights)
        )

    def apply_window(self, states):
        fields = self.check_state(states, stacked=True)
        if fields.shape[0] != self.n_times:
            raise ObservationError(
                f"this swath has {self.n_times} observation times but {fields.shape[0]} states were given; "
                "give one model state per observation time."
            )
        return jax.vmap(_gather)(fields, self.indices, self.weights)

    def adjoint_window(self, y):
        y = jnp.asarray(y)
        dtype = jnp.result_type(y, self.weights)
        return jax.vmap(lambda i, w, v: _scatter(self.grid_shape, i, w, v, dtype))(self.indices, self.weights, y)


def steps_from_times(times: Float[ArrayLike, " time"], dt: float, n_steps: int, t0: float = 0.0) -> tuple[int, ...]:
    """Model steps (0 = window start) that observation times belong to: the nearest step (bins of ±dt/2)."""
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or not np.all(np.isfinite(times)):
        raise ObservationError("observation times must be a 1-D array of finite numbers.")
    steps = np.rint((times - t0) / dt).astype(np.int64)
    bad = (steps < 0) | (steps > n_steps)
    if np.any(bad):
        raise ObservationError(
            f"observation time {times[bad][0]} lies outside the window [{t0}, {t0 + n_steps * dt}] "
            f"(dt={dt}, {n_steps} steps); drop it or lengthen the window."
        )
    return tuple(int(s) for s in steps)
