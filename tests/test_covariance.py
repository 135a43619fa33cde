"""Background covariances B^{1/2} and R: symmetry, normalised variances, correlation shape, bad input (adjoint,
transpose, vmap, jit and variance/length-scale gradient contracts: tests/test_contracts.py over tests/registry.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from assim.covariances.covariance import (
    BlockCovariance,
    DiagonalCovariance,
    DiagonalObservationError,
    SpectralGaussianCovariance,
)
from assim.covariances.diffusion import (
    DiffusionCovariance,
    ExactNormalisation,
    RandomisedNormalisation,
)
from assim.errors import GridMismatchError, InputError
from models import CartesianGrid, Dirichlet, LatLonGrid, Neumann, Periodic

TIGHT = lx.CG(rtol=1e-14, atol=1e-14, max_steps=500)
PERIODIC = CartesianGrid((8, 8), (1.0, 1.0), Periodic())
WALLED = CartesianGrid((8, 6), (1.0, 0.8), (Neumann(), Dirichlet(0.0)))
LATLON = LatLonGrid(np.arange(-75.0, 76.0, 25.0), np.arange(0.0, 360.0, 30.0), radius=1.0)
KEY = jax.random.PRNGKey(0)
VARIANCE = 0.5 + jax.random.uniform(KEY, PERIODIC.shape)  # a variance field


@eqx.filter_jit
def probe(cov):
    """Dense B^{1/2} and (B^{1/2})ᵀ, column by column from the operators (tiny grids, tests only)."""
    n = cov.grid.size
    eye = jnp.eye(n).reshape((n,) + cov.grid.shape)
    columns = (jax.vmap(cov.sqrt)(eye), jax.vmap(cov.sqrt_adjoint)(eye))
    return tuple(c.reshape(n, n).T for c in columns)


COVARIANCES = {
    "diagonal": lambda: DiagonalCovariance(PERIODIC, VARIANCE),
    "spectral-2d": lambda: SpectralGaussianCovariance(PERIODIC, VARIANCE, 0.15),
    "diffusion-periodic-exact": lambda: DiffusionCovariance(PERIODIC, VARIANCE, 0.15, 4, solver=TIGHT),
    "diffusion-walls-exact": lambda: DiffusionCovariance(WALLED, 0.7, 0.2, 4, solver=TIGHT),
    "diffusion-latlon-randomised": lambda: DiffusionCovariance(
        LATLON, 0.7, 0.5, 4, RandomisedNormalisation(KEY, n_samples=400), solver=TIGHT
    ),
}
EXACT_DIAGONAL = {"diagonal", "spectral-2d", "diffusion-periodic-exact", "diffusion-walls-exact"}


@pytest.fixture(scope="module", params=sorted(COVARIANCES))
def probed(request):
    cov = eqx.filter_jit(lambda c: c.prepare())(COVARIANCES[request.param]())
    s, st = (np.asarray(m) for m in probe(cov))
    return request.param, cov, s, st, s @ st  # B = B^{1/2} (B^{1/2})ᵀ as the operators apply it


def test_b_is_symmetric_positive_semidefinite(probed):
    _, _, _, _, dense = probed
    assert np.abs(dense - dense.T).max() <= 1e-10 * np.abs(dense).max()
    assert np.linalg.eigvalsh(0.5 * (dense + dense.T)).min() > -1e-10


def test_diagonal_of_b_is_the_requested_variance(probed):
    name, cov, _, _, dense = probed
    ratio = np.diag(dense).reshape(cov.grid.shape) / np.asarray(cov.variance)
    if name in EXACT_DIAGONAL:
        np.testing.assert_allclose(ratio, 1.0, rtol=1e-10)
    else:  # Hutchinson estimate with 400 Rademacher probes: relative error ~ √(2/400) ≈ 0.07 per cell at most
        assert abs(ratio.mean() - 1.0) < 0.03
        assert np.sqrt(np.mean((ratio - 1.0) ** 2)) < 0.1
        assert np.abs(ratio - 1.0).max() < 0.3


def test_randomised_normalisation_matches_the_exact_one_statistically():
    cov = DiffusionCovariance(WALLED, 1.0, 0.2, 4, solver=TIGHT)
    exact = ExactNormalisation().factors(cov)
    n = 200
    est = eqx.filter_jit(lambda c: RandomisedNormalisation(jax.random.PRNGKey(3), n).factors(c))(cov)
    rel = np.asarray(est / exact - 1.0)
    # the estimate of diag is unbiased with relative std ≤ √(2/n); Λ = diag^{-1/2} halves it
    bound = 0.5 * np.sqrt(2 / n)
    assert np.sqrt(np.mean(rel**2)) < bound
    assert abs(rel.mean()) < 3 * bound / np.sqrt(10)  # cells are far from independent; a loose bound on the bias
    assert np.sqrt(np.mean(rel**2)) > 1e-3  # it is an estimate, not the exact factor


def test_spectral_correlation_is_gaussian_with_the_requested_length_scale():
    grid = CartesianGrid((64,), (1.0,), Periodic())
    ell = 0.06
    cov = SpectralGaussianCovariance(grid, 2.0, ell)
    column = cov.apply(jnp.zeros(64).at[0].set(1.0)) / 2.0
    r = np.minimum(np.arange(64), 64 - np.arange(64)) / 64.0
    np.testing.assert_allclose(column, np.exp(-0.5 * r**2 / ell**2), atol=1e-12)


def test_diffusion_correlation_is_the_weaver_courtier_operator_and_tends_to_gaussian():
    n, ell, centre = 64, 0.08, 32
    grid = CartesianGrid((n,), (1.0,), Neumann())
    h = grid.spacing[0]
    cov = DiffusionCovariance(grid, 1.0, ell, 10, solver=TIGHT)
    column = np.asarray(eqx.filter_jit(lambda c, e: c.prepare().apply(e))(cov, jnp.zeros(n).at[centre].set(1.0)))

    def dense_column(m):  # Λ (I + κT)^{-M} Λ e_c with the 1-D Neumann second difference T, κ = ℓ²/2M
        t = (2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)) / h**2
        t[0, 0] = t[-1, -1] = 1 / h**2
        lm = np.linalg.matrix_power(np.linalg.inv(np.eye(n) + ell**2 / (2 * m) * t), m)
        lam = 1 / np.sqrt(np.diag(lm))
        return lam * lm[:, centre] * lam[centre]

    np.testing.assert_allclose(column, dense_column(10), atol=1e-12)
    x = grid.coords()["x"]
    gauss = np.exp(-0.5 * (x - x[centre]) ** 2 / ell**2)
    errors = [np.abs(dense_column(m) - gauss).max() for m in (4, 16, 64)]
    assert errors[0] > 3 * errors[1] and errors[1] > 2 * errors[2]  # ≈ 1/M until the grid's own error shows
    assert np.abs(column - gauss).max() < 0.06


def test_block_covariance_acts_per_component():
    blocks = (DiagonalCovariance(PERIODIC, 4.0), SpectralGaussianCovariance(PERIODIC, 1.0, 0.2))
    cov = BlockCovariance(blocks)
    v = (jnp.ones(PERIODIC.shape), jax.random.normal(KEY, PERIODIC.shape))
    out = cov.sqrt(v)
    np.testing.assert_allclose(out[0], 2.0 * v[0])
    np.testing.assert_allclose(out[1], blocks[1].sqrt(v[1]))
    np.testing.assert_allclose(cov.sqrt_adjoint(v)[1], blocks[1].sqrt_adjoint(v[1]))


def test_diagonal_observation_error_weights_and_masks():
    r = DiagonalObservationError(jnp.array([[0.5, -1.0, 2.0, jnp.nan]]), jnp.array([[True, True, False, True]]))
    np.testing.assert_array_equal(r.mask, [[True, False, False, False]])
    np.testing.assert_allclose(r.inv_sqrt(jnp.array([[1.0, 5.0, 7.0, jnp.inf]])), [[2.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(r.weights, [[4.0, 0.0, 0.0, 0.0]])


def test_bad_covariance_settings_raise():
    with pytest.raises(InputError, match="periodic on every axis"):
        SpectralGaussianCovariance(WALLED, 1.0, 0.1)
    with pytest.raises(InputError, match="scalar length scale"):
        SpectralGaussianCovariance(PERIODIC, 1.0, jnp.ones(PERIODIC.shape))
    with pytest.raises(InputError, match="must be even"):
        DiffusionCovariance(PERIODIC, 1.0, 0.1, 3)
    with pytest.raises(InputError, match="positive everywhere"):
        DiagonalCovariance(PERIODIC, -1.0)
    with pytest.raises(GridMismatchError, match="field of shape"):
        DiffusionCovariance(PERIODIC, jnp.ones((4, 4)), 0.1)
    with pytest.raises(InputError, match="RandomisedNormalisation"):
        DiffusionCovariance(LATLON, 1.0, 0.3, 4).prepare()
    with pytest.raises(InputError, match="RandomisedNormalisation"):
        DiffusionCovariance(PERIODIC, 1.0, jnp.full(PERIODIC.shape, 0.1), 4).prepare()
