"""Twin experiments: reproducible from the key, independent keys per network, truth = model run, observation noise
N(0, σ²) and background perturbation B^{1/2}ξ with the right statistics, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from assim.covariances.covariance import SpectralGaussianCovariance
from assim.errors import ObservationError
from assim.observations.operators import GriddedObservation, StationObservation
from assim.problems.twin import ObservationNetwork, twin_experiment
from models import CartesianGrid, Periodic
from models.lorenz96 import Lorenz96
from models.rollout import rollout

N = 512  # a long Lorenz-96 ring: many samples per state for the statistics
RING = CartesianGrid((N,), (float(N),), Periodic())
MODEL = Lorenz96(N, 8.0, 0.05)
X0 = 8.0 + jax.random.normal(jax.random.PRNGKey(0), (N,))
B = SpectralGaussianCovariance(RING, 0.25, 2.0)  # σ_b = 0.5, correlation length 2 cells
EVERY_OTHER = GriddedObservation(RING, np.arange(0, N, 2))
SIGMA = 0.7
N_STEPS = 20
NETWORK = ObservationNetwork.every(EVERY_OTHER, 2, N_STEPS, SIGMA)  # steps 0, 2, …, 20
STATIONS = ObservationNetwork(StationObservation(RING, [[10.3], [100.5], [511.9]]), (1, 7), [[0.1, 0.2, 0.3]])


@pytest.fixture(scope="module")
def twin():
    return twin_experiment(jax.random.PRNGKey(42), MODEL, X0, N_STEPS, NETWORK, B)


def test_reproducible_from_the_key(twin):
    again = twin_experiment(jax.random.PRNGKey(42), MODEL, X0, N_STEPS, NETWORK, B)
    np.testing.assert_array_equal(again.observations[0].values, twin.observations[0].values)
    np.testing.assert_array_equal(again.background, twin.background)
    other = twin_experiment(jax.random.PRNGKey(43), MODEL, X0, N_STEPS, NETWORK, B)
    assert not np.allclose(other.observations[0].values, twin.observations[0].values)
    assert not np.allclose(other.background, twin.background)
    np.testing.assert_array_equal(other.truth, twin.truth)  # the truth does not depend on the key
    # a second network changes neither the first network's noise nor the background
    both = twin_experiment(jax.random.PRNGKey(42), MODEL, X0, N_STEPS, (NETWORK, STATIONS), B)
    # another compiled program: equal up to floating-point reassociation (the noise is O(σ) ≫ 1e-12)
    np.testing.assert_allclose(both.observations[0].values, twin.observations[0].values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(both.background, twin.background, rtol=1e-12, atol=1e-12)
    assert both.observations[1].steps == (1, 7) and both.observations[1].values.shape == (2, 3)


def test_truth_is_the_model_run(twin):
    np.testing.assert_allclose(twin.truth, rollout(MODEL, X0, N_STEPS), rtol=1e-13)
    assert twin.truth.shape == (N_STEPS + 1, N)
    assert twin.observations[0].steps == tuple(range(0, N_STEPS + 1, 2))


def test_observation_noise_statistics(twin):
    obs = twin.observations[0]
    z = np.asarray((obs.values - obs.predict(twin.truth)) / SIGMA).ravel()
    n = z.size  # 11 times × 256 stations
    assert abs(z.mean()) < 4.0 / np.sqrt(n)
    assert abs(z.std() - 1.0) < 4.0 / np.sqrt(2 * n)
    # independent in time and space: lag-1 correlations vanish within sampling error
    zt = z.reshape(obs.values.shape)
    assert abs(np.mean(zt[1:] * zt[:-1])) < 4.0 / np.sqrt(n)
    assert abs(np.mean(zt[:, 1:] * zt[:, :-1])) < 4.0 / np.sqrt(n)
    np.testing.assert_allclose(obs.error.sigma, SIGMA)


def test_background_is_truth_plus_correlated_error(twin):
    e = np.asarray(twin.background - twin.truth[0])
    # diag(B) = σ_b² exactly; neighbouring errors correlated as exp(−h²/2ℓ²) = exp(−1/8)
    assert abs(e.std() / 0.5 - 1.0) < 0.15
    lag1 = np.mean(e * np.roll(e, 1)) / np.mean(e**2)
    assert abs(lag1 - np.exp(-1 / 8)) < 0.05


def test_bad_input_raises():
    with pytest.raises(ObservationError, match="after the end of the 20-step truth run"):
        twin_experiment(jax.random.PRNGKey(0), MODEL, X0, N_STEPS, ObservationNetwork(EVERY_OTHER, (25,), 1.0), B)
    with pytest.raises(ObservationError, match="must be positive"):
        ObservationNetwork(EVERY_OTHER, (1, 2), jnp.zeros(256))
    with pytest.raises(ObservationError, match="does not broadcast"):
        ObservationNetwork(EVERY_OTHER, (1, 2), jnp.ones(3))
    with pytest.raises(ObservationError, match="every k ≥ 1"):
        ObservationNetwork.every(EVERY_OTHER, 0, 10, 1.0)
