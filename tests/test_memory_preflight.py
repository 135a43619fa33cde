"""Memory estimated before the work: a case too big for the machine (or --max-memory) refused in one line.

Each refusal is fed through a fresh `assim` process (exit 2, one line naming the sizes, no traceback, no output
directory); the estimate is compared with the arrays a small built and solved case really holds.
"""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from assim.case import build as case_module
from assim.case.config import load_case
from assim.case.memory import BYTES, estimate, human, parse_size, preflight, state_values
from assim.errors import ConfigError

ROOT = Path(__file__).parents[1]
CASES = ROOT / "cases"


def assim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "assim.cli", *args], check=False, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)  # fmt: skip


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr and stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    return stderr.rstrip("\n")


@pytest.mark.parametrize("case, key, value, state", [
    ("quickstart", "time.n_steps", "100000000", "state 2,304 values"),
    ("lorenz96", "grid.n", "100000000", "state 100,000,000 values"),
    ("quickstart", "grid.n", "100000", "state 10,000,000,000 values"),  # 2-D: once a NumPy allocation traceback
])  # fmt: skip
def test_case_beyond_the_machine_refused_before_the_build(tmp_path, case, key, value, state):
    out = tmp_path / "out"
    proc = assim("run", str(CASES / f"{case}.toml"), "--out", str(out), "--set", f"{key}={value}")
    assert proc.returncode == 2 and proc.stdout == ""
    line = one_line(proc.stderr)
    assert line.startswith("assim: error: memory: the case needs about ") and state in line
    assert "this machine has available (MemAvailable)" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, case", [("validate", "quickstart"), ("train", "training"),
                                           ("discover", "discovery"), ("sweep", "quickstart")])  # fmt: skip
def test_max_memory_bound_refuses_every_command(tmp_path, command, case):
    extra = [] if command == "validate" else ["--out", str(tmp_path / "out")]
    extra += ["--vary", "observations.noise=0.01,0.05"] if command == "sweep" else []
    proc = assim(command, str(CASES / f"{case}.toml"), "--max-memory", "10kB", *extra)
    assert proc.returncode == 2 and proc.stdout == ""
    line = one_line(proc.stderr)
    assert "memory: the case needs about " in line and "more than the --max-memory bound 10 kB" in line
    assert list(tmp_path.iterdir()) == []


def test_max_memory_sizes_parse_and_a_bad_one_is_one_line():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1.5 GiB") == 3 * 2**29 and parse_size("512") == 512
    for bad in ("", "2XB", "-1GB", "0", "inf", "GB"):
        with pytest.raises(ConfigError, match="--max-memory"):
            parse_size(bad)
    proc = assim("validate", str(CASES / "quickstart.toml"), "--max-memory", "lots")
    assert proc.returncode == 2 and one_line(proc.stderr).startswith("assim: error: --max-memory 'lots': ")
    assert human(2.5e9) == "2.5 GB" and human(999) == "999 B"


def test_estimate_scales_with_the_sizes_of_the_case():
    base, _ = load_case(CASES / "quickstart.toml")
    e = estimate(base)
    assert e.state == 48 * 48 and e.steps == e.window == 10 and e.batch == 1
    longer = estimate(load_case(CASES / "quickstart.toml", ["time.n_steps=100"])[0])
    assert 5 < longer.bytes / e.bytes < 11  # the trajectories grow with the steps, the Krylov vectors do not
    assert (
        state_values(load_case(CASES / "shallow_water.toml")[0])
        == 3 * load_case(CASES / "shallow_water.toml")[0].grid.n ** 2
    )
    sst = load_case(CASES / "sst_anomalies.toml")[0]  # a [data] field: its cells read from the file's header
    assert (
        state_values(sst)
        == 18 * 30
        == 4 * state_values(load_case(CASES / "sst_anomalies.toml", ["data.field.coarsen=2"])[0])
    )
    trained = estimate(load_case(CASES / "training.toml")[0])
    assert trained.batch > 1  # training holds a batch of windows at once
    assert preflight(base, "1TB") is base  # within the bound: the case itself
    with pytest.raises(ConfigError, match=r"needs about .*more than the --max-memory bound 1 kB"):
        preflight(base, "1kB")


def _nbytes(*trees) -> int:
    """Bytes of every array in some pytrees / numpy arrays."""
    leaves = jax.tree_util.tree_leaves(trees)
    return sum(int(np.asarray(x).nbytes) for x in leaves if hasattr(x, "shape") and getattr(x, "ndim", 0) > 0)


@pytest.mark.parametrize("case, overrides", [
    ("quickstart", ["grid.n=16", "time.n_steps=20", "outputs.figures=false"]),
    ("lorenz96", ["outputs.figures=false"]),
])  # fmt: skip
def test_estimate_of_what_is_held_is_within_a_factor_3_of_the_arrays(case, overrides):
    """The twin's truth and observations and the outcome's trajectories, as estimated and as built and solved."""
    loaded, _ = load_case(CASES / f"{case}.toml", overrides)
    exp = case_module.build(loaded)
    outcome = case_module.run(exp)
    held = _nbytes(exp.twin.truth, exp.twin.observations, exp.twin.background, outcome.truth, outcome.background,
                   outcome.analysis, outcome.obs_values, outcome.obs_innovation, outcome.obs_residual)  # fmt: skip
    estimated = BYTES * estimate(loaded).held
    assert held / 3 <= estimated <= 3 * held, (estimated, held)
