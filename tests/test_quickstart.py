"""The README's first command: the full-size quickstart case runs, converges and beats background and noise."""

import json
from pathlib import Path

from assim.cli import main

CASE = Path(__file__).resolve().parents[1] / "cases" / "quickstart.toml"


def test_quickstart_case_at_full_size(tmp_path):
    assert main(["run", str(CASE), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert (tmp_path / "analysis.nc").exists()
    bg, an = metrics["background_rmse"], metrics["analysis_rmse"]
    assert an < 0.5 * bg and an < 0.05, text  # below half the background error and below the noise σ
    assert metrics["converged"] is True, text
