"""Time-varying advection winds from files: a wind variable with a time axis gives AdvectionDiffusion(times=...).

The test writes wind files on the grid's own cell centres (no interpolation): two times, +u at the window
start and −u at its end, and checks the case's model against AdvectionDiffusion built directly from the same
samples, against either steady wind, and that a record not covering the window is one line.
"""

import subprocess
import sys
import tomllib

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from assim.case.build import build
from assim.case.config import validate
from assim.case.schema.models import AdvectionDiffusionModel
from assim.errors import InputError
from models.advection_diffusion import AdvectionDiffusion
from models.grid import LatLonGrid
from models.operators import Upwind
from models.rollout import rollout
from models.time_schemes import CrankNicolson

N, STEPS, DT = 8, 4, 0.05
C = (np.arange(N) + 0.5) / N  # cell centres of the periodic unit square


def winds(n_times: int = 2):
    """u(t, y, x), v(t, y, x) at `n_times` times: u flips sign from one time to the next (+u, −u, …), v halves."""
    y, x = np.meshgrid(C, C, indexing="ij")
    u0 = 0.5 + 0.3 * np.cos(2 * np.pi * y)
    v0 = 0.4 * np.sin(2 * np.pi * x)
    return np.stack([(-1.0) ** i * u0 for i in range(n_times)]), np.stack([0.5**i * v0 for i in range(n_times)])


def write_winds(path, times):
    u, v = winds(len(times))
    coords = {"time": ("time", np.asarray(times, float)), "y": ("y", C, {"axis": "Y"}), "x": ("x", C, {"axis": "X"})}
    xr.Dataset({"u": (("time", "y", "x"), u), "v": (("time", "y", "x"), v)}, coords=coords).to_netcdf(path)
    return str(path)


CASE = f"""
[model]
kind = "advection_diffusion"
kappa = 1e-3
advection = "upwind"
[grid]
n = {N}
ndim = 2
boundary = "periodic"
[time]
n_steps = {STEPS}
dt = {DT}
[observations]
network = {{ kind = "random_fraction", fraction = 0.3 }}
every = 2
noise = 0.05
[background]
kind = "spectral_gaussian"
variance = 0.04
length_scale = 0.15
"""


def case(path, **wind):
    data = tomllib.loads(CASE)
    data["model"]["wind"] = {"u": {"file": path, "variable": "u"}, "v": {"file": path, "variable": "v"}, **wind}
    return validate(data)


def test_a_two_time_wind_is_the_time_varying_model(tmp_path):
    path = write_winds(tmp_path / "w.nc", [0.0, STEPS * DT])
    exp = build(case(path))
    model = exp.model
    assert model.times == (0.0, STEPS * DT)
    u, v = winds()
    direct = AdvectionDiffusion(exp.grid, (jnp.asarray(v), jnp.asarray(u)), 1e-3, DT, CrankNicolson(),
                                times=(0.0, STEPS * DT), advection_scheme=Upwind())  # fmt: skip
    x0 = exp.twin.background
    forecast = np.asarray(rollout(model, x0, STEPS))
    np.testing.assert_allclose(forecast, np.asarray(rollout(direct, x0, STEPS)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(exp.twin.truth), np.asarray(rollout(direct, exp.twin.truth[0], STEPS)),
                               rtol=0, atol=1e-12)  # the truth ran the same time-varying wind  # fmt: skip
    for t in (0.0, STEPS * DT):  # either steady wind (one time selected) forecasts differently
        steady = build(case(path, steady=True, u={"file": path, "variable": "u", "sel": {"time": t}},
                            v={"file": path, "variable": "v", "sel": {"time": t}}))  # fmt: skip
        assert steady.model.times is None
        assert np.max(np.abs(np.asarray(rollout(steady.model, x0, STEPS)) - forecast)) > 1e-3


def test_the_wind_times_are_recorded_in_the_provenance(tmp_path):
    path = write_winds(tmp_path / "w.nc", [0.0, 0.1, 0.3])
    config = AdvectionDiffusionModel.model_validate({"kind": "advection_diffusion", "kappa": 1e-3, "wind": {
        "u": {"file": path, "variable": "u", "isel": {"time": {"points": [0, 2]}}}, "v": {"file": path, "variable": "v",
                                                                              "isel": {"time": {"points": [0, 2]}}}}})  # fmt: skip
    provenance = {}
    c = case(path)
    model, _ = config.build(c.model.grid_for(c.grid), DT, provenance=provenance, length=0.2)
    assert model.times == (0.0, 0.3)
    assert provenance["wind_u"]["times"] == provenance["wind_v"]["times"] == [0.0, 0.3]
    u, v = winds(3)
    np.testing.assert_array_equal(np.asarray(model.velocity[1]), u[[0, 2]])  # (v, u) per grid axis (y, x)
    np.testing.assert_array_equal(np.asarray(model.velocity[0]), v[[0, 2]])


def test_a_record_that_does_not_cover_the_window_is_one_line(tmp_path):
    path = tmp_path / "case.toml"
    path.write_text(
        CASE + '[model.wind]\nu = { file = "w.nc", variable = "u" }\nv = { file = "w.nc", variable = "v" }\n'
    )
    write_winds(tmp_path / "w.nc", [0.0, 0.5 * STEPS * DT])  # ends half-way through the window
    proc = subprocess.run([sys.executable, "-m", "assim.cli", "validate", str(path)], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("assim: error: model.wind.u (") and "covers model time 0..0.1" in proc.stderr


def test_dated_winds_on_a_latlon_grid_count_seconds_from_the_window_start(tmp_path):
    lat, lon = np.arange(-20.0, 21.0, 10.0), np.arange(100.0, 141.0, 10.0)
    grid = LatLonGrid(lat, lon)
    dates = np.array(["2020-01-01T00", "2020-01-01T12"], dtype="datetime64[ns]")
    u = np.stack([np.full((lat.size, lon.size), 5.0), np.full((lat.size, lon.size), -5.0)])
    coords = {"time": ("time", dates), "lat": ("lat", lat, {"units": "degrees_north"}),
              "lon": ("lon", lon, {"units": "degrees_east"})}  # fmt: skip
    xr.Dataset({"u": (("time", "lat", "lon"), u, {"units": "m s-1"})}, coords=coords).to_netcdf(tmp_path / "w.nc")
    src = {"file": str(tmp_path / "w.nc"), "variable": "u"}
    config = AdvectionDiffusionModel.model_validate({"kind": "advection_diffusion", "kappa": 1e3,
                                                     "wind": {"u": src, "v": {**src, "scale": 0.0}}})  # fmt: skip
    start = np.datetime64("2020-01-01T06", "ns")
    model, _ = config.build(grid, 3600.0, start=np.datetime64("2020-01-01T00", "ns"), length=6 * 3600.0)
    assert model.times == (0.0, 43200.0)
    with pytest.raises(InputError, match=r"^model\.wind\.v .*covers model time -21600\.\.21600 but the window spans "
                                         r"0\.\.43200"):  # fmt: skip
        config.build(grid, 3600.0, start=start, length=12 * 3600.0)
    with pytest.raises(InputError, match="times are dates but the window has none"):
        config.build(grid, 3600.0)
