"""Several observation files in one case: a shallow-water window reading η from one file and u from another.

A tiny 8×8 doubly periodic shallow-water truth is run by the test, observed with known noise (η as a
gridded field with a few missing cells, u at stations as a CF point table), and `assim run` assimilates
both files with observations.file = [...] from the model's preset initial state (no truth in the case).
"""

import json
import tomllib

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from assim.case import build as case_module
from assim.case.config import load_case, to_toml, validate
from assim.case.experiment import make_grid, make_model
from assim.cli import main
from assim.errors import InputError
from assim.io.observation_files import (
    observation_field,
    observation_table,
    write_observation_table,
)
from models.rollout import rollout
from models.shallow_water import SWState

SIGMA_ETA, SIGMA_U = 0.02, 0.002
N_STEPS, DT = 4, 600.0


def case_table(obs_file, **background) -> dict:
    """The raw case: shallow water on an 8×8 periodic square, observations from `obs_file` (str or list)."""
    return {
        "name": "sw_files",
        "model": {"kind": "shallow_water", "depth": 100.0, "f0": 1e-4,
                  "initial": {"centre": [5e5, 5e5], "width": 2e5, "amplitude": 1.0, "wave": 0.0}},
        "grid": {"n": 8, "ndim": 2, "length": 1e6, "boundary": "periodic"},
        "time": {"n_steps": N_STEPS, "dt": DT},
        "observations": {"file": obs_file},
        "background": {"kind": "spectral_gaussian", "variance": 0.04, "velocity_variance": 1e-4, "length_scale": 2e5,
                       **background},
        "solver": {"kind": "gauss_newton", "max_outer": 3, "cg_max_steps": 200, "cg_tol": 1e-10},
        "outputs": {"figures": False},
    }  # fmt: skip


@pytest.fixture(scope="module")
def truth_files(tmp_path_factory):
    """Truth run (a stronger, shifted bump) and its η (gridded, 3 cells missing) and u (8 stations) files."""
    root = tmp_path_factory.mktemp("sw_files")
    case = validate(case_table("unused.nc"))
    grid = make_grid(case)
    model, _ = make_model(case, grid, spin_up=False)
    yy, xx = np.meshgrid(*grid.coords().values(), indexing="ij")
    eta0 = 1.3 * np.exp(-((yy - 4.5e5) ** 2 + (xx - 5.5e5) ** 2) / (2 * 2e5**2))
    zero = jnp.zeros(grid.shape)
    truth = rollout(model, SWState(jnp.asarray(eta0), zero, zero), N_STEPS)
    rng = np.random.default_rng(3)
    steps = np.arange(1, N_STEPS + 1)
    eta = np.asarray(truth.eta)[steps] + SIGMA_ETA * rng.standard_normal((steps.size, *grid.shape))
    eta[0, 0, 0] = eta[1, 3, 5] = eta[3, 7, 2] = np.nan  # missing values: masked and counted
    observation_field(grid, steps * DT, eta, SIGMA_ETA, attrs={"component": "eta"}).to_netcdf(root / "eta.nc")
    cells = rng.choice(grid.size, 8, replace=False)
    points = np.stack([yy.reshape(-1)[cells], xx.reshape(-1)[cells]], axis=-1)  # stations on cell centres
    u_true = np.asarray(truth.u).reshape(N_STEPS + 1, -1)[steps][:, cells]
    u_obs = u_true + SIGMA_U * rng.standard_normal(u_true.shape)
    table = observation_table(grid, np.repeat(steps * DT, cells.size), np.tile(points, (steps.size, 1)),
                              u_obs.reshape(-1), np.full(u_obs.size, SIGMA_U), component="u")  # fmt: skip
    write_observation_table(root / "u.nc", table)
    return root, grid, truth, cells


def write_case(root, name, obs_file, **background):
    path = root / f"{name}.toml"
    path.write_text(to_toml(validate(case_table(obs_file, **background))))
    return path


def run(root, name, obs_file, **background):
    """`assim run` of a case next to the files; its metrics and analysis.nc."""
    out = root / f"{name}_out"
    assert main(["run", str(write_case(root, name, obs_file, **background)), "--out", str(out), "-q"]) == 0
    with xr.open_dataset(out / "analysis.nc") as ds:
        return json.loads((out / "metrics.json").read_text()), ds.load()


@pytest.fixture(scope="module")
def both(truth_files):
    root = truth_files[0]
    return run(root, "both", ["eta.nc", "u.nc"])  # relative to the case file


def test_two_files_improve_eta_and_pool_their_counts(truth_files, both):
    _, grid, truth, cells = truth_files
    metrics, ds = both
    eta_t = np.asarray(truth.eta)
    background_error = float(np.sqrt(np.mean((ds.background.isel(time=0).values - eta_t[0]) ** 2)))
    analysis_error = float(np.sqrt(np.mean((ds.analysis.isel(time=0).values - eta_t[0]) ** 2)))
    assert analysis_error < 0.5 * background_error
    n_eta, n_u = N_STEPS * grid.size, N_STEPS * cells.size
    assert ds.obs_value.dims == ("obs",) and ds.obs_value.size == n_eta + n_u  # one row per observation
    assert metrics["observation_sets"] == 2
    assert metrics["n_observations"] + metrics["n_observations_masked"] == n_eta + n_u
    assert metrics["n_observations_masked"] == 3 and metrics["n_observations_masked_u"] == 0
    assert metrics["n_observations_eta"] == n_eta - 3 and metrics["n_observations_u"] == n_u
    assert int(np.isfinite(ds.obs_value.values).sum()) == metrics["n_observations"]
    np.testing.assert_array_equal(ds.obs_component.values, ["eta"] * n_eta + ["u"] * n_u)
    np.testing.assert_array_equal(np.unique(ds.obs_step.values), np.arange(1, N_STEPS + 1))
    # pooled χ² over both sets from the written rows, each with its own σ, and per component
    d = ds.obs_innovation.values / ds.obs_error.values
    valid = np.isfinite(d)
    assert metrics["innovation_chi2"] == pytest.approx(np.mean(d[valid] ** 2), rel=1e-10)
    is_u = ds.obs_component.values == "u"
    assert metrics["innovation_chi2_u"] == pytest.approx(np.mean(d[is_u] ** 2), rel=1e-10)
    assert metrics["innovation_chi2_eta"] == pytest.approx(np.mean(d[valid & ~is_u] ** 2), rel=1e-10)
    assert metrics["residual_chi2"] < metrics["innovation_chi2"]
    assert metrics["residual_chi2_u"] < metrics["innovation_chi2_u"]


def test_rows_read_back_against_the_stored_fields(truth_files, both):
    """y − innovation is H(background): η rows at their (time, y, x), u rows at the station's u point."""
    _, grid, _, cells = truth_files
    _, ds = both
    eta = ds.obs_component.values == "eta"
    e = ds.isel(obs=np.flatnonzero(eta))
    at = {"time": e.obs_time, "y": e.obs_y, "x": e.obs_x}
    np.testing.assert_allclose((e.obs_value - e.obs_innovation).values[np.isfinite(e.obs_value.values)],
                               ds.background.sel(**at, method="nearest").values[np.isfinite(e.obs_value.values)],
                               rtol=0, atol=1e-12)  # fmt: skip
    u = ds.isel(obs=np.flatnonzero(~eta))
    j, i = np.unravel_index(np.tile(cells, N_STEPS), grid.shape)  # u of cell (j, i) lies on its east face
    t = np.rint(u.obs_step.values).astype(int)
    np.testing.assert_allclose((u.obs_value - u.obs_residual).values, ds.analysis_u.values[t, j, i], rtol=0,
                               atol=1e-12)  # fmt: skip


def test_one_file_in_a_list_gives_the_plain_string_run(truth_files):
    root = truth_files[0]
    listed, a = run(root, "listed", ["eta.nc"])
    plain, b = run(root, "plain", "eta.nc")
    np.testing.assert_allclose(a.analysis.values, b.analysis.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.analysis_u.values, b.analysis_u.values, rtol=0, atol=1e-12)
    assert a.obs_value.dims == b.obs_value.dims == ("obs_time", "obs")  # one set: the (obs_time, obs) layout
    for key in ("n_observations", "n_observations_masked", "innovation_chi2", "residual_chi2", "analysis_chi2"):
        assert listed[key] == plain[key], key
    assert "observation_sets" not in plain and "innovation_chi2_eta" not in plain


def test_a_component_the_model_lacks_fails_in_one_line_without_outputs(truth_files, capsys):
    root = truth_files[0]
    with xr.open_dataset(root / "u.nc") as ds:
        bad = ds.load()
    bad["value"].attrs["component"] = "w"
    write_observation_table(root / "w.nc", bad)
    out = root / "w_out"
    capsys.readouterr()
    assert main(["run", str(write_case(root, "w", ["eta.nc", "w.nc"])), "--out", str(out), "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "w.nc" in err and "'w'" in err and "component" in err
    assert not out.exists()


def test_background_file_of_every_component(truth_files):
    """background.file with variables eta, u (on the x_u faces) and v: x_b is read by name; a missing one fails."""
    root, grid, truth, _ = truth_files
    rng = np.random.default_rng(5)
    fields = {c: np.asarray(getattr(truth, c))[0] + s * rng.standard_normal(grid.shape)
              for c, s in (("eta", 0.1), ("u", 0.01), ("v", 0.01))}  # fmt: skip
    y, x = grid.coords().values()
    _, dx = grid.spacing
    xb = xr.Dataset({"eta": (("y", "x"), fields["eta"]), "u": (("y", "x_u"), fields["u"]),
                     "v": (("y", "x"), fields["v"])},
                    coords={"y": y, "x": x, "x_u": x + dx / 2})  # fmt: skip
    xb.to_netcdf(root / "xb.nc")
    _, ds = run(root, "xb", ["eta.nc", "u.nc"], file="xb.nc")
    for c, name in (("eta", "background"), ("u", "background_u"), ("v", "background_v")):
        np.testing.assert_allclose(ds[name].isel(time=0).values, fields[c], rtol=0, atol=1e-12)
    xb.drop_vars("v").to_netcdf(root / "xb_no_v.nc")
    case, _ = load_case(write_case(root, "no_v", ["eta.nc"], file="xb_no_v.nc"))
    with pytest.raises(InputError, match=r"xb_no_v\.nc.*'v'") as info:
        case_module.check(case)
    assert "\n" not in str(info.value)
    assert tomllib.loads(to_toml(case))["observations"]["file"] == [str(root / "eta.nc")]


def test_a_data_case_reads_a_list_of_files_as_one_pooled_window(tmp_path):
    """A [data] case: the same table as one file or split over two files gives the same counts, χ² and analysis."""
    from test_data_case import CASE
    from test_observations_from_data import real_observation_setup

    grid, times, pts = real_observation_setup(tmp_path)
    values = 15.0 + 0.1 * pts[:, 0]
    for name, rows in (("all", slice(None)), ("a", slice(0, 25)), ("b", slice(25, None))):
        table = observation_table(grid, times[rows], pts[rows], values[rows], np.full(40, 0.1)[rows],
                                  value_units="degC")  # fmt: skip
        write_observation_table(tmp_path / f"{name}.nc", table)
    network = 'network = { kind = "stations_and_tracks", stations = 40, track_points = 10 }\nevery = 2\nnoise = 0.05'
    results = {}
    for label, spec in (("one", 'file = "all.nc"'), ("two", 'file = ["a.nc", "b.nc"]')):
        text = CASE.format(currents="currents.nc").replace(network, spec)
        assert spec in text
        (tmp_path / f"{label}.toml").write_text(text)
        out = tmp_path / label
        assert main(["run", str(tmp_path / f"{label}.toml"), "--out", str(out), "-q"]) == 0
        with xr.open_dataset(out / "analysis.nc") as ds:
            results[label] = json.loads((out / "metrics.json").read_text()), ds.load()
    (one, a), (two, b) = results["one"], results["two"]
    assert two["observation_sets"] == 2 and 0 < two["n_observations"] == one["n_observations"] < 40
    assert b.obs_value.dims == ("obs",) and int(np.isfinite(b.obs_value.values).sum()) == two["n_observations"]
    for key in ("innovation_chi2", "residual_chi2", "innovation_rms"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    np.testing.assert_allclose(b.analysis.values, a.analysis.values, rtol=0, atol=1e-6)
