"""Case-file [observations]: synthetic networks (a tagged union) or observations read from a file."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from assim.case.schema.base import Strict as _Strict


def _centres(grid):
    import numpy as np

    return np.stack([a.reshape(-1) for a in np.meshgrid(*grid.coords().values(), indexing="ij")], axis=-1)


class RandomFraction(_Strict):
    """A random fraction of the grid cells, observed at cell centres."""

    kind: Literal["random_fraction"]
    fraction: float = Field(gt=0, le=1)

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

    def build(self, grid, key, component=None):
        """Refused: stations and tracks are drawn as a table of the truth ([data] cases, assim.case.synthetic_networks)."""
        from assim.errors import ConfigError

        raise ConfigError("observations.network.kind: stations_and_tracks is drawn for a [data] case; use "
                          "random_fraction, stations or regular on a [grid]")  # fmt: skip


NetworkConfig = Annotated[Union[RandomFraction, Stations, Regular, StationsAndTracks], Field(discriminator="kind")]


class ObservationsConfig(_Strict):
    """A synthetic network observing every `every` steps with Gaussian noise σ = `noise`; `seed` drives all draws.

    Or `file`: observations read from a CF netCDF file (assim.io.observation_files; errors from its
    `error` variable, replaced by σ = `noise` where given); such a case has no truth.
    """

    network: NetworkConfig | None = None
    every: int = Field(1, ge=1)
    noise: float | None = Field(None, gt=0)
    seed: int = 0
    file: str | None = Field(None, min_length=1)
