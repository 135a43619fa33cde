"""Case-file sections of data-driven cases: field sources, the sample dataset, the grid from data, climatology B.

Each section is a pydantic class that checks itself and builds its object: `FieldSourceConfig.build()`
gives an `assim.io.sources.FieldSource`; `DataConfig` names the dataset whose samples are the case's truths
(the window, the climatology, the training samples); `ClimatologyB` is the background and B estimated
from the climatology samples. xarray stays in `assim.io.sources`; these classes hold and check settings only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from assim.case.schema.base import Strict
from assim.errors import ConfigError

PACKAGE_PREFIX = "package:"


def package_file(spec: str) -> str:
    """Path of `package:NAME/relative/path`, a data file shipped inside an installed Python package."""
    rest = spec.removeprefix(PACKAGE_PREFIX)
    package, _, relative = rest.partition("/")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"{spec}: no installed package {package!r}; install it (pip install {package}) "
                          "or give the file's path")  # fmt: skip
    for root in found.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return str(path)
    raise ConfigError(f"{spec}: the installed package {package!r} has no file {relative!r}; check the path "
                      f"or reinstall {package}")  # fmt: skip


def resolve_path(text: str, base: Path) -> str:
    """A case file's path: `package:NAME/...` inside an installed package, else relative to the case file."""
    if text.startswith(PACKAGE_PREFIX):
        return package_file(text)
    return str(base / Path(text).expanduser())  # an absolute path stays as it is


class FieldSourceConfig(Strict):
    """A field from a file: variable, label (`sel`) and index (`isel`) selections, coordinate ranges (`subset`),
    block-mean coarsening, the mean over leftover dimensions (`mean`), units (converted to what the model needs;
    `assume_units` where the file names none) and a scale factor. `file` may be `package:NAME/path`."""

    file: str = Field(min_length=1)
    variable: str = Field(min_length=1)
    sel: dict[str, Any] = {}
    isel: dict[str, Any] = {}
    subset: dict[str, list[Any]] = {}
    coarsen: int | dict[str, int] = 1
    mean: list[str] = []
    assume_units: str | None = None
    scale: float = 1.0

    @model_validator(mode="after")
    def _ranges(self):
        for key, bounds in self.subset.items():
            if len(bounds) != 2:
                raise ValueError(f"subset.{key} needs [low, high] (got {bounds})")
        if len(set(self.mean)) != len(self.mean):  # numpy: "duplicate value in 'axis'" (found by the fuzzer)
            raise ValueError(f"mean names a dimension twice (got {self.mean}); list each dimension once")
        factors = self.coarsen.values() if isinstance(self.coarsen, dict) else [self.coarsen]
        if any(int(f) < 1 for f in factors):
            raise ValueError(f"coarsen must be a positive integer (got {self.coarsen})")
        return self

    def build(self, units: str | None = None):
        """The `assim.io.sources.FieldSource` of this table, asking for `units`."""
        from assim.io.sources import FieldSource

        return FieldSource(path=self.file, variable=self.variable, sel=dict(self.sel), isel=dict(self.isel),
                           subset=dict(self.subset), coarsen=self.coarsen, units=units,
                           assume_units=self.assume_units, scale=self.scale)  # fmt: skip


class WindConfig(Strict):
    """Advection winds from files: eastward `u` and northward `v` (m s-1 on a latitude-longitude grid).

    A variable that keeps a time dimension (after sel, isel, mean) gives a time-varying wind, linear between its
    times, which must cover the window: dates as seconds since a [data] window's start, numbers as model time
    since the window start. `steady = true` takes each as one field (select or average its time).
    """

    u: FieldSourceConfig
    v: FieldSourceConfig
    steady: bool = False

    def check(self, path: str, case, fail) -> None:
        """Time-varying winds cover a window without a date (a [data] window is checked when the model is built)."""
        if self.steady or case.data is not None:
            return
        from assim.io.field_series import check_covers, source_times

        for c in ("u", "v"):
            source = getattr(self, c)
            if Path(source.file).exists():  # a missing file is reported when the model is built
                times = source_times(source, None, f"{path}.{c}")
                if times is not None:
                    check_covers(times, case.time.n_steps * case.time.dt, f"{path}.{c} ({source.file})")

    def build(self, grid, provenance: dict | None = None, start=None, length: float | None = None):
        """(wind components per grid axis, sample times or None when steady); `start`, `length`: the window."""
        import numpy as np

        from assim.io.field_series import check_covers, field_series_on_grid
        from assim.io.sources import field_on_grid

        units = "m s-1" if tuple(grid.dims) == ("lat", "lon") else None
        out, times = [], []
        for c in ("v", "u")[-grid.ndim :]:  # one component per grid axis: northward (lat / y), eastward (lon / x)
            what, source = f"model.wind.{c}", getattr(self, c)
            if self.steady:
                (values, how), t = field_on_grid(source, grid, units, what), None
            else:
                values, t, how = field_series_on_grid(source, grid, units, what, start)
            if t is not None and length is not None:
                check_covers(t, length, f"{what} ({source.file})")
            how["missing_set_calm"] = int(np.sum(~np.isfinite(values)))
            out.append(values)
            times.append(t)
            if provenance is not None:
                provenance[f"wind_{c}"] = how
        if len({None if t is None else tuple(t) for t in times}) > 1:
            raise ConfigError("model.wind: u and v must share their times (or both be steady); give both on the "
                              "same time axis")  # fmt: skip
        return tuple(out), times[0]


class SampleSelection(Strict):
    """Samples along the dataset dimension: by `index` range [i0, i1), by `labels`, or by a label range."""

    index: list[int] | None = None
    labels: list[Any] | None = None
    start: Any = None
    stop: Any = None

    @model_validator(mode="after")
    def _one(self):
        given = [self.index is not None, self.labels is not None, self.start is not None or self.stop is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of index = [i0, i1], labels = [...], or start/stop labels")
        if self.index is not None and (len(self.index) != 2 or not 0 <= self.index[0] < self.index[1]):
            raise ValueError(f"index must be [i0, i1] with 0 ≤ i0 < i1 (got {self.index})")
        return self

    def as_dict(self) -> dict:
        """The selection as `assim.io.sources.samples` takes it."""
        if self.index is not None:
            return {"index": list(self.index)}
        if self.labels is not None:
            return {"labels": list(self.labels)}
        return {"start": self.start, "stop": self.stop}


class DataConfig(Strict):
    """The dataset whose samples are the case's truths (a twin experiment on real fields).

    `field` is the state variable with a sample `dimension` (time, winter, member). `window` picks the case's own
    sample (an index, or a label such as "2010-01"); training windows (sample i ≥ 1) take the i-th sample of
    `samples` (default: every sample), or named disjoint `train`, `validation` and `test` selections that
    `assim train`, `discover` and `sweep` draw their windows from; the background and B come from the
    `climatology` samples (mean and spread).
    `grid = "data"`: the model grid is the field's own coordinates; NaN in every climatology sample (land) becomes
    the domain mask when `mask` is true. `boundaries` per axis (lat/y, lon/x): periodic | closed | open.
    """

    field: FieldSourceConfig
    dimension: str = Field("time", min_length=1)
    window: int | str
    samples: SampleSelection | None = None
    train: SampleSelection | None = None
    validation: SampleSelection | None = None
    test: SampleSelection | None = None
    climatology: SampleSelection
    mask: bool = True
    boundaries: list[Literal["periodic", "closed", "open"]] | None = None
    poles: Literal["closed", "excluded"] = "closed"
    units: str | None = None  # the state's units, where the file names none (else its `units` attribute)

    @model_validator(mode="after")
    def _window(self):
        if isinstance(self.window, int) and self.window < 0:
            raise ValueError(f"window must be an index ≥ 0 or a label (got {self.window})")
        splits = [s is not None for s in (self.train, self.validation, self.test)]
        if any(splits) and not all(splits):
            raise ValueError("give all three of train, validation and test sample selections, or none")
        if all(splits) and self.samples is not None:
            raise ValueError("samples and train/validation/test both choose the training windows; give one of them")
        if self.boundaries is not None and len(self.boundaries) not in (1, 2):
            raise ValueError(f"boundaries needs one entry per grid axis (got {self.boundaries})")
        return self


class ClimatologyB(Strict):
    """Background and B from the [data] climatology samples: their mean, spread and correlation length.

    σ² = `variance_scale` × spread²; correlations by M implicit diffusion steps of `length_scale` (grid length
    units: metres on a sphere), or `"estimate"`: the Gaussian fitted to the samples' anomaly correlations
    (`assim.io.statistics.correlation_length`). `sigma`: σ from a field source instead of the climatology spread
    (the state's units, a file naming none means them; > 0 on active cells): σ² = `variance_scale` × sigma².
    """

    kind: Literal["climatology"]
    length_scale: float | Literal["estimate"] = "estimate"
    sigma: FieldSourceConfig | None = None
    variance_scale: float = Field(1.0, gt=0)
    n_iterations: int = Field(10, ge=2)
    normalisation_samples: int = Field(100, ge=1)

    def check(self, path: str, case, fail) -> None:
        """A climatology needs the samples of a [data] table."""
        if case.data is None:
            fail(f"{path}.kind", "climatology needs a [data] table whose samples give the mean and spread; "
                 "add [data] or use spectral_gaussian, diffusion or diagonal")  # fmt: skip

    @model_validator(mode="after")
    def _positive(self):
        if not isinstance(self.length_scale, str) and not self.length_scale > 0:
            raise ValueError(f"length_scale must be > 0 or 'estimate' (got {self.length_scale})")
        if self.n_iterations % 2:
            raise ValueError(f"n_iterations must be even (got {self.n_iterations})")
        return self


def file_tables(data: dict) -> list[dict]:
    """Every table of a raw case that has a string `file` key (sources, grid, observations, background)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str) and node["file"]:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return found


__all__ = ["ClimatologyB", "DataConfig", "FieldSourceConfig", "SampleSelection", "WindConfig",
           "file_tables", "package_file", "resolve_path"]  # fmt: skip
