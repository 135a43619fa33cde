"""Your own model: a model defined only in this test runs through `assim run`, `assim discover` and the Python API."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from assim import (
    DiagonalCovariance,
    GaussNewton,
    GriddedObservation,
    ObservationNetwork,
    StrongConstraint4DVar,
    twin_experiment,
)
from assim.cli import main
from models import CartesianGrid, Periodic
from models.function_model import FunctionModel
from models.rollout import integrate

MODULE = '''
import equinox as eqx
import jax.numpy as jnp
from models.base import AbstractModel


class Relaxation(AbstractModel):
    """Explicit diffusion plus nonlinear relaxation towards zero: u += dt (D Δu - r u³)."""

    dt: float = eqx.field(static=True)
    shape: tuple = eqx.field(static=True)
    spacing: float = eqx.field(static=True)
    diffusivity: jnp.ndarray
    rate: jnp.ndarray

    def step(self, state, t=0.0):
        lap = sum(jnp.roll(state, s, a) for a in range(state.ndim) for s in (1, -1)) - 2 * state.ndim * state
        return state + self.dt * (self.diffusivity * lap / self.spacing**2 - self.rate * state**3)

    def state_shape(self):
        import jax
        return jax.ShapeDtypeStruct(self.shape, float)


def make(grid, dt, diffusivity=0.1, rate=1.0):
    return Relaxation(dt, tuple(grid.shape), float(grid.spacing[0]), jnp.asarray(diffusivity), jnp.asarray(rate))


def damped_step(state, t, parameters):
    return state * (1.0 - parameters["damping"]) + 0.01 * jnp.sin(state)


def wrong_step(state, t, parameters):
    return state[:-1]
'''

CASE = """
name = "own_model"
[model]
kind = "python"
file = "my_model.py"
attribute = "{attribute}"
form = "{form}"
parameters = {parameters}
initial = {{ centre = [0.5, 0.5], width = 0.15, amplitude = 1.0, wave = 0.2 }}
[grid]
n = 8
ndim = 2
[time]
n_steps = 10
dt = 0.01
[observations]
network = {{ kind = "random_fraction", fraction = 0.4 }}
every = 2
noise = 0.02
[background]
kind = "spectral_gaussian"
variance = 0.04
length_scale = 0.2
[solver]
kind = "gauss_newton"
max_outer = 5
{extra}
"""


def write_case(tmp_path, attribute="make", form="factory", parameters="{ diffusivity = 0.1, rate = 1.0 }", extra=""):
    (tmp_path / "my_model.py").write_text(MODULE)
    path = tmp_path / f"case_{attribute}.toml"
    path.write_text(CASE.format(attribute=attribute, form=form, parameters=parameters, extra=extra))
    return path


def test_a_factory_model_defined_in_the_test_runs_through_assim_run(tmp_path):
    case = write_case(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(case), "--out", str(out), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["converged"] and metrics["analysis_rmse"] < 0.5 * metrics["background_rmse"], metrics


def test_a_step_function_runs_through_assim_run(tmp_path):
    case = write_case(tmp_path, "damped_step", "step", "{ damping = 0.05 }")
    out = tmp_path / "out"
    assert main(["run", str(case), "--out", str(out), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["analysis_rmse"] < 0.5 * metrics["background_rmse"], metrics


def test_the_own_models_parameters_are_discoverable(tmp_path):
    extra = '[truth.parameters]\nrate = 3.0\n[discover.parameters]\nrate = { kind = "lognormal", median = 1.5, log_std = 1.0 }'
    case = write_case(tmp_path, extra=extra)
    out = tmp_path / "discover"
    assert main(["discover", str(case), "--out", str(out), "-q"]) == 0
    report = json.loads((out / "discovery.json").read_text())
    rate = report["parameters"]["rate"]
    assert abs(rate["estimate"] - 3.0) < abs(1.5 - 3.0), rate  # moved from the prior towards the truth


@pytest.mark.parametrize(
    "attribute, form, message",
    [
        ("wrong_step", "step", "same structure"),
        ("missing", "factory", "no callable 'missing'"),
        ("damped_step", "factory", "failed"),
    ],
)
def test_a_model_that_breaks_the_interface_is_one_line(tmp_path, capsys, attribute, form, message):
    case = write_case(tmp_path, attribute, form, "{ damping = 0.05 }")
    out = tmp_path / "bad"
    assert main(["run", str(case), "--out", str(out), "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_function_model_in_the_python_api_matches_its_step_and_differentiates():
    grid = CartesianGrid((16,), (1.0,), Periodic())

    def step(u, t, p):
        return u + p["dt_nu"] * (jnp.roll(u, 1) - 2 * u + jnp.roll(u, -1)) - 0.1 * u**2

    model = FunctionModel(step, 0.1, jnp.zeros(16), {"dt_nu": 0.2})
    x0 = jnp.sin(2 * np.pi * jnp.arange(16) / 16)
    expected = x0
    for _ in range(5):
        expected = step(expected, 0.0, {"dt_nu": 0.2})
    np.testing.assert_allclose(integrate(model, x0, 5), expected, rtol=1e-14)
    network = ObservationNetwork.every(GriddedObservation(grid, np.arange(0, 16, 2)), 1, 6, sigma=0.05)
    B = DiagonalCovariance(grid, 0.1)
    twin = twin_experiment(jax.random.PRNGKey(0), model, x0, 6, network, B)
    problem = StrongConstraint4DVar(model, twin.background, B, twin.observations, n_steps=6)
    result = GaussNewton(max_outer=8).solve(problem)
    assert result.converged
    err_a = float(jnp.sqrt(jnp.mean((result.x0 - twin.truth[0]) ** 2)))
    err_b = float(jnp.sqrt(jnp.mean((twin.background - twin.truth[0]) ** 2)))
    assert err_a < 0.7 * err_b
