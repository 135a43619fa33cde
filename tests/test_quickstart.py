"""The README's quickstart command runs, converges and beats the background and the observation noise."""

import re
import subprocess
import sys


def test_quickstart_runs_and_improves_on_background():
    out = subprocess.run([sys.executable, "-m", "assim.quickstart"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    bg, an = map(float, re.search(r"background RMSE ([\d.]+)\s+analysis RMSE ([\d.]+)", out.stdout).groups())
    assert an < 0.5 * bg and an < 0.05  # below half the background error and below the noise σ
    assert "converged" in out.stdout
