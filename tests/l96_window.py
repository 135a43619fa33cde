"""A tiny Lorenz-96 4D-Var window shared by the unrolled-solver, loss, hypergradient and training tests."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from assim.covariances.covariance import DiagonalCovariance
from assim.observations.operators import GriddedObservation
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.twin import ObservationNetwork, twin_experiment
from models import CartesianGrid, Periodic
from models.lorenz96 import Lorenz96

N = 8
N_STEPS = 6
RING = CartesianGrid((N,), (float(N),), Periodic())
MODEL = Lorenz96(N, 8.0, 0.05)
B = DiagonalCovariance(RING, 0.5)
H = GriddedObservation(RING, np.arange(N))
NETWORK = ObservationNetwork.every(H, 2, N_STEPS, 0.5)
X_TRUE = 8.0 + jax.random.normal(jax.random.PRNGKey(0), (N,))


def window(seed: int = 1, x_true=X_TRUE) -> tuple[StrongConstraint4DVar, jax.Array]:
    """(4D-Var problem of a twin window, true initial state) from a seed."""
    twin = twin_experiment(jax.random.PRNGKey(seed), MODEL, x_true, N_STEPS, NETWORK, B)
    return StrongConstraint4DVar(MODEL, twin.background, B, twin.observations, n_steps=N_STEPS), twin.truth[0]


def with_parameters(problem: StrongConstraint4DVar, variance, forcing, error_scale=1.0) -> StrongConstraint4DVar:
    """The same window with B variance, Lorenz-96 forcing and a factor on σ_obs replaced (outer parameters φ)."""
    sigma = problem.observations[0].error.sigma
    return eqx.tree_at(
        lambda p: (p.covariance.variance, p.model.forcing, p.observations[0].error.sigma),
        problem,
        (variance, forcing, error_scale * sigma),
    )


SOLVE = eqx.filter_jit(lambda solver, problem: solver.solve(problem))
ZEROS = jnp.zeros(N)
