"""`assim discover`: the discovery case recovers κ and the wind scale within their posterior spread (tiny grid),
writes consistent JSON/netCDF/figures/summary, reports non-convergence, works on another model kind with a
Gaussian prior and a truth model, and rejects bad configs with one line and no output."""

import json
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import assim.io.figures
from assim.cli import main
from assim.solvers.gauss_newton import GaussNewton

ROOT = Path(__file__).parents[1]
DISCOVERY = ROOT / "cases" / "discovery.toml"
TINY = ["--set", "grid.n=16", "--set", "time.n_steps=8", "--set", "solver.cg_max_steps=60"]


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    out = tmp_path_factory.mktemp("discovery")
    assert main(["discover", str(DISCOVERY), "--out", str(out), "-q", *TINY]) == 0
    return out, json.loads((out / "discovery.json").read_text())


def test_discovery_recovers_kappa_and_wind_scale(discovered):
    _, report = discovered
    assert report["convergence"]["converged"] and report["convergence"]["posterior_converged"]
    params = report["parameters"]
    assert set(params) == {"kappa", "wind_scale"}
    assert params["kappa"]["truth"] == 2e-3 and params["wind_scale"]["truth"] == 1.0  # the [model] values
    for r in params.values():
        text = json.dumps(r)
        assert abs(r["estimate"] - r["truth"]) < 3 * r["std"], text  # truth within the posterior spread
        assert abs(r["z_score"] - (r["estimate"] - r["truth"]) / r["std"]) < 1e-12
        assert abs(r["estimate"] - r["truth"]) < 0.5 * abs(r["prior_error"]), text  # the data moved it to the truth
        assert r["std"] < 0.5 * r["prior"]["std"], text  # and the posterior is much tighter than the prior
    assert abs(report["correlation"][0][1]) < 1 and report["correlation"][0][0] == pytest.approx(1.0)
    state = report["state"]
    assert state["analysis_rmse"] < state["background_rmse"]


def test_discovery_outputs_agree(discovered):
    out, report = discovered
    assert sorted(p.name for p in out.iterdir()) == ["convergence.png", "discovery.json", "discovery.nc",
                                                     "parameters.png", "states.png", "summary.md"]  # fmt: skip
    assert (out / "parameters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with xr.open_dataset(out / "discovery.nc") as ds:
        assert list(ds.parameter.values) == ["kappa", "wind_scale"]
        for i, name in enumerate(["kappa", "wind_scale"]):
            r = report["parameters"][name]
            assert float(ds.parameter_estimate[i]) == r["estimate"] and float(ds[name]) == r["estimate"]
            assert float(ds.parameter_std[i]) == r["std"] and ds[name].attrs["posterior_std"] == r["std"]
            assert float(ds.parameter_truth[i]) == r["truth"] and ds[name].attrs["prior_kind"] == "lognormal"
        assert ds.analysis.dims == ("time", "y", "x") and ds.x.attrs["units"] == "1"
        assert ds.attrs["Conventions"].startswith("CF") and "[discover.parameters.kappa]" in ds.attrs["case"]
        rmse = float(np.sqrt(((ds.analysis.isel(time=0) - ds.truth.isel(time=0)) ** 2).mean()))
        assert rmse == pytest.approx(report["state"]["analysis_rmse"], rel=1e-12)
    summary = (out / "summary.md").read_text()
    assert "| kappa | lognormal(median 0.001, log-std 1)" in summary and "| wind_scale |" in summary


def test_non_convergence_is_reported(tmp_path, monkeypatch, capsys):
    real = GaussNewton.solve

    def unconverged(self, problem, v0=None, *, throw=False):
        return eqx.tree_at(lambda r: r.converged, real(self, problem, v0), jnp.asarray(False))

    monkeypatch.setattr(GaussNewton, "solve", unconverged)
    assert main(["discover", str(DISCOVERY), "--out", str(tmp_path), "-q", *TINY]) == 3  # outputs written, status 3
    err = capsys.readouterr().err
    assert err.startswith("assim: warning: discovery: not converged") and err.count("\n") == 1
    assert json.loads((tmp_path / "discovery.json").read_text())["convergence"]["converged"] is False


def test_failure_while_writing_leaves_no_partial_output(tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("disk full (forced by the test)")

    monkeypatch.setattr(assim.io.figures, "parameters_figure", fail)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="forced by the test"):
        main(["discover", str(DISCOVERY), "--out", str(out), *TINY])
    assert not out.exists()  # discovery.nc was written under a temporary name and removed, the directory too


L96 = """name = "l96_forcing"
[model]
kind = "lorenz96"
forcing = 8.0
spin_up = 50
[truth]
parameters = { forcing = 8.5 }
[grid]
n = 12
ndim = 1
[time]
n_steps = 10
dt = 0.05
[observations]
network = { kind = "regular", spacing = 1 }
every = 1
noise = 0.1
[background]
kind = "diagonal"
variance = 0.5
[solver]
kind = "levenberg_marquardt"
max_outer = 20
cg_tol = 1e-10
gtol = 1e-7
[discover.parameters.forcing]
kind = "gaussian"
mean = 7.0
std = 1.0
[outputs]
figures = false
"""


def test_lorenz96_forcing_with_a_gaussian_prior_and_a_truth_model(tmp_path):
    """Generic over model kinds: F of Lorenz-96; the truth is the [truth] model's F, not the [model] one."""
    case = tmp_path / "l96.toml"
    case.write_text(L96)
    out = tmp_path / "out"
    assert main(["discover", str(case), "--out", str(out), "-q"]) == 0
    r = json.loads((out / "discovery.json").read_text())["parameters"]["forcing"]
    assert r["truth"] == 8.5 and r["prior"]["kind"] == "gaussian"
    assert abs(r["z_score"]) < 3 and r["std"] < 0.2 and abs(r["estimate"] - 8.5) < 0.2, json.dumps(r)
    assert sorted(p.name for p in out.iterdir()) == ["discovery.json", "discovery.nc", "summary.md"]


BAD = [
    (["--set", 'discover.parameters.kapa={kind="lognormal", median=1e-3, log_std=1.0}'],
     "discover.parameters.kapa: the advection_diffusion model has no parameter 'kapa'; "
     "use one of ['kappa', 'wind_scale']"),
    (["--set", "discover.parameters.kappa.log_std=-1"],
     "discover.parameters.kappa.log_std: must be > 0 (got -1); set it to a value > 0"),
    (["--set", "discover.parameters.kappa.kind=uniform"],
     "discover.parameters.kappa.kind: unknown kind 'uniform'; use one of 'gaussian', 'lognormal'"),
    (["--set", "discover.parameters.kappa.mean=1.0"], "discover.parameters.kappa.mean: unknown key"),
    (["--set", "discover.parameters={}"], "discover.parameters: "),
    (["--set", 'truth.parameters.forcing=2.0'],
     "truth.parameters.forcing: the advection_diffusion model has no parameter 'forcing'"),
    (["--set", "cycling={window=4, shift=4, n_windows=2}"], "cycling: assim discover estimates parameters over one"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_discover_config_exits_with_one_line_and_no_output(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["discover", str(DISCOVERY), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"assim: error: {message}") and err.count("\n") == 1, err
    assert not out.exists() or list(out.iterdir()) == []


def test_a_case_without_discover_table_is_refused(tmp_path, capsys):
    assert main(["discover", str(ROOT / "cases" / "quickstart.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("assim: error: discover: the case has no [discover] table") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
