"""The shipped cases: every cases/*.toml passes `assim validate`, and a tiny version of each runs through `assim run`.

Parametrised over the glob, so a case added to cases/ is covered without editing this file. The tiny
version is the case with `--set` overrides from `tiny()` (8-cell grids, 4 steps, ≤ 6 outer iterations),
derived from the case's own table; a case that runs a trained solver gets a checkpoint trained first by
`assim train` on a tiny version of cases/training.toml (the same solver skeleton), so nothing skips.
"""

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from assim.case.config import load_case
from assim.cli import main

ROOT = Path(__file__).parents[1]
CASES = sorted((ROOT / "cases").glob("*.toml"))


def raw(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def tiny(data: dict) -> list[str]:
    """Overrides that shrink a case to a few seconds of compute while keeping its kind of problem."""
    sets = []
    model, grid, obs = data.get("model", {}), data.get("grid", {}), data.get("observations", {})
    if "n" in grid and data.get("solver", {}).get("kind") != "unrolled":  # a checkpoint fixes the control shape
        sets.append("grid.n=8")
    if model.get("kind") == "lorenz96":
        sets.append("model.spin_up=20")
    if "data" in data:  # a grid from a dataset: coarser blocks, fewer B probes
        sets += ["data.field.coarsen=3", "background.normalisation_samples=20"]
    if "cycling" in data:
        sets += ["time.n_steps=4", "cycling.window=2", "cycling.shift=2", "cycling.n_windows=2"]
    elif "time" in data:
        sets.append(f"time.n_steps={min(data['time'].get('n_steps', 4), 4)}")
    if "every" in obs:
        sets.append("observations.every=2")
    network = obs.get("network", {})
    if network.get("kind") == "random_fraction":
        sets.append(f"observations.network.fraction={max(network['fraction'], 0.25)}")
    if network.get("kind") == "regular":
        sets.append(f"observations.network.spacing={min(network['spacing'], 2)}")
    if network.get("kind") == "stations_and_tracks":
        sets += ["observations.network.stations=12", "observations.network.track_points=6"]
    if network.get("kind") == "stations" and network.get("points") is None:
        sets.append(f"observations.network.count={min(network.get('count', 8), 12)}")
    timing = data.get("weak_constraint", {}).get("timing", {})
    if timing.get("kind") == "subwindows":
        sets.append("weak_constraint.timing.length=2")
    if "max_outer" in data.get("solver", {}):
        sets.append(f"solver.max_outer={min(data['solver']['max_outer'], 6)}")  # a cycled 2-step window needs 5
    return sets


def args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_case_passes_assim_validate(path, capsys):
    status = main(["validate", str(path)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.strip().endswith(")") and "valid" in captured.out and captured.err == ""


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_tiny_version_of_case_validates(path, capsys):
    """The shrinking overrides give a valid case (else: extend tiny() for the new case's kind of problem)."""
    status = main(["validate", str(path), *args(tiny(raw(path)))])
    assert status == 0, f"tiny() overrides do not fit {path.name}: {capsys.readouterr().err}"


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A solver trained by `assim train` on a tiny version of the training case (a few steps, few windows)."""
    out = tmp_path_factory.mktemp("training")
    sets = ["training.steps=2", "training.train_windows=4", "training.validation_windows=1",
            "training.test_windows=1", "training.validate_every=1", "solver.max_outer=2"]  # fmt: skip
    assert main(["train", str(ROOT / "cases" / "training.toml"), "--out", str(out), "-q", *args(sets)]) == 0
    return out / "solver.eqx"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_tiny_version_of_case_runs_end_to_end(path, tmp_path, request):
    sets = tiny(raw(path))
    case, _ = load_case(path, sets)
    if getattr(case.solver, "checkpoint", None) is not None:  # a trained solver: train one first
        sets.append(f"solver.checkpoint={json.dumps(str(request.getfixturevalue('trained_checkpoint')))}")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "-q", *args(sets)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"analysis.nc", "metrics.json", "summary.md"} <= names
    assert not [n for n in names if n.endswith(".part") or n.startswith(".")]
    if case.outputs.figures:
        assert any(n.endswith(".png") for n in names)
    metrics = json.loads((out / "metrics.json").read_text())
    bg, an = metrics["background_rmse"], metrics["analysis_rmse"]
    assert math.isfinite(bg) and math.isfinite(an) and an < bg, metrics  # observations improved the state
    with xr.open_dataset(out / "analysis.nc") as ds:
        assert ds.attrs["case_file"] == path.read_text()
        assert json.loads(ds.attrs["case_overrides"])[: len(sets)] == sets
        finite = np.isfinite(ds.analysis.values)  # NaN exactly on the masked (land) cells, at every time
        assert np.all(finite == finite[0])
        assert int(np.sum(~finite[0])) == int(metrics.get("masked_cells", 0))
        assert float(ds.attrs["metric_analysis_rmse"]) == pytest.approx(an, rel=1e-12)
