"""The package passes ruff (lint and format) and pyright with the configuration in pyproject.toml (so CI checks what pre-commit checks)."""

import json
import os
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


FORMATTED = ["assim", "models", "tests", "benchmarks"]


def test_package_is_formatted():
    """`ruff format --check` (line length 120): the formatter leaves every file as it is."""
    pytest.importorskip("ruff")
    done = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", *FORMATTED], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_format_check_catches_an_unformatted_file(tmp_path):
    pytest.importorskip("ruff")
    bad = tmp_path / "bad.py"
    bad.write_text("x = {'a':1}\n")  # quotes and spacing the formatter rewrites
    done = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "--config",
                           str(ROOT / "pyproject.toml"), str(bad)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "bad.py" in done.stdout


def test_package_passes_pyright():
    """pyright with [tool.pyright] of pyproject.toml (basic mode) finds no error in the package; about a minute."""
    pytest.importorskip("pyright")  # in the `test` extra, pinned; it fetches its Node.js package on first use
    env = {**os.environ, "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}  # no "a new pyright version is available" notice
    command = [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable]  # this environment
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    report = json.loads(done.stdout)
    errors = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]
    assert report["summary"]["errorCount"] == 0, "\n".join(errors)
    assert report["summary"]["filesAnalyzed"] > 50  # the package was checked, not an empty selection
