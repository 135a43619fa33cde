"""The package passes ruff with the configuration in pyproject.toml (so CI lints what pre-commit lints)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_package_passes_ruff():
    pytest.importorskip("ruff")  # in the `test` extra
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "assim", "models", "tests", "benchmarks"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_reads_the_project_configuration(tmp_path):
    pytest.importorskip("ruff")
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")  # F401: unused import
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                           str(bad)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "F401" in done.stdout
