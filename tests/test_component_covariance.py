"""ComponentCovariance: per-component action, exact variances, and bad input (adjoint contract: test_contracts.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from assim.covariances.component import ComponentCovariance
from assim.covariances.covariance import DiagonalCovariance, SpectralGaussianCovariance
from assim.errors import GridMismatchError, InputError
from models import CartesianGrid, Periodic

GRID = CartesianGrid((8, 6), (1.0, 0.75), Periodic())
VARIANCE = 0.5 + jax.random.uniform(jax.random.PRNGKey(0), GRID.shape)
BLOCKS = (SpectralGaussianCovariance(GRID, VARIANCE, 0.15), DiagonalCovariance(GRID, 2.0))
COV = ComponentCovariance(BLOCKS)
N = 2 * GRID.size


@pytest.fixture(scope="module")
def dense():
    """Dense B^{1/2} and (B^{1/2})ᵀ of the (2, ny, nx) state, column by column."""
    eye = jnp.eye(N).reshape((N, 2) + GRID.shape)
    s = jax.jit(jax.vmap(COV.sqrt))(eye).reshape(N, N).T
    st = jax.jit(jax.vmap(COV.sqrt_adjoint))(eye).reshape(N, N).T
    return np.asarray(s), np.asarray(st)


def test_components_are_independent_and_match_their_blocks(dense):
    s, _ = dense
    m = GRID.size
    assert np.all(s[:m, m:] == 0) and np.all(s[m:, :m] == 0)  # no cross-component correlation
    v = jax.random.normal(jax.random.PRNGKey(2), (2,) + GRID.shape)
    out = COV.sqrt(v)
    np.testing.assert_allclose(out[0], BLOCKS[0].sqrt(v[0]), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(out[1], BLOCKS[1].sqrt(v[1]), rtol=1e-14, atol=1e-14)


def test_diagonal_of_b_is_each_components_variance(dense):
    s, _ = dense
    diag = np.einsum("ij,ij->i", s, s).reshape((2,) + GRID.shape)
    np.testing.assert_allclose(diag[0], VARIANCE, rtol=1e-12)
    np.testing.assert_allclose(diag[1], 2.0, rtol=1e-12)


def test_prepare_keeps_the_operator():
    v = jax.random.normal(jax.random.PRNGKey(3), (2,) + GRID.shape)
    np.testing.assert_allclose(COV.prepare().apply(v), COV.apply(v), rtol=1e-14, atol=1e-14)


def test_bad_input_says_what_to_change():
    with pytest.raises(InputError, match="one background covariance per state component"):
        ComponentCovariance([])
    with pytest.raises(InputError, match="one background covariance per state component"):
        ComponentCovariance([VARIANCE])
    with pytest.raises(GridMismatchError, match="2 blocks but the state has shape"):
        COV.sqrt(jnp.zeros((3,) + GRID.shape))
