"""`assim sweep`: variants through Dask, gathered on the grid of varied keys; bad variants fail before any work.

The 2×2 sweep runs on a LocalCluster of 2 worker processes (the command's default) on a tiny Lorenz-96
cycle, which compiles in seconds; the failure-handling tests use a threaded LocalCluster (processes=False)
so that a monkeypatched solver reaches the workers and nothing is compiled twice. Measured on the 2-core
machine (load ≈ 6–12 from concurrent work): a 2×2 quickstart sweep (16² grid) took 117 s with 2 processes,
47 s with 2 threads — each process compiles its own programs, so process start-up is not the cost, compilation
is; the Lorenz-96 case keeps the process test cheap.
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import assim.case.build as case_module
import assim.case.sweep as sweep_module
from assim.case.sweep import Cluster, RunSweep, load_variant, sweep
from assim.case.variants import parse_vary, variants
from assim.cli import main
from assim.errors import ConfigError, ConvergenceError

ROOT = Path(__file__).parents[1]
L96 = ROOT / "cases" / "lorenz96.toml"
TINY = ["grid.n=8", "time.n_steps=4", "cycling.window=4", "cycling.shift=4", "cycling.n_windows=1",
        "model.spin_up=20", "solver.max_outer=3"]  # fmt: skip
SET = [a for o in TINY for a in ("--set", o)]
VARY = ["--vary", "observations.noise=0.3,0.5", "--vary", "observations.seed=1,2"]


@pytest.fixture(scope="module")
def process_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    assert main(["sweep", str(L96), *SET, *VARY, "--workers", "2", "--out", str(out)]) == 0
    with xr.open_dataset(out / "sweep.nc") as ds:
        return out, ds.load()


def one_by_one(overrides: list[str]) -> dict:
    return RunSweep().metrics(load_variant(L96.read_text(), [*TINY, *overrides]))


def test_sweep_dataset_has_the_varied_keys_as_dimensions(process_sweep):
    out, ds = process_sweep
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json", "sweep.nc", "sweep.png"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ds.analysis_rmse.dims == ("observations.noise", "observations.seed")
    np.testing.assert_array_equal(ds["observations.noise"].values, [0.3, 0.5])
    np.testing.assert_array_equal(ds["observations.seed"].values, [1, 2])
    assert ds["observations.seed"].dtype.kind == "i"
    np.testing.assert_array_equal(ds.observation_noise.values, [[0.3, 0.3], [0.5, 0.5]])  # each variant got its value
    assert np.all(ds.error.values == "") and int(ds.attrs["n_failed"]) == 0
    assert json.loads(ds.attrs["case_overrides"]) == TINY and ds.attrs["case_file"] == L96.read_text()
    assert json.loads(ds.attrs["vary"]) == {"observations.noise": ["0.3", "0.5"], "observations.seed": ["1", "2"]}
    summary = json.loads((out / "sweep.json").read_text())
    assert [v["overrides"] for v in summary["variants"]] == variants([parse_vary("observations.noise=0.3,0.5"),
                                                                      parse_vary("observations.seed=1,2")])  # fmt: skip


def test_sweep_values_equal_variants_run_one_by_one(process_sweep):
    _, ds = process_sweep
    for noise in (0.3, 0.5):
        for seed in (1, 2):
            ref = one_by_one([f"observations.noise={noise}", f"observations.seed={seed}"])
            got = ds.sel({"observations.noise": noise, "observations.seed": seed})
            for name in ("background_rmse", "analysis_rmse", "innovation_rms", "analysis_chi2", "cg_iterations"):
                assert float(got[name]) == pytest.approx(ref[name], rel=1e-9, abs=1e-12), name
            assert float(got.converged) == float(ref["converged"]) and str(got.reason.values) == ref["reason"]
            assert float(got.time_total_s) > 0
    # different seeds draw different observations: the variants really differ
    assert ds.background_rmse.sel({"observations.seed": 1}).values[0] != ds.background_rmse.sel(
        {"observations.seed": 2}).values[0]  # fmt: skip


def fail_cluster(*args, **kwargs):
    raise AssertionError("a cluster was started for an invalid sweep")


@pytest.mark.parametrize("vary, pattern", [
    ("grid.nn=8,16", r"^variant grid\.nn=8: grid\.nn: unknown key"),
    ("observations.noise=0.1,-1", r"^variant observations\.noise=-1: observations\.noise: must be > 0"),
    ("observations.noise=0.1,,0.2", r"empty value"),
    ("observations.noise=0.1,0.1", r"repeated"),
    ("observations.noise", r"expected KEY\.SUB=V1,V2"),
])  # fmt: skip
def test_bad_vary_fails_fast_with_one_line_and_writes_nothing(vary, pattern, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_module, "_client", fail_cluster)
    out = tmp_path / "out"
    assert main(["sweep", str(L96), *SET, "--vary", vary, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("assim: error: ") and err.count("\n") == 1, err
    import re

    assert re.search(pattern, err.removeprefix("assim: error: ")), err
    assert not out.exists() or not list(out.iterdir())


def test_vary_values_split_at_top_level_commas_and_keys_are_unique():
    v = parse_vary('observations.network={kind="stations", count=3},{kind="regular", spacing=2}')
    assert v.values == ({"kind": "stations", "count": 3}, {"kind": "regular", "spacing": 2})
    assert list(v.coordinate()) == ['{kind="stations", count=3}', '{kind="regular", spacing=2}']
    assert parse_vary("model.initial.centre=[0.5, 0.5],[0.2, 0.3]").values == ([0.5, 0.5], [0.2, 0.3])
    assert parse_vary("solver.kind=gauss_newton,levenberg_marquardt").coordinate().tolist() == [
        "gauss_newton", "levenberg_marquardt"]  # fmt: skip
    assert parse_vary("observations.noise=0.1, 1").coordinate().dtype == float
    with pytest.raises(ConfigError, match="given twice"):
        variants([parse_vary("grid.n=8,16"), parse_vary("grid.n=32")])
    with pytest.raises(ConfigError, match="nothing to vary"):
        sweep(L96, [])
    assert pickle.loads(pickle.dumps(RunSweep())) == RunSweep()  # travels to worker processes


THREADS = Cluster(workers=2, processes=False)


def test_a_failed_variant_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    real_run = case_module.run

    def run(exp):
        if exp.case.observations.noise == 0.5:
            raise ConvergenceError("forced failure (test)")
        return real_run(exp)

    monkeypatch.setattr(case_module, "run", run)
    ds = sweep(L96, ["observations.noise=0.3,0.5"], TINY, tmp_path, THREADS)
    assert "forced failure (test)" in capsys.readouterr().err
    assert ds.error.values.tolist() == ["", "forced failure (test)"]
    assert np.isfinite(ds.analysis_rmse.values[0]) and np.isnan(ds.analysis_rmse.values[1])
    assert ds.analysis_rmse.values[0] == pytest.approx(one_by_one(["observations.noise=0.3"])["analysis_rmse"])
    with xr.open_dataset(tmp_path / "sweep.nc") as saved:
        assert saved.error.values.tolist() == ["", "forced failure (test)"] and int(saved.attrs["n_failed"]) == 1
    assert json.loads((tmp_path / "sweep.json").read_text())["variants"][1]["error"] == "forced failure (test)"


def test_all_variants_failing_exits_non_zero_and_writes_nothing(tmp_path, monkeypatch, capsys):
    def run(exp):
        raise RuntimeError("worker exploded (test)")

    monkeypatch.setattr(case_module, "run", run)
    monkeypatch.setattr(sweep_module, "Cluster", lambda *a, **k: THREADS)  # the CLI's cluster, threaded
    out = tmp_path / "out"
    assert main(["sweep", str(L96), *SET, "--vary", "observations.seed=1,2", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "all 2 variants failed" in err and "RuntimeError: worker exploded (test)" in err
    assert not out.exists() or not list(out.iterdir())


def test_unknown_sweep_command_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_module, "_client", fail_cluster)
    args = ["sweep", str(L96), "--command", "dance", "--vary", "observations.seed=1,2", "--out", str(tmp_path)]
    assert main(args) == 2
    assert capsys.readouterr().err == "assim: error: --command 'dance': unknown; use one of ['run']\n"
