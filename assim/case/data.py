"""Twin experiments on real fields: any dataset with a sample dimension, any tracer model, through one path.

A case with a [data] table takes its grid from the data field's coordinates (latitude-longitude or
Cartesian, recognised by CF attributes), its domain mask from NaN in every climatology sample (land),
its truth from one sample of the dataset (the window; training windows from further samples), its
background and B from the climatology samples (mean, spread, and a fitted or given correlation
length), and model fields (winds) from other files interpolated onto the grid. Synthetic station and
track observations of the truth are written as a CF point table and read back through the netCDF
reader, so a real-data case and a twin share the reading path; with observations.file the case reads
real observations instead (no truth: innovation/residual χ² only). Nothing here names a dataset.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import xarray as xr

from assim.case.config import Case
from assim.case.experiment import Experiment, make_solver
from assim.case.parameters import check_parameter_names, truth_model
from assim.case.schema import ClimatologyB
from assim.case.synthetic_networks import positions, synthetic_table
from assim.covariances.covariance import AbstractBackgroundCovariance, MaskedCovariance
from assim.covariances.diffusion import DiffusionCovariance, RandomisedNormalisation
from assim.errors import ConfigError
from assim.io.observation_files import read_observations, write_observation_table
from assim.io.sources import (
    domain_mask,
    grid_from_source,
    horizontal,
    open_source,
    samples,
)
from assim.io.statistics import climatology, correlation_length
from assim.problems.twin import TwinExperiment
from models.base import AbstractModel
from models.grid import (
    AbstractGrid,
    ClosedPoles,
    ExcludedPoles,
    Neumann,
    Open,
    Periodic,
)
from models.rollout import rollout
from models.time_schemes import BackwardEuler, CrankNicolson

SCHEMES = {"backward_euler": BackwardEuler(), "crank_nicolson": CrankNicolson()}
BOUNDARIES = {"periodic": Periodic(), "closed": Neumann(), "open": Open()}
_rollout = eqx.filter_jit(rollout)


@dataclass(frozen=True)
class Dataset:
    """The case's samples on its grid: every sample (NaN where missing), the climatology and the domain mask."""

    grid: AbstractGrid
    values: np.ndarray  # (sample, *grid) of the `samples` selection, NaN where missing
    labels: tuple[str, ...]  # label of each sample (dates as ISO strings)
    dates: tuple[np.datetime64 | None, ...]  # np.datetime64 of each sample, or None where the dimension holds no dates
    window: np.ndarray  # the case's own sample on the grid
    window_label: str
    window_date: np.datetime64 | None
    mean: np.ndarray  # climatology mean (filled where every sample misses a value)
    spread: np.ndarray  # climatology standard deviation
    anomalies: xr.DataArray  # climatology samples minus their mean (for the correlation-length estimate)
    attrs: dict  # the state variable's name, units, standard_name, long_name
    provenance: dict
    splits: dict = dataclass_field(default_factory=dict)  # "train"/"validation"/"test" → window samples (1-based)


def _labels(coord: xr.DataArray) -> tuple[list[str], list[np.datetime64 | None]]:
    values = np.asarray(coord.values)
    if np.issubdtype(values.dtype, np.datetime64):
        return list(np.datetime_as_string(values, unit="s")), [np.datetime64(v, "s") for v in values]
    return [str(v) for v in values], [None] * values.size


def _pick(da: xr.DataArray, dim: str, window, path: str) -> int:
    """Index along `dim` of the window: an index, or the one label that starts with the given text."""
    labels, _ = _labels(da[dim]) if dim in da.coords else ([str(i) for i in range(da.sizes[dim])], None)
    if isinstance(window, int):
        if window >= da.sizes[dim]:
            raise ConfigError(f"data.window: index {window} is past the {da.sizes[dim]} samples of {path}; "
                              f"use 0..{da.sizes[dim] - 1}")  # fmt: skip
        return window
    hits = [i for i, label in enumerate(labels) if label.startswith(str(window))]
    if len(hits) != 1:
        raise ConfigError(f"data.window: {window!r} matches {len(hits)} samples of {path} along {dim!r} "
                          f"({labels[0]} … {labels[-1]}); give a label that matches exactly one, or an index")  # fmt: skip
    return hits[0]


@functools.lru_cache(maxsize=8)
def _load(data_json: str) -> Dataset:
    from assim.case.schema import DataConfig

    d = DataConfig.model_validate_json(data_json)
    src = d.field.build(units=None)
    da = horizontal(open_source(src))
    if d.field.mean:
        da = da.mean(d.field.mean, skipna=True, keep_attrs=True)
    dim = d.dimension
    if dim not in da.dims:
        raise ConfigError(f"data.dimension: {src.path} variable {src.variable!r} has no dimension {dim!r} "
                          f"(dims {da.dims}); name its sample dimension")  # fmt: skip
    da = da.transpose(dim, ...)
    clim = samples(da, dim, d.climatology.as_dict())
    mean, spread = climatology(clim, dim)
    mask = domain_mask(clim, rule="all") if d.mask else None
    if mask is not None and mask.all():
        mask = None
    grid = grid_from_source(da.isel({dim: 0}), boundaries=_boundaries_of(d, da),
                            poles=ExcludedPoles() if d.poles == "excluded" else ClosedPoles(), mask=mask)  # fmt: skip
    pool, splits = _pool(d, da, dim, src.path)
    index = _pick(da, dim, d.window, src.path)
    labels, dates = _labels(pool[dim]) if dim in pool.coords else ([str(i) for i in range(pool.sizes[dim])],
                                                                      [None] * pool.sizes[dim])  # fmt: skip
    all_labels, all_dates = _labels(da[dim]) if dim in da.coords else ([str(index)], [None] * (index + 1))
    fill = np.where(np.isfinite(mean), mean, np.nanmean(mean))
    spread = np.where(np.isfinite(spread), spread, np.nanmean(spread))
    attrs = {"name": src.variable, "units": da.attrs.get("units", d.units or d.field.assume_units or "1")}
    for key in ("standard_name", "long_name"):
        if key in da.attrs:
            attrs[key] = str(da.attrs[key])
    provenance = {"file": src.path, "variable": src.variable, "dimension": dim, "n_samples": int(pool.sizes[dim]),
                  "climatology_samples": int(clim.sizes[dim]), "window": all_labels[index],
                  "masked_cells": 0 if mask is None else int((~mask).sum())}  # fmt: skip
    if splits:
        provenance["splits"] = {name: [labels[i - 1] for i in s] for name, s in splits.items()}
        test = set(provenance["splits"]["test"])
        clim_labels = set(_labels(clim[dim])[0]) if dim in clim.coords else set()
        provenance["climatology_test_overlap"] = len(test & clim_labels)  # 0: B never saw a test truth
    return Dataset(grid, np.asarray(pool.values, dtype=float), tuple(labels), tuple(dates),
                   np.asarray(da.isel({dim: index}).values, dtype=float), all_labels[index], all_dates[index],
                   fill, spread, clim - mean, attrs, provenance, splits)  # fmt: skip


def _pool(d, da: xr.DataArray, dim: str, path: str) -> tuple[xr.DataArray, dict]:
    """The training pool (`samples`, or train + validation + test in that order) and each split's window samples."""
    if d.train is None:
        return (samples(da, dim, d.samples.as_dict()) if d.samples is not None else da), {}
    if dim not in da.coords:  # positions as labels, so that index selections are checked for overlap too
        da = da.assign_coords({dim: np.arange(da.sizes[dim])})
    parts = {name: samples(da, dim, getattr(d, name).as_dict()) for name in ("train", "validation", "test")}
    seen: dict[str, str] = {}
    window = _labels(da[dim])[0][_pick(da, dim, d.window, path)]
    for name, part in parts.items():
        for label in _labels(part[dim])[0]:
            if label == window:
                raise ConfigError(f"data.{name}: it holds the case's own window {window!r} (data.window); "
                                  "choose a window outside the train/validation/test samples")  # fmt: skip
            if label in seen:
                raise ConfigError(f"data.{name}: sample {label!r} of {path} is also in data.{seen[label]}; "
                                  "make the train, validation and test selections disjoint")  # fmt: skip
            seen[label] = name
    edges = np.cumsum([1] + [p.sizes[dim] for p in parts.values()])
    splits = {name: list(range(int(a), int(b))) for name, a, b in zip(parts, edges, edges[1:])}
    return xr.concat(list(parts.values()), dim=dim), splits


def _boundaries_of(d, da):
    if d.boundaries is None:
        return None
    b = list(d.boundaries)
    ndim = da.ndim - 1
    return tuple(BOUNDARIES[k] for k in (b * ndim if len(b) == 1 else b))


def dataset(case: Case) -> Dataset:
    """The case's dataset on its grid (read once per process for the same [data] table)."""
    assert case.data is not None, "a [data] case"
    return _load(case.data.model_dump_json())


def sample_state(case: Case, data: Dataset, sample: int) -> tuple[np.ndarray, str, np.datetime64 | None]:
    """(state with NaN, label, date) of window `sample`: 0 the case's window, i ≥ 1 the i-th of data.samples."""
    if int(sample) != sample or sample < 0:
        raise ConfigError(f"window sample must be an integer ≥ 0 (got {sample})")
    if sample == 0:
        return data.window, data.window_label, data.window_date
    if sample > data.values.shape[0]:
        raise ConfigError(f"window sample {sample} asks for sample {sample} of {data.values.shape[0]} in "
                          "data.samples; use fewer training/validation/test windows")  # fmt: skip
    return data.values[sample - 1], data.labels[sample - 1], data.dates[sample - 1]


def make_model(case: Case, data: Dataset, start=None) -> tuple[AbstractModel, dict]:
    """The tracer model on the data grid (open boundaries bring the climatology in), and its fields' provenance.

    `start`: the window's date (the case's window by default), where time-varying winds' dates are counted from."""
    provenance = {}
    start = data.window_date if start is None else start
    model, _ = case.model.build(data.grid, case.time.dt, inflow=data.mean, provenance=provenance, start=start,
                                length=case.time.n_steps * case.time.dt)  # fmt: skip
    return model, provenance


def length_scale(case: Case, data: Dataset) -> float:
    """B's correlation length: the case's value, or the Gaussian fitted to the climatology anomalies."""
    b = case.background
    assert isinstance(b, ClimatologyB) and case.data is not None, "a [data] case's B is its climatology (checked)"
    if b.length_scale == "estimate":
        return float(correlation_length(data.anomalies, case.data.dimension, data.grid))
    return float(b.length_scale)


def make_covariance(case: Case, data: Dataset, length: float) -> AbstractBackgroundCovariance:
    """B: σ² = variance_scale × spread² of the climatology (or of background.sigma), diffusion correlations;
    masked cells not controlled. How a σ source reached the grid goes into data.provenance["background_sigma"]."""
    b = case.background
    assert isinstance(b, ClimatologyB), "a [data] case's B is its climatology (checked)"
    spread = data.spread
    data.provenance.pop("background_sigma", None)  # the dataset is cached: no record left from another case
    if b.sigma is not None:
        from assim.io.fields import parameter_field

        spread = parameter_field(b.sigma, data.grid, "background.sigma", units=data.attrs["units"], anomaly=True,
                                 implied=True, provenance=data.provenance, key="background_sigma")  # fmt: skip
    variance = b.variance_scale * spread**2
    variance = np.maximum(variance, 1e-6 * float(np.mean(variance)))
    key = jax.random.fold_in(jax.random.PRNGKey(case.observations.seed), 7919)
    cov = DiffusionCovariance(data.grid, variance, length, b.n_iterations,
                              RandomisedNormalisation(key, b.normalisation_samples),
                              lx.CG(rtol=1e-10, atol=1e-10))  # fmt: skip
    return cov if data.grid.mask is None else MaskedCovariance(cov, data.grid.mask)


def check(case: Case) -> None:
    """Read the data and model fields; construct the model, the truth's model, the solver and the network."""
    data = dataset(case)
    model, _ = make_model(case, data)
    truth_model(case, model)
    if case.discover is not None:
        check_parameter_names(model, case.discover.parameters, "discover.parameters", case.model.kind)
    make_solver(case, grid=data.grid, inflow=data.mean, start=data.window_date)
    if case.observations.file is not None:  # real observations on the data grid
        from assim.case.files import file_observations

        file_observations(case, data.grid, start=data.window_date)
        return
    positions(case, data.grid, jax.random.PRNGKey(case.observations.seed))


def build(case: Case, sample: int = 0) -> Experiment:
    """Experiment of window `sample`: truth from that sample, background = climatology, observations via a CF table."""
    start = time.perf_counter()
    data = dataset(case)
    state, label, date = sample_state(case, data, sample)
    model, provenance = make_model(case, data, date)
    true_model = truth_model(case, model)
    length = length_scale(case, data)
    covariance = make_covariance(case, data, length)
    present = np.isfinite(state) & data.grid.active
    truth0 = np.where(np.isfinite(state), state, data.mean)
    n_steps = case.time.n_steps
    if case.observations.file is not None:  # real observations on the data grid: no truth, χ² diagnostics only
        return _build_from_file(case, data, model, covariance, date, label, length, provenance, start)
    truth = true_model.check_result(_rollout(true_model, jnp.asarray(truth0), n_steps), f"the {n_steps}-step truth run")
    key = jax.random.fold_in(jax.random.PRNGKey(case.observations.seed), int(sample))
    table = synthetic_table(case, data.grid, truth, present, key, date, label, data.attrs)
    with tempfile.TemporaryDirectory() as tmp:  # the observations reach the cost through the netCDF reader
        path = Path(tmp) / "observations.nc"
        write_observation_table(path, table)
        read = read_observations(path, data.grid, case.time.dt, n_steps,
                                 start=date if date is not None else None)  # fmt: skip
    twin = TwinExperiment(truth=truth, observations=(read.observations,), background=jnp.asarray(data.mean))
    exp = Experiment(case, data.grid, model, covariance,
                     make_solver(case, covariance.zero_control(twin.background), grid=data.grid, inflow=data.mean,
                                 start=date),
                     twin, read.locations, read.observations.steps, truth_model=true_model)  # fmt: skip
    exp.files["observations.nc"] = table
    exp.state_attrs = dict(data.attrs)
    exp.start = date
    exp.provenance = {**data.provenance, "sample": label, "length_scale": length, "fields": provenance}
    exp.timings["build_s"] = time.perf_counter() - start
    return exp


def _build_from_file(case: Case, data: Dataset, model, covariance, date, label, length, fields, start) -> Experiment:
    """Experiment of observations.file on the data grid: background = climatology, no truth, no synthetic network."""
    from assim.case.files import file_observations

    if case.training is not None or case.discover is not None:
        raise ConfigError("observations.file: a [data] case with real observations has no truth to train or "
                          "discover against; remove [training]/[discover] or observations.file")  # fmt: skip
    sets, locations, steps = file_observations(case, data.grid, start=date)  # one set per observations.file
    twin = TwinExperiment(truth=None, observations=sets, background=jnp.asarray(data.mean))
    exp = Experiment(case, data.grid, model, covariance,
                     make_solver(case, covariance.zero_control(twin.background), grid=data.grid, inflow=data.mean,
                                 start=date),
                     twin, locations, steps)  # fmt: skip
    exp.state_attrs = dict(data.attrs)
    exp.start = date
    files = case.observations.file
    assert files is not None, "observations.file cases only"
    exp.provenance = {**data.provenance, "sample": label, "length_scale": length, "fields": fields,
                      "observations": files if isinstance(files, str) else list(files)}  # fmt: skip
    exp.timings["build_s"] = time.perf_counter() - start
    return exp


__all__ = ["Dataset", "build", "check", "dataset", "length_scale", "make_covariance", "make_model",
           "sample_state"]  # fmt: skip
