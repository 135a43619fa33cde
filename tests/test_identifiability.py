"""Identifiability of discovered parameters: the matrix-free parameter-block quantities against the dense Hessian
(18 controls), an invisible parameter flagged unconstrained while a well-observed κ is not, `assim discover`'s
outputs carry them, bad priors and thresholds get one-line errors."""

import json

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import xarray as xr

from assim.cli import main
from assim.covariances.covariance import SpectralGaussianCovariance
from assim.errors import InputError
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation
from assim.problems.identifiability import identifiability, pattern_rms
from assim.problems.parameter_control import (
    GaussianPrior,
    JointControl,
    LogNormalPrior,
    ParameterControl4DVar,
    parameter_posterior,
)
from assim.solvers.gauss_newton import GaussNewton, LevenbergMarquardt
from models import CartesianGrid, Periodic
from models.advection_diffusion import IMEX, AdvectionDiffusion
from models.rollout import rollout

GRID = CartesianGrid((16,), (1.0,), Periodic())
TIGHT = lx.CG(rtol=1e-13, atol=1e-13, max_steps=100)
X = GRID.coords()["x"]
X0 = jnp.asarray(np.sin(2 * np.pi * X) + 0.5 * np.cos(6 * np.pi * X))
N_STEPS, STEPS = 10, (2, 4, 6, 8, 10)
B = SpectralGaussianCovariance(GRID, 0.1, 0.1)
WHERE = lambda m: (m.kappa, m.wind_scale)  # noqa: E731
PRIORS = (LogNormalPrior(0.01, 1.0), LogNormalPrior(0.8, 0.5))
GN = GaussNewton(damping=LevenbergMarquardt(), max_outer=20, cg_max_steps=60, cg_tol=1e-12, gtol=1e-8)
POSTERIOR_CG = lx.CG(rtol=1e-13, atol=1e-13, max_steps=200)


def model(kappa, wind, speed=0.5):
    return AdvectionDiffusion(GRID, (speed * jnp.ones(16),), kappa, 0.05, IMEX(), wind_scale=wind, solver=TIGHT)


def analysis(speed, sigma=0.02):
    """A twin (κ = 0.02, s = 1) observed at every other cell; joint analysis and its posterior."""
    truth = rollout(model(0.02, 1.0, speed), X0, N_STEPS)
    operator = GriddedObservation(GRID, np.arange(0, 16, 2))
    clean = jnp.stack([operator.apply(truth[s]) for s in STEPS])
    noise = jax.random.normal(jax.random.PRNGKey(5), clean.shape)
    obs = ObservationSet(operator, STEPS, clean + sigma * noise, sigma)
    background = X0 + B.sqrt(jax.random.normal(jax.random.PRNGKey(3), GRID.shape))
    problem = ParameterControl4DVar(model(0.01, 0.8, speed), WHERE, PRIORS, background, B, obs, n_steps=N_STEPS)
    result = GN.solve(problem)
    assert bool(result.converged), result.message()
    post = parameter_posterior(problem, result.v, POSTERIOR_CG)
    return problem, result.v, post, identifiability(problem, post)


@pytest.fixture(scope="module")
def windy():
    return analysis(0.5)


def test_parameter_block_quantities_equal_the_dense_computation(windy):
    problem, control, post, ident = windy

    def flat_residual(z):
        r = problem.residual(JointControl(z[:16], (z[16], z[17])))
        return jnp.concatenate([x.reshape(-1) for x in jax.tree_util.tree_leaves(r)])

    z = jnp.concatenate([control.v, jnp.stack(control.p)])
    jac = np.asarray(jax.jit(jax.jacfwd(flat_residual))(z))  # 18 controls: test only
    h = jac.T @ jac
    c = np.linalg.inv(h)
    v, p = slice(0, 16), slice(16, 18)
    cpp = c[p, p]
    np.testing.assert_allclose(ident.correlation, cpp / np.sqrt(np.outer(np.diag(cpp), np.diag(cpp))), rtol=1e-8)
    schur = h[p, p] - h[p, v] @ np.linalg.solve(h[v, v], h[v, p])  # marginal precision of p, formed directly
    np.testing.assert_allclose(ident.schur_eigenvalues, np.linalg.eigvalsh(schur), rtol=1e-8)
    np.testing.assert_allclose(ident.block_eigenvalues, np.linalg.eigvalsh(h[p, p]), rtol=1e-8)
    np.testing.assert_allclose(post.precision_block, h[p, p], rtol=1e-8)
    # multiple correlation of p_i with v, from the covariance blocks: ρ² = C_iv C_vv⁻¹ C_vi / C_ii
    rho2 = np.array([c[16 + i, v] @ np.linalg.solve(c[v, v], c[v, 16 + i]) / c[16 + i, 16 + i] for i in range(2)])
    np.testing.assert_allclose(ident.state_correlation, np.sqrt(rho2), rtol=1e-8)
    sqrt_b = np.asarray(jax.vmap(B.sqrt)(jnp.eye(16))).T  # columns B^½ e_j
    pattern = (sqrt_b @ c[v, p]) / np.sqrt(np.diag(cpp))
    np.testing.assert_allclose(ident.state_pattern, pattern.T, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ident.std_ratio, np.sqrt(np.diag(cpp)), rtol=1e-8)
    np.testing.assert_allclose(pattern_rms(ident), np.sqrt(np.mean(pattern**2, axis=0)), rtol=1e-8)
    assert np.all(np.linalg.eigvalsh(schur) > 1.0)  # the data add to the prior's unit precision
    assert not np.any(ident.unconstrained)  # κ and s are both seen by a moving, diffusing tracer


def test_a_parameter_the_observations_cannot_see_is_flagged():
    """No wind: the wind scale multiplies zero and leaves the observations unchanged, κ is still well observed."""
    _, _, post, ident = analysis(0.0)
    kappa, wind = 0, 1
    assert bool(ident.unconstrained[wind]) and not bool(ident.unconstrained[kappa])
    np.testing.assert_allclose(ident.std_ratio[wind], 1.0, rtol=1e-8)  # posterior = prior exactly
    assert float(ident.std_ratio[kappa]) < 0.5
    assert abs(float(ident.correlation[0, 1])) < 1e-8 and float(ident.state_correlation[wind]) < 1e-6
    np.testing.assert_allclose(float(post.std[wind]), 0.8 * 0.5, rtol=1e-8)  # the prior's delta-method std of s


def test_too_noisy_observations_leave_kappa_unconstrained():
    _, _, _, ident = analysis(0.5, sigma=1e3)
    assert bool(np.all(ident.unconstrained))


from test_discover_cli import L96  # noqa: E402  (the same tiny Lorenz-96 discovery case)


def test_discover_reports_identifiability(tmp_path):
    case = tmp_path / "l96.toml"
    case.write_text(L96)
    out = tmp_path / "out"
    assert main(["discover", str(case), "--out", str(out), "-q"]) == 0
    report = json.loads((out / "discovery.json").read_text())
    r, ident = report["parameters"]["forcing"], report["identifiability"]
    assert r["unconstrained"] is False and 0 < r["control_std_ratio"] < 0.2
    assert r["control_std_ratio"] == pytest.approx(r["std"] / 1.0, rel=1e-10)  # Gaussian prior, std 1
    assert 0 <= r["state_correlation"] <= 1 and r["state_pattern_rms"] > 0
    assert ident["unconstrained"] == [] and ident["unconstrained_threshold"] == 0.9
    assert ident["schur_eigenvalues"][0] == pytest.approx(1 / r["control_std_ratio"] ** 2, rel=1e-8)
    with xr.open_dataset(out / "discovery.nc") as ds:
        assert int(ds.parameter_unconstrained[0]) == 0
        assert float(ds.parameter_state_correlation[0]) == r["state_correlation"]
        assert list(ds.parameter_schur_eigenvalues.values) == ident["schur_eigenvalues"]
    assert "| corr. with state | constrained |" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GaussianPrior(0.0, 0.0), "prior std"),
        (lambda: GaussianPrior(1.0, -2.0), "prior std"),
        (lambda: LogNormalPrior(1.0, 0.0), "prior log_std"),
    ],
)
def test_non_positive_prior_std_is_a_one_line_error(make, message):
    with pytest.raises(InputError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_bad_threshold_is_a_one_line_error(windy):
    problem, _, post, _ = windy
    with pytest.raises(InputError, match="threshold") as err:
        identifiability(problem, post, threshold=0.0)
    assert "\n" not in str(err.value)
