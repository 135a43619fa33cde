"""The `assim` command a scientist trusts, each bad input fed through a fresh `assim` process.

Non-finite σ and variances refused up front; a run that does not converge writes its outputs but exits 3;
an --out that is a file or cannot be written refused before the work; a busy --out refused (lock file);
Ctrl-C exits 130 with one line and leaves no directory; a Lorenz-96 step beyond RK4's stability limit
refused in one line; a configuration error reported before JAX is imported.
"""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

ROOT = Path(__file__).parents[1]
QUICKSTART = str(ROOT / "cases" / "quickstart.toml")
SMALL = ["--set", "grid.n=8", "--set", "time.n_steps=4", "--set", "outputs.figures=false"]


def assim(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "assim.cli", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)  # fmt: skip


def one_line(stderr: str) -> str:
    """The single line of stderr (never a traceback)."""
    assert "Traceback" not in stderr and stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    return stderr.rstrip("\n")


@pytest.mark.parametrize("key, value", [("observations.noise", "inf"), ("observations.noise", "nan"),
                                        ("background.variance", "inf"), ("background.length_scale", "-inf")])  # fmt: skip
def test_non_finite_sigma_and_variance_refused_up_front(key, value):
    proc = assim("validate", QUICKSTART, "--set", f"{key}={value}")
    assert proc.returncode == 2 and proc.stdout == ""
    line = one_line(proc.stderr)
    assert line.startswith(f"assim: error: {key}: ") and value in line


def test_configuration_error_comes_before_jax():
    code = ("import sys; from assim.cli import main; "
            f"rc = main(['validate', {QUICKSTART!r}, '--set', 'grid.n=-1']); "
            "print(rc, 'jax' in sys.modules)")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.stdout == "2 False\n"
    assert one_line(proc.stderr) == "assim: error: grid.n: must be ≥ 4 (got -1); set it to a value ≥ 4"


def test_unconverged_run_writes_outputs_and_exits_3(tmp_path):
    """Also: a stale lock (its process has ended, e.g. a killed run) is replaced, and removed at exit."""
    out = tmp_path / "unconverged"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=False,
                          capture_output=True, text=True)  # fmt: skip
    (out / ".assim.lock").write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")
    proc = assim("run", QUICKSTART, "--out", str(out), "-q", *SMALL, "--set", "solver.max_outer=1",
                 "--set", "solver.gtol=1e-14")  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    line = one_line(proc.stderr)
    assert "not converged" in line and "exit status 3" in line and str(out) in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["converged"] is False and metrics["outer_iterations"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["analysis.nc", "metrics.json", "summary.md"]  # no lock left
    with xr.open_dataset(out / "analysis.nc") as ds:  # the counts add up: valid + masked = every observation
        assert metrics["n_observations"] + metrics["n_observations_masked"] == ds.obs_value.size
        assert metrics["n_observations"] == int(ds.obs_value.notnull().sum()) > 0


def test_lorenz96_step_beyond_rk4_stability_refused(tmp_path):
    out = tmp_path / "l96"
    proc = assim(
        "run", str(ROOT / "cases" / "lorenz96.toml"), "--out", str(out), "--set", "time.dt=1", "--set", "grid.n=8"
    )
    assert proc.returncode == 2 and not out.exists()  # the directory made for the run is removed
    line = one_line(proc.stderr)
    assert "time.dt" in line and "dt = 1 exceeds" in line and "≤ 0.1556" in line  # 1.4 / (1 + F), F = 8


def test_unusable_out_refused_before_the_work(tmp_path):
    """A case that would run for minutes: the refusal must come before it (the timeout would say otherwise)."""
    existing = tmp_path / "a_file"
    existing.write_text("keep me\n")
    big = ["--set", "grid.n=256", "--set", "time.n_steps=200"]
    for out, says in ((existing, "is an existing file"), (existing / "sub", "is a file, not a directory"),
                      (Path("/proc/self/assim-out"), "cannot write in /proc/self")):  # fmt: skip
        proc = assim("run", QUICKSTART, "--out", str(out), *big, timeout=60)
        assert proc.returncode == 2 and proc.stdout == ""
        line = one_line(proc.stderr)
        assert line.startswith(f"assim: error: --out {out}: ") and says in line
    assert existing.read_text() == "keep me\n"


def test_busy_out_refused_and_ctrl_c_leaves_nothing(tmp_path):
    """A second run on a busy --out is refused; Ctrl-C of the first: exit 130, one line, no directory."""
    out = tmp_path / "deep" / "busy"
    first = subprocess.Popen([sys.executable, "-m", "assim.cli", "run", QUICKSTART, "--out", str(out), "-q",
                              "--set", "grid.n=64", "--set", "time.n_steps=40"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / ".assim.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / ".assim.lock").read_text().split()[0] == str(first.pid)
        second = assim("run", QUICKSTART, "--out", str(out), *SMALL, timeout=120)
        assert second.returncode == 2
        assert f"--out {out}: in use by another assim run (pid {first.pid}" in one_line(second.stderr)
        assert first.poll() is None  # still working: the interrupt lands mid-run
        time.sleep(3.0)  # into the work (JAX loads after the lock)
        first.send_signal(signal.SIGINT)
        stdout, stderr = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 130 and stdout == ""
    assert one_line(stderr) == "assim: interrupted; nothing written"
    assert not (tmp_path / "deep").exists()  # neither the output directory nor its parent it created
