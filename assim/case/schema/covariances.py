"""Case-file [background] sections: B kinds (spectral, diffusion, diagonal, climatology of [data] samples)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from assim.case.schema.base import Strict as _Strict
from assim.case.schema.data import ClimatologyB


class SpectralB(_Strict):
    """Homogeneous Gaussian correlations by FFT (periodic grids).

    `variance` is σ_b² of the state (shallow water: of η); `velocity_variance` that of u and v
    (shallow water only; default: `variance`).
    """

    kind: Literal["spectral_gaussian"]
    variance: float = Field(gt=0, allow_inf_nan=False)
    velocity_variance: float | None = Field(None, gt=0, allow_inf_nan=False)
    length_scale: float = Field(gt=0, allow_inf_nan=False)
    file: str | None = Field(None, min_length=1)  # x_b from a netCDF file (observations.file cases)

    def check(self, path: str, case, fail) -> None:
        """FFT correlations need a periodic grid."""
        if case.grid is not None and case.grid.boundary != "periodic":
            fail(f"{path}.kind", "spectral_gaussian needs grid.boundary = 'periodic'; use kind = 'diffusion'")

    def build(self, grid, variance: float):
        """B of one field of variance σ² on the grid."""
        from assim.covariances.covariance import SpectralGaussianCovariance

        return SpectralGaussianCovariance(grid, variance, self.length_scale)


class DiffusionB(_Strict):
    """Correlations by M implicit diffusion steps (any boundary)."""

    kind: Literal["diffusion"]
    variance: float = Field(gt=0, allow_inf_nan=False)
    velocity_variance: float | None = Field(None, gt=0, allow_inf_nan=False)
    length_scale: float = Field(gt=0, allow_inf_nan=False)
    n_iterations: int = Field(10, ge=2)
    file: str | None = Field(None, min_length=1)  # x_b from a netCDF file (observations.file cases)

    def build(self, grid, variance: float):
        """B of one field of variance σ² on the grid (exact normalisation up to 2-D)."""
        import jax
        import lineax as lx

        from assim.covariances.diffusion import (
            DiffusionCovariance,
            ExactNormalisation,
            RandomisedNormalisation,
        )

        norm = ExactNormalisation() if grid.ndim <= 2 else RandomisedNormalisation(jax.random.PRNGKey(0))
        return DiffusionCovariance(grid, variance, self.length_scale, self.n_iterations, norm,
                                   lx.CG(rtol=1e-10, atol=1e-10))  # fmt: skip


class DiagonalB(_Strict):
    """Uncorrelated background errors."""

    kind: Literal["diagonal"]
    variance: float = Field(gt=0, allow_inf_nan=False)
    velocity_variance: float | None = Field(None, gt=0, allow_inf_nan=False)
    file: str | None = Field(None, min_length=1)  # x_b from a netCDF file (observations.file cases)

    def build(self, grid, variance: float):
        """B of one field of variance σ² on the grid."""
        from assim.covariances.covariance import DiagonalCovariance

        return DiagonalCovariance(grid, variance)


BackgroundConfig = Annotated[Union[SpectralB, DiffusionB, DiagonalB, ClimatologyB], Field(discriminator="kind")]
