"""The persistent compilation cache: a repeated `assim run` (other noise and seed too) compiles nothing cacheable again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from assim import compile_cache

CASE = Path(__file__).resolve().parents[1] / "cases" / "quickstart.toml"
TINY = ["--set", "grid.n=12", "--set", "time.n_steps=4", "--set", "outputs.figures=false",
        "--set", "solver.max_outer=2"]  # fmt: skip


def _run(out: Path, *options: str, env: dict | None = None) -> dict:
    """`assim run` of the tiny quickstart in a fresh process; the `compilations` entry of its metrics.json."""
    command = [sys.executable, "-m", "assim.cli", "run", str(CASE), "--out", str(out), "-q", *TINY, *options]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    assert proc.returncode in (0, 3), proc.stderr
    return json.loads((out / "metrics.json").read_text())["compilations"]


def test_second_run_and_other_values_compile_nothing_cacheable(tmp_path):
    cache = tmp_path / "cache"
    first = _run(tmp_path / "a", "--cache-dir", str(cache))
    assert first["cache_dir"] == str(cache.resolve())
    assert first["cache_writes"] > 0 and any(cache.iterdir())
    entries = set(cache.iterdir())
    second = _run(tmp_path / "b", "--cache-dir", str(cache))
    # every program JAX can cache is loaded; only those with host callbacks (eqx.error_if) compile again
    assert second["cache_writes"] == 0 and second["cache_hits"] > 0
    assert second["compilations"] == second["uncacheable"]
    other = _run(tmp_path / "c", "--set", "observations.noise=0.1", "--set", "observations.seed=7",
                 env={compile_cache.ENV: str(cache)})  # fmt: skip
    assert other["cache_writes"] == 0 and other["compilations"] == other["uncacheable"]
    assert {p.name for p in cache.iterdir()} == {p.name for p in entries}


def test_no_cache_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    counts = _run(tmp_path / "a", "--no-cache", env={compile_cache.ENV: str(cache)})
    assert counts["cache_dir"] is None and counts["cache_writes"] == 0 and counts["cache_hits"] == 0
    assert not cache.exists() or not any(cache.iterdir())


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.delenv(compile_cache.DISABLED, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.directory() == tmp_path / "assim" / "jax"
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
    assert compile_cache.directory() == tmp_path / "mine"
    monkeypatch.setenv(compile_cache.DISABLED, "1")
    assert compile_cache.directory() is None


@pytest.mark.parametrize("option", [["--cache-dir", "x"], ["--no-cache"]])
def test_case_commands_take_the_options(option):
    from assim.cli import build_parser

    for command in ("run", "train", "discover", "sweep"):
        args = build_parser().parse_args([command, "case.toml", *option])
        assert hasattr(args, "cache_dir") and hasattr(args, "no_cache")


def test_an_unwritable_cache_dir_is_one_line(tmp_path, capsys):
    from assim.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", str(CASE), "--out", str(tmp_path / "out"), "-q", *TINY, "--cache-dir", str(blocker / "x")]) == 2
    err = capsys.readouterr().err
    assert "compilation cache directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert compile_cache.directory() != blocker / "x"  # the choice lasted one command
