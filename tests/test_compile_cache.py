"""The persistent compilation cache: a repeated `assim run` (other noise and seed too) compiles nothing cacheable again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from assim import compile_cache
from assim.covariances.covariance import DiagonalCovariance
from assim.errors import ConvergenceError, NonFiniteError
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation
from assim.problems.cost import StrongConstraint4DVar
from assim.solvers.gauss_newton import NONFINITE, GaussNewton
from models import CartesianGrid, Periodic
from models.burgers import Burgers
from models.diffusion import Diffusion
from models.lorenz96 import Lorenz96
from models.rollout import integrate, rollout

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
    assert first["uncacheable"] == 0  # no program holds a host callback (failed checks poison with NaN)
    entries = set(cache.iterdir())
    second = _run(tmp_path / "b", "--cache-dir", str(cache))
    # every program is loaded: nothing compiles again
    assert second["cache_writes"] == 0 and second["cache_hits"] > 0
    assert second["compilations"] == 0 and second["uncacheable"] == 0
    other = _run(tmp_path / "c", "--set", "observations.noise=0.1", "--set", "observations.seed=7",
                 env={compile_cache.ENV: str(cache)})  # fmt: skip
    assert other["cache_writes"] == 0 and other["compilations"] == 0
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

    for command in ("validate", "run", "train", "discover", "sweep"):
        args = build_parser().parse_args([command, "case.toml", *option])
        assert hasattr(args, "cache_dir") and hasattr(args, "no_cache")


def test_validate_caches_the_programs_of_its_check(tmp_path):
    """`assim validate` builds the network (jax.random sampling): a repeated validate loads those programs."""
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "assim.cli", "validate", str(CASE), "--cache-dir", str(cache)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and "valid" in first.stdout, first.stderr
    entries = {p.name for p in cache.iterdir()}
    assert entries  # the check's programs were written
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and {p.name for p in cache.iterdir()} == entries  # nothing new: all loaded
    none = subprocess.run([*command[:-2], "--no-cache"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, compile_cache.ENV: str(tmp_path / "other")})  # fmt: skip
    assert none.returncode == 0 and not (tmp_path / "other").exists()


def test_an_unwritable_cache_dir_is_one_line(tmp_path, capsys):
    from assim.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", str(CASE), "--out", str(tmp_path / "out"), "-q", *TINY, "--cache-dir", str(blocker / "x")]) == 2
    err = capsys.readouterr().err
    assert "compilation cache directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert compile_cache.directory() != blocker / "x"  # the choice lasted one command
    assert main(["validate", str(CASE), "--cache-dir", str(blocker / "x")]) == 2  # validate compiles too
    err = capsys.readouterr().err
    assert "compilation cache directory" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def fresh_cache(tmp_path):
    """In-process compiles write to a fresh persistent cache; the process's own setting comes back afterwards."""
    previous = jax.config.jax_compilation_cache_dir
    compile_cache.configure(tmp_path / "jax")
    yield
    compile_cache.configure(previous)


def _compiled(program, *args) -> dict:
    """Counters of compiling `program(*args)` afresh (a new function: no in-memory cache hit)."""
    since = compile_cache.snapshot()
    jax.block_until_ready(eqx.filter_jit(lambda *a: program(*a))(*args))
    return compile_cache.counts(since)


LINE = CartesianGrid((10,), (1.0,), Periodic())
U = jnp.asarray(0.5 * np.sin(2 * np.pi * np.arange(10) / 10) + 0.2)


def test_model_programs_have_no_host_callbacks(fresh_cache):
    """Runs, tangent-linear and adjoint runs with Newton and Krylov solves are cacheable programs: a failed check
    poisons the state with NaN instead of calling back to the host (eqx.error_if), which JAX does not cache."""
    models = {"burgers": (Burgers(LINE, 0.05, 0.05), U), "diffusion": (Diffusion(LINE, 0.01, 0.05), U),
              "lorenz96": (Lorenz96(12, 8.0, 0.01), jnp.sin(jnp.arange(12.0)))}  # fmt: skip
    runs = {"run": lambda m, x: integrate(m, x, 2),
            "tangent": lambda m, x: jax.jvp(lambda y: integrate(m, y, 2), (x,), (x,))[1],
            "adjoint": lambda m, x: jax.vjp(lambda y: integrate(m, y, 2), x)[1](x)[0]}  # fmt: skip
    for name, (model, x) in models.items():
        for kind, run in runs.items():
            counts = _compiled(run, model, x)
            assert counts["cache_writes"] >= 1 and counts["uncacheable"] == 0, (name, kind, counts)
    # the counter sees a host callback: the zeros above are not for want of looking
    checked = _compiled(lambda x: eqx.error_if(x, jnp.any(x > 1), "too big"), U)
    assert checked["uncacheable"] == 1 and checked["cache_writes"] == 0


def test_a_non_finite_run_still_raises_with_advice():
    """A NaN state or parameter inside a compiled run comes back as NaN, and the checks where results come back
    raise project errors that say what to change; an unconverged Krylov solve is never returned as if solved."""
    model = Diffusion(LINE, 0.01, 0.05)
    poisoned = eqx.filter_jit(rollout)(model, U.at[3].set(jnp.nan), 3)  # as the case layer runs the truth
    assert bool(jnp.all(jnp.isnan(poisoned[1:])))
    with pytest.raises(NonFiniteError, match="the truth run of Diffusion returned NaN or inf: .*implicit solve"):
        model.check_result(poisoned, "the truth run")
    bad = eqx.tree_at(lambda m: m.kappa, model, jnp.asarray(jnp.nan))  # past the constructor's check
    with pytest.raises(NonFiniteError, match="2-step run of Diffusion returned NaN or inf"):
        integrate(bad, U, 2)  # eagerly: the scan is traced, the rollout checks its result
    starved = Diffusion(LINE, 0.01, 0.05, solver=lx.CG(rtol=1e-14, atol=1e-14, max_steps=1))
    with pytest.raises(ConvergenceError, match="Krylov solve failed .*more steps"):
        starved.step(U)  # eagerly: the solve's result is concrete
    assert bool(jnp.all(jnp.isnan(eqx.filter_jit(starved.step)(U))))
    # Gauss-Newton: the non-finite cost is its stop reason, and throw=True raises with the advice
    obs = ObservationSet(GriddedObservation(LINE, np.arange(0, 10, 2)), (1, 2), jnp.zeros((2, 5)), 0.1)
    problem = StrongConstraint4DVar(bad, U, DiagonalCovariance(LINE, 1.0), obs)
    result = GaussNewton(max_outer=2, cg_max_steps=10).solve(problem)
    assert not bool(result.converged) and int(result.reason) == NONFINITE and "implicit" in result.message()
    with pytest.raises(ConvergenceError, match="non-finite .*max_steps"):
        result.check()
