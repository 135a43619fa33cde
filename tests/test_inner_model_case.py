"""[solver.inner_model]: a cheaper variant of the case's [model] runs the inner loop; the fixed point stays the case's."""

import subprocess
import sys
import tomllib

import jax
import lineax as lx
import numpy as np
import pytest

from assim.case.build import build
from assim.case.config import validate
from assim.case.experiment import make_solver
from assim.problems.cost import StrongConstraint4DVar
from assim.solvers.inner_model import InnerModel, SameModel
from models.advection_diffusion import AdvectionDiffusion
from models.operators import Upwind
from models.time_schemes import BackwardEuler

CASE = """
name = "inner"
[model]
kind = "advection_diffusion"
kappa = 2e-3
scheme = "crank_nicolson"
advection = "centred"
[grid]
n = 12
ndim = 2
boundary = "periodic"
[time]
n_steps = 4
dt = 0.05
[observations]
network = { kind = "random_fraction", fraction = 0.4 }
every = 2
noise = 0.05
[background]
kind = "spectral_gaussian"
variance = 0.04
length_scale = 0.15
[solver]
kind = "gauss_newton"
max_outer = 6
cg_max_steps = 200
cg_tol = 1e-10
gtol = 1e-9
"""


def case(inner: dict | None = None, **model):
    data = tomllib.loads(CASE)
    data["model"].update(model)
    if inner is not None:
        data["solver"]["inner_model"] = inner
    return validate(data)


def solve(c):
    exp = build(c)
    problem = StrongConstraint4DVar(exp.model, exp.twin.background, exp.covariance, exp.twin.observations,
                                    n_steps=c.time.n_steps)  # fmt: skip
    return exp, problem, exp.solver.solve(problem)


def test_a_looser_inner_model_reaches_the_same_analysis():
    _, problem, same = solve(case())
    exp, _, loose = solve(case({"kind": "model", "tolerance": 1e-4}))
    assert isinstance(exp.solver.inner_model, InnerModel)
    assert bool(same.converged) and bool(loose.converged)
    a, b = np.asarray(same.x0), np.asarray(loose.x0)
    assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(a)), np.max(np.abs(a - b))
    # the fixed point is the problem's: its own gradient (case model, tight tolerance) vanishes there
    g0 = np.linalg.norm(np.asarray(jax.grad(problem.cost)(0.0 * loose.v)))
    g = np.linalg.norm(np.asarray(jax.grad(problem.cost)(loose.v)))
    assert g <= 1e-6 * g0, (g, g0)


def test_the_built_inner_model_has_the_requested_settings():
    c = case({"kind": "model", "advection": "upwind", "scheme": "backward_euler", "tolerance": 1e-4})
    solver = make_solver(c, shape=(12, 12))  # the inner model on the case's [grid]
    inner = solver.inner_model
    assert isinstance(inner, InnerModel) and isinstance(inner.model, AdvectionDiffusion)
    assert isinstance(inner.model.scheme, BackwardEuler) and isinstance(inner.model.advection_scheme, Upwind)
    assert isinstance(inner.model.solver, lx.GMRES)
    assert inner.model.solver.rtol == inner.model.solver.atol == 1e-4
    assert inner.model.grid.shape == (12, 12) and float(inner.model.kappa) == 2e-3  # the rest is the case's model
    assert isinstance(make_solver(case(), shape=(12, 12)).inner_model, SameModel)  # the default


def test_the_case_model_takes_its_tolerance():
    exp = build(case(tolerance=1e-6))
    assert exp.model.solver.rtol == exp.model.solver.atol == 1e-6
    assert build(case()).model.solver.rtol == 1e-10  # the default stays the model's own


@pytest.mark.parametrize(("inner", "message"), [
    ('{ kind = "model", advektion = "upwind" }',
     "solver.inner_model.advektion: model.kind 'advection_diffusion' has no key 'advektion'"),
    ('{ kind = "diffusion" }', "solver.inner_model.kind: unknown kind 'diffusion'"),
    ('{ kind = "model", tolerance = -1 }', "solver.inner_model.tolerance: input should be greater than 0"),
])  # fmt: skip
def test_a_bad_inner_model_is_one_line_from_assim_validate(tmp_path, inner, message):
    path = tmp_path / "case.toml"
    path.write_text(CASE)
    proc = subprocess.run([sys.executable, "-m", "assim.cli", "validate", str(path), "--set",
                           f"solver.inner_model={inner}"], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"assim: error: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
