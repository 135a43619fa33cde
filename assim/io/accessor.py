"""`ds.assim`: verification statistics of an `assim run` dataset (xarray accessor, registered on import).

ds.assim.rmse("analysis")                 # RMSE against `truth`, per time (or window)
ds.assim.rmse("analysis", dim=None)       # one number over everything
ds.assim.bias("background", reference="truth")
ds.assim.innovation_statistics()          # mean, std, RMS and χ²/n of y − H(x_b) and y − H(x_a)
"""

from __future__ import annotations

from typing import cast

import numpy as np
import xarray as xr

from assim.errors import InputError


@xr.register_dataset_accessor("assim")
class AssimAccessor:
    """Error and innovation statistics of an assimilation dataset."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    def _pair(self, variable: str, reference: str) -> tuple[xr.DataArray, xr.DataArray]:
        ds = self._ds
        for name in (variable, reference):
            if name not in ds:
                raise InputError(
                    f"no variable {name!r} in the dataset; choose one of {sorted(map(str, ds.data_vars))}."
                )
        x, ref = ds[variable], ds[reference]
        if "window" in x.dims and "time" in ref.dims:  # cycling: compare window starts with the truth at those times
            ref = ref.sel(time=ds["window_time"], method="nearest").drop_vars(["time", "step"], errors="ignore")
            ref = ref.rename({"window_time": "window"}) if "window_time" in ref.dims else ref
        if "filter_time" in x.dims and "time" in ref.dims:  # cycling, filter convention: latest observation times
            ref = ref.sel(time=ds["filter_time"], method="nearest").drop_vars(["time", "step"], errors="ignore")
        return x, ref

    def _space_dims(self, x: xr.DataArray) -> list[str]:
        return [str(d) for d in x.dims if d not in ("time", "window", "filter_time")]

    def error(self, variable: str, reference: str = "truth") -> xr.DataArray:
        """Error field variable − reference."""
        x, ref = self._pair(variable, reference)
        return x - ref

    def rmse(self, variable: str, reference: str = "truth", dim: str | list[str] | None = "space") -> xr.DataArray:
        """Root-mean-square error; `dim="space"` reduces over the spatial dims (one value per time/window)."""
        err = self.error(variable, reference)
        dims = self._space_dims(err) if dim == "space" else dim
        return cast(xr.DataArray, np.sqrt((err**2).mean(dim=dims))).rename(f"{variable}_rmse")  # a DataArray ufunc

    def bias(self, variable: str, reference: str = "truth", dim: str | list[str] | None = "space") -> xr.DataArray:
        """Mean error; `dim="space"` reduces over the spatial dims."""
        err = self.error(variable, reference)
        dims = self._space_dims(err) if dim == "space" else dim
        return err.mean(dim=dims).rename(f"{variable}_bias")

    def innovation_statistics(self, sigma: float | None = None) -> dict[str, float]:
        """Mean, standard deviation, RMS and χ²/n = mean((d/σ)²) of innovations and analysis residuals."""
        ds = self._ds
        if "obs_innovation" not in ds:
            raise InputError("the dataset holds no observations (obs_innovation); is it an `assim run` output?")
        if sigma is None:
            if "metric_observation_noise" not in ds.attrs:
                raise InputError("pass sigma=: the dataset does not record the observation noise.")
            sigma = float(ds.attrs["metric_observation_noise"])
        out = {}
        for name, key in (("innovation", "obs_innovation"), ("residual", "obs_residual")):
            d = ds[key].values
            d = d[np.isfinite(d)]
            out[f"{name}_mean"] = float(d.mean())
            out[f"{name}_std"] = float(d.std())
            out[f"{name}_rms"] = float(np.sqrt(np.mean(d**2)))
            out[f"{name}_chi2"] = float(np.mean((d / sigma) ** 2))
        out["n"] = int(np.isfinite(ds["obs_innovation"].values).sum())  # masked observations are NaN
        return out
