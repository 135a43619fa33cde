"""Grids: cell-centred finite-volume geometry on a Cartesian box or a latitude-longitude sphere."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import numpy as np
from jaxtyping import ArrayLike, Bool

from models.errors import GridMismatchError, InputError

EARTH_RADIUS = 6.371e6  # metres


class AbstractBoundary(eqx.Module):
    """What happens at the two ends of one grid axis."""


class Periodic(AbstractBoundary):
    """The axis wraps around: the last cell neighbours the first."""


class Neumann(AbstractBoundary):
    """Closed wall: zero normal gradient and zero normal flux."""


class Dirichlet(AbstractBoundary):
    """Prescribed boundary value: diffusion sees it on the wall, inflow carries it in."""

    value: float = eqx.field(static=True, default=0.0)


class Open(AbstractBoundary):
    """Open boundary: inflow carries the model's boundary values in, outflow leaves upwind; no diffusive flux."""


class AbstractPoles(eqx.Module):
    """How a latitude-longitude grid treats rows that lie on a pole (latitude ±90°)."""


class ClosedPoles(AbstractPoles):
    """Keep polar rows as polar-cap cells; the face on the pole has zero length, so nothing crosses it."""


class ExcludedPoles(AbstractPoles):
    """Drop polar rows from the grid; the outermost remaining face is a closed wall."""


class AbstractGrid(eqx.Module):
    """Cell-centred finite-volume geometry: volumes, faces, centre-to-centre distances, coordinates."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Number of cells along each axis."""

    @property
    @abc.abstractmethod
    def boundaries(self) -> tuple[AbstractBoundary, ...]:
        """Boundary condition of each axis."""

    @property
    @abc.abstractmethod
    def dims(self) -> tuple[str, ...]:
        """Dimension names, in axis order, as they appear in xarray objects."""

    @abc.abstractmethod
    def coords(self) -> dict[str, np.ndarray]:
        """Cell-centre coordinate of each dimension."""

    @abc.abstractmethod
    def cell_volume(self) -> np.ndarray:
        """Cell volumes (lengths in 1-D, areas in 2-D), broadcastable to `shape`."""

    @abc.abstractmethod
    def face_area(self, axis: int) -> np.ndarray:
        """Areas of the n+1 faces normal to `axis` (broadcastable; boundary faces included; zero where masked)."""

    @abc.abstractmethod
    def face_distance(self, axis: int) -> np.ndarray:
        """Centre-to-centre distances across the n+1 faces normal to `axis` (broadcastable)."""

    @abc.abstractmethod
    def with_mask(self, mask: Bool[ArrayLike, "..."] | None) -> AbstractGrid:
        """A copy of this grid with domain mask `mask` (True = active cell; None = no mask)."""

    @property
    def mask(self) -> np.ndarray | None:
        """Domain mask: bool array of `shape`, True on active (sea) cells; None when every cell is active."""
        packed = getattr(self, "_mask", None)
        return None if packed is None else np.frombuffer(packed, dtype=bool).reshape(self.shape)

    @property
    def active(self) -> np.ndarray:
        """Bool array of `shape`: True on active cells (all True without a mask)."""
        mask = self.mask
        return np.ones(self.shape, dtype=bool) if mask is None else mask.copy()

    @property
    def n_active(self) -> int:
        """Number of active cells."""
        mask = self.mask
        return self.size if mask is None else int(mask.sum())

    def open_faces(self, axis: int) -> np.ndarray:
        """Bool array of the n+1 faces normal to `axis`: True where no cell beside the face is masked.

        A boundary face has one cell beside it; a periodic wrap face has the last and the first cell.
        """
        m = np.moveaxis(self.active, axis, 0)
        if isinstance(self.boundaries[axis], Periodic):
            lo = hi = m[-1:] & m[:1]
        else:
            lo, hi = m[:1], m[-1:]
        return np.moveaxis(np.concatenate([lo, m[1:] & m[:-1], hi], axis=0), 0, axis)

    def _close_masked_faces(self, area: np.ndarray, axis: int) -> np.ndarray:
        """`area` unchanged without a mask; else the full face array, zero on every face beside a masked cell."""
        if self.mask is None:
            return area
        shape = list(self.shape)
        shape[axis] += 1
        return np.broadcast_to(area, tuple(shape)) * self.open_faces(axis)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def check_field(self, field, name: str, *, allow_scalar: bool = True) -> None:
        """Raise if `field` is neither a scalar nor a field of this grid's shape."""
        shape = tuple(np.shape(field))
        if allow_scalar and shape == ():
            return
        if shape != self.shape:
            raise GridMismatchError(
                f"{name} has shape {shape} but the grid has shape {self.shape}; "
                f"give a {'scalar or a ' if allow_scalar else ''}field of shape {self.shape}."
            )


def _check_boundaries(boundaries, ndim: int) -> tuple[AbstractBoundary, ...]:
    if isinstance(boundaries, AbstractBoundary):
        boundaries = (boundaries,) * ndim
    boundaries = tuple(boundaries)
    if len(boundaries) != ndim or not all(isinstance(b, AbstractBoundary) for b in boundaries):
        raise InputError(f"give one boundary (Periodic(), Neumann(), Dirichlet(v) or Open()) per axis: {ndim} of them.")
    return boundaries


def _check_mask(mask, shape: tuple[int, ...], note: str = "") -> bytes | None:
    """The mask in hashable static form (bytes of a bool array), or None when absent or all True."""
    if mask is None:
        return None
    if isinstance(mask, jax.core.Tracer):
        raise InputError("the domain mask must be a concrete array (not traced); build the grid outside jit.")
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise InputError(
            f"the domain mask has shape {arr.shape} but the grid has shape {shape}; give one entry per cell "
            f"(True = active/sea, False = masked/land){note}."
        )
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)) or not np.all(
            (arr == 0) | (arr == 1)
        ):
            raise InputError(
                f"the domain mask must be boolean (True = active/sea, False = land); got dtype {arr.dtype}. "
                "From a field with NaN on land use np.isfinite(field)."
            )
        arr = arr.astype(bool)
    if not arr.any():
        raise InputError(
            "the domain mask has no active cell: True marks the cells to keep (sea). "
            "If you passed a land mask, pass its negation (~land)."
        )
    if arr.all():
        return None
    return np.ascontiguousarray(arr).tobytes()


def _expand(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)


class CartesianGrid(AbstractGrid):
    """Uniform Cartesian grid in 1-D (x) or 2-D (y, x) with cell-centred unknowns.

    `mask` (optional, bool of `shape`): True on active cells; faces beside masked cells are closed.
    """

    _shape: tuple[int, ...] = eqx.field(static=True)
    lengths: tuple[float, ...] = eqx.field(static=True)
    _boundaries: tuple[AbstractBoundary, ...] = eqx.field(static=True)
    origin: tuple[float, ...] = eqx.field(static=True)
    _mask: bytes | None = eqx.field(static=True)

    def __init__(
        self,
        shape,
        lengths,
        boundaries: AbstractBoundary | Sequence[AbstractBoundary] = Periodic(),
        origin=None,
        mask=None,
    ):
        shape = tuple(int(n) for n in np.atleast_1d(shape))
        lengths = tuple(float(v) for v in np.atleast_1d(lengths))
        if len(shape) not in (1, 2):
            raise InputError(f"a CartesianGrid is 1-D or 2-D; got shape {shape}.")
        if len(lengths) != len(shape):
            raise InputError(f"give one length per axis: shape {shape} but lengths {lengths}.")
        if any(n < 3 for n in shape):
            raise InputError(f"every axis needs at least 3 cells; got shape {shape}.")
        if any(not np.isfinite(v) or v <= 0 for v in lengths):
            raise InputError(f"domain lengths must be positive and finite; got {lengths}.")
        self._shape = shape
        self.lengths = lengths
        self._boundaries = _check_boundaries(boundaries, len(shape))
        self.origin = tuple(float(v) for v in (origin if origin is not None else (0.0,) * len(shape)))
        self._mask = _check_mask(mask, shape)

    def with_mask(self, mask):
        return CartesianGrid(self._shape, self.lengths, self._boundaries, self.origin, mask)

    @property
    def shape(self):
        return self._shape

    @property
    def boundaries(self):
        return self._boundaries

    @property
    def dims(self) -> tuple[str, ...]:
        return ("x",) if len(self._shape) == 1 else ("y", "x")

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(L / n for L, n in zip(self.lengths, self._shape))

    def coords(self):
        return {
            d: o + (np.arange(n) + 0.5) * h for d, o, n, h in zip(self.dims, self.origin, self._shape, self.spacing)
        }

    def cell_volume(self):
        return np.asarray(np.prod(self.spacing))

    def face_area(self, axis):
        h = self.spacing
        return self._close_masked_faces(np.asarray(np.prod([h[a] for a in range(self.ndim) if a != axis])), axis)

    def face_distance(self, axis):
        return np.asarray(self.spacing[axis])


class LatLonGrid(AbstractGrid):
    """Regular latitude-longitude grid on a sphere (lat, lon), with metric terms and polar caps.

    `mask` (optional, bool of shape (lat, lon)): True on active (sea) cells; faces beside masked
    cells are closed coasts. With `ExcludedPoles()` give it for the rows that remain (polar rows dropped).
    """

    lat: tuple[float, ...] = eqx.field(static=True)
    lon: tuple[float, ...] = eqx.field(static=True)
    radius: float = eqx.field(static=True)
    _boundaries: tuple[AbstractBoundary, ...] = eqx.field(static=True)
    poles: AbstractPoles = eqx.field(static=True)
    _mask: bytes | None = eqx.field(static=True)

    def __init__(
        self,
        lat,
        lon,
        radius=EARTH_RADIUS,
        boundaries: AbstractBoundary | Sequence[AbstractBoundary] | None = None,
        poles: AbstractPoles = ClosedPoles(),
        mask=None,
    ):
        lat = np.asarray(lat, dtype=float)
        lon = np.asarray(lon, dtype=float)
        if lat.ndim != 1 or lon.ndim != 1 or lat.size < 3 or lon.size < 3:
            raise InputError("lat and lon must be 1-D with at least 3 points each.")
        dlat, dlon = np.diff(lat), np.diff(lon)
        if not (np.allclose(dlat, dlat[0]) and dlat[0] > 0):
            raise InputError("latitudes must be regularly spaced and increasing (reverse north-to-south data first).")
        if not (np.allclose(dlon, dlon[0]) and dlon[0] > 0):
            raise InputError("longitudes must be regularly spaced and increasing.")
        if lat[0] < -90 - 1e-9 or lat[-1] > 90 + 1e-9:
            raise InputError(f"latitudes must lie in [-90, 90]; got {lat[0]}..{lat[-1]}.")
        if not radius > 0:
            raise InputError(f"the sphere's radius must be positive; got {radius}.")
        if isinstance(poles, ExcludedPoles):
            lat = lat[np.abs(np.abs(lat) - 90.0) > 1e-9]
        global_lon = abs(dlon[0] * lon.size - 360.0) < 1e-6
        if boundaries is None:
            boundaries = (Neumann(), Periodic() if global_lon else Neumann())
        boundaries = _check_boundaries(boundaries, 2)
        if isinstance(boundaries[1], Periodic) and not global_lon:
            raise InputError("a periodic longitude axis needs longitudes that cover 360 degrees.")
        if isinstance(boundaries[0], Periodic):
            raise InputError("the latitude axis cannot be periodic; use Neumann(), Dirichlet(v) or Open().")
        self.lat = tuple(float(v) for v in lat)
        self.lon = tuple(float(v) for v in lon)
        self.radius = float(radius)
        self._boundaries = boundaries
        self.poles = poles
        note = (
            " (ExcludedPoles: for the rows that remain, polar rows dropped)" if isinstance(poles, ExcludedPoles) else ""
        )
        self._mask = _check_mask(mask, self.shape, note)

    def with_mask(self, mask):
        return LatLonGrid(self.lat, self.lon, self.radius, self._boundaries, self.poles, mask)

    @property
    def shape(self):
        return (len(self.lat), len(self.lon))

    @property
    def boundaries(self):
        return self._boundaries

    @property
    def dims(self) -> tuple[str, ...]:
        return ("lat", "lon")

    def coords(self):
        return {"lat": np.asarray(self.lat), "lon": np.asarray(self.lon)}

    @property
    def dlat(self) -> float:
        return float(np.deg2rad(self.lat[1] - self.lat[0]))

    @property
    def dlon(self) -> float:
        return float(np.deg2rad(self.lon[1] - self.lon[0]))

    def _lat_faces(self) -> np.ndarray:
        """Latitudes (radians) of the n+1 faces between rows, clipped to the poles."""
        phi = np.deg2rad(np.asarray(self.lat))
        faces = np.concatenate([[phi[0] - self.dlat / 2], phi + self.dlat / 2])
        return np.clip(faces, -np.pi / 2, np.pi / 2)

    def mean_cos_lat(self) -> np.ndarray:
        """Area-weighted mean of cos(latitude) over each row of cells (positive on polar caps)."""
        f = self._lat_faces()
        return (np.sin(f[1:]) - np.sin(f[:-1])) / (f[1:] - f[:-1])

    def cell_volume(self):
        f = self._lat_faces()
        area = self.radius**2 * self.dlon * (np.sin(f[1:]) - np.sin(f[:-1]))
        return _expand(area, 0, 2)

    def face_area(self, axis):
        f = self._lat_faces()
        if axis == 0:  # faces between rows: arcs of latitude circles (exactly zero on a pole)
            area = _expand(self.radius * np.where(np.abs(f) >= np.pi / 2, 0.0, np.cos(f)) * self.dlon, 0, 2)
        else:
            area = _expand(self.radius * (f[1:] - f[:-1]), 0, 2)  # meridional arcs
        return self._close_masked_faces(area, axis)

    def face_distance(self, axis):
        if axis == 0:
            return np.asarray(self.radius * self.dlat)
        return _expand(self.radius * self.mean_cos_lat() * self.dlon, 0, 2)
