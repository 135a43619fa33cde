"""Case-file [observations]: synthetic networks (a tagged union) or observations read from a file."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from assim.case.schema.base import Strict as _Strict


def _cartesian(case):
    """The [grid] table of a case whose grid is a regular n^ndim box (None for a grid from a file or [data])."""
    return case.grid if case.grid is not None and case.grid.file is None else None


def _centres(grid):
    import numpy as np

    return np.stack([a.reshape(-1) for a in np.meshgrid(*grid.coords().values(), indexing="ij")], axis=-1)


class RandomFraction(_Strict):
    """A random fraction of the grid cells, observed at cell centres."""

    kind: Literal["random_fraction"]
    fraction: float = Field(gt=0, le=1)

    def check(self, path: str, case, fail) -> None:
        """At least one observed cell."""
        g = _cartesian(case)
        if g is not None and int(self.fraction * g.n**g.ndim) < 1:
            fail(f"{path}.fraction", f"observes no cell of the {g.n}^{g.ndim} grid; raise it")

    def build(self, grid, key, component=None):
        """Observation operator of the network and the coordinates of its observed points."""
        import jax
        import numpy as np

        from assim.observations.operators import GriddedObservation

        cells = np.sort(np.asarray(jax.random.choice(key, grid.size, (int(self.fraction * grid.size),), replace=False)))
        return GriddedObservation(grid, cells, component), _centres(grid)[cells]


class Stations(_Strict):
    """Stations at random points in the domain (bilinear interpolation), or at the given points."""

    kind: Literal["stations"]
    count: int = Field(8, ge=1)
    points: list[list[float]] | None = None

    def check(self, path: str, case, fail) -> None:
        """Given stations lie inside the domain of a [grid] box."""
        import math

        g = _cartesian(case)
        if g is None or self.points is None:
            return
        length = g.length if g.length is not None else 1.0
        for i, p in enumerate(self.points):
            if len(p) != g.ndim or not all(0 <= c <= length and math.isfinite(c) for c in p):
                fail(f"{path}.points.{i}", f"a station needs {g.ndim} coordinates inside [0, {length}] (got {p})")

    def build(self, grid, key, component=None):
        """Observation operator of the network and the coordinates of its stations."""
        import jax
        import numpy as np

        from assim.observations.operators import StationObservation

        if self.points is not None:
            points = np.asarray(self.points, dtype=float)
        else:
            unit = np.asarray(jax.random.uniform(key, (self.count, grid.ndim)))
            points = np.asarray(grid.origin) + unit * np.asarray(grid.lengths)
        return StationObservation(grid, points, component), points


class Regular(_Strict):
    """Every k-th cell along each axis."""

    kind: Literal["regular"]
    spacing: int = Field(ge=1)

    def check(self, path: str, case, fail) -> None:
        """A spacing no wider than the grid."""
        g = _cartesian(case)
        if g is not None and self.spacing > g.n:
            fail(f"{path}.spacing", f"must be ≤ grid.n = {g.n} (got {self.spacing})")

    def build(self, grid, key, component=None):
        """Observation operator of the network and the coordinates of its observed points."""
        import numpy as np

        from assim.observations.operators import GriddedObservation

        mask = np.zeros(grid.shape, bool)
        mask[(slice(None, None, self.spacing),) * grid.ndim] = True
        cells = np.flatnonzero(mask)
        return GriddedObservation(grid, cells, component), _centres(grid)[cells]


class StationsAndTracks(_Strict):
    """Random stations reporting at every observation time plus one satellite pass per time (2-D grids).

    A pass runs south to north over `track_points` points, tilted `track_tilt` degrees from the
    meridian, and moves `track_shift` degrees of longitude between observation times.
    """

    kind: Literal["stations_and_tracks"]
    stations: int = Field(30, ge=1)
    track_points: int = Field(12, ge=2)
    track_shift: float = 25.0
    track_tilt: float = Field(20.0, gt=-80, lt=80)

    def check(self, path: str, case, fail) -> None:
        """Drawn as a table of a [data] truth."""
        if case.data is None:
            fail(f"{path}.kind", "stations_and_tracks is drawn for a [data] case; use random_fraction, stations "
                 "or regular on a [grid]")  # fmt: skip

    def build(self, grid, key, component=None):
        """Refused: stations and tracks are drawn as a table of the truth ([data] cases, assim.case.synthetic_networks)."""
        from assim.errors import ConfigError

        raise ConfigError("observations.network.kind: stations_and_tracks is drawn for a [data] case; use "
                          "random_fraction, stations or regular on a [grid]")  # fmt: skip


NetworkConfig = Annotated[Union[RandomFraction, Stations, Regular, StationsAndTracks], Field(discriminator="kind")]


class ObservationsConfig(_Strict):
    """A synthetic network observing every `every` steps with Gaussian noise σ = `noise`; `seed` drives all draws.

    Or `file`: observations read from a CF netCDF file, or a list of files (assim.io.observation_files;
    errors from each file's `error` variable, replaced by σ = `noise` where given); such a case has no
    truth. Each file is one observation set of the window: a shallow-water case may read η from one
    file and u from another (each file's `component` attribute or column names what it observes).
    """

    network: NetworkConfig | None = None
    every: int = Field(1, ge=1)
    noise: float | None = Field(None, gt=0, allow_inf_nan=False)
    seed: int = 0
    file: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
        | None
    ) = None

    def check(self, path: str, case, fail) -> None:
        """A synthetic network observes within the window; its own checks against the grid."""
        if self.file is not None:
            return
        if self.every > case.time.n_steps:
            fail(f"{path}.every", f"must be ≤ time.n_steps = {case.time.n_steps} (got {self.every}); "
                 "observe more often")  # fmt: skip
        if self.network is not None:
            self.network.check(f"{path}.network", case, fail)
