"""Control vectors on masked grids: wrappers of MaskedCovariance pass its packed (active-cell) zero control through,
and joint state–parameter 4D-Var builds, sizes its control and has a correct gradient there."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from assim.covariances.component import ComponentCovariance
from assim.covariances.covariance import DiagonalCovariance, MaskedCovariance
from assim.covariances.diffusion import DiffusionCovariance, RandomisedNormalisation
from assim.covariances.scaled import ScaledCovariance
from assim.errors import InputError
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation
from assim.problems.parameter_control import (
    JointControl,
    LogNormalPrior,
    ParameterControl4DVar,
)
from models import LatLonGrid
from models.diffusion import Diffusion
from models.rollout import rollout
from models.time_schemes import CrankNicolson
from models.verification import taylor_orders

SEA = np.ones((8, 12), bool)
SEA[3:5, 4:7] = False  # an island
SEA[:6, 9] = False  # a wall from the south coast
GRID = LatLonGrid(np.arange(-70.0, 71.0, 20.0), np.arange(0.0, 360.0, 30.0), radius=1.0, mask=SEA)
N_ACTIVE = int(SEA.sum())
TIGHT = lx.CG(rtol=1e-13, atol=1e-13, max_steps=500)
MASKED = MaskedCovariance(DiagonalCovariance(GRID, 0.5), SEA)


def test_scaled_masked_covariance_gives_active_cell_controls():
    scaled = ScaledCovariance(MASKED, 2.0)
    zero = scaled.zero_control(jnp.zeros(GRID.shape))
    assert zero.shape == (N_ACTIVE,) == (MASKED.n_active,)
    increment = scaled.sqrt(jnp.ones(N_ACTIVE))
    assert increment.shape == GRID.shape and np.all(np.asarray(increment)[~SEA] == 0.0)


def test_component_covariance_of_masked_blocks_gives_active_cell_controls():
    component = ComponentCovariance([MASKED, ScaledCovariance(MASKED, 0.5)])
    zero = component.zero_control(jnp.zeros((2,) + GRID.shape))
    assert zero.shape == (2, N_ACTIVE)
    increment = component.sqrt(jnp.ones((2, N_ACTIVE)))
    assert increment.shape == (2,) + GRID.shape and np.all(np.asarray(increment)[:, ~SEA] == 0.0)
    mixed = ComponentCovariance([MASKED, DiagonalCovariance(GRID, 1.0)])  # packed and full controls do not stack
    with pytest.raises(InputError, match="same control shape"):
        mixed.zero_control(jnp.zeros((2,) + GRID.shape))


def _problem():
    """κ and the initial state of a masked-grid diffusion window, from observations of every other sea cell."""
    model = Diffusion(GRID, 0.3, 0.1, CrankNicolson(), solver=TIGHT)
    lat, lon = (np.deg2rad(a) for a in np.meshgrid(*GRID.coords().values(), indexing="ij"))
    x0 = jnp.asarray(np.where(SEA, np.exp(-((lat - 0.3) ** 2 + (lon - 2.0) ** 2) / 0.5), 0.0))
    truth = rollout(eqx.tree_at(lambda m: m.kappa, model, jnp.asarray(0.6)), x0, 6)
    operator = GriddedObservation(GRID, np.flatnonzero(SEA)[::2])
    steps = (2, 4, 6)
    values = jnp.stack([operator.apply(truth[s]) for s in steps])
    obs = ObservationSet(operator, steps, values + 0.05 * jax.random.normal(jax.random.PRNGKey(1), values.shape), 0.05)
    base = DiffusionCovariance(GRID, 0.1, 0.5, 4, RandomisedNormalisation(jax.random.PRNGKey(0), 20), solver=TIGHT)
    covariance = MaskedCovariance.on_grid(base)
    return ParameterControl4DVar(model, lambda m: m.kappa, LogNormalPrior(0.3, 1.0), x0 + 0.1, covariance, obs)


def test_parameter_control_on_a_masked_grid_sizes_and_differentiates_its_control():
    problem = _problem()
    zero = problem.zero_control()
    assert zero.v.shape == (N_ACTIVE,) and zero.p[0].shape == ()
    assert problem.control_from(0.6).v.shape == (N_ACTIVE,)
    assert problem.initial_state(zero).shape == GRID.shape
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    c = JointControl(0.3 * jax.random.normal(k1, (N_ACTIVE,)), (jnp.asarray(0.4),))
    dc = JointControl(jax.random.normal(k2, (N_ACTIVE,)), (jnp.asarray(1.0),))
    cost = eqx.filter_jit(lambda p, x: p.prepared().cost(x))
    j0, grad = eqx.filter_jit(lambda p, x: jax.value_and_grad(p.prepared().cost)(x))(problem, c)
    assert grad.v.shape == (N_ACTIVE,)
    slope = float(jnp.vdot(grad.v, dc.v) + grad.p[0] * dc.p[0])
    epsilons = 0.1 * 2.0 ** -np.arange(0, 8)
    remainders = []
    for e in epsilons:
        shifted = jax.tree_util.tree_map(lambda a, d, e=e: a + e * d, c, dc)
        remainders.append(abs(float(cost(problem, shifted) - j0) - e * slope))
    orders = taylor_orders(np.array(remainders), epsilons)
    assert np.all(orders[1:-1] > 1.9), (orders, remainders)


def test_weak_constraint_on_a_masked_grid_controls_only_active_cells():
    """B and Q masked: v and every w_k hold the sea cells only, model errors vanish on land, Taylor order 2."""
    from assim.problems.weak_constraint import SubWindows, WeakConstraint4DVar

    strong = _problem()
    q = MaskedCovariance(DiagonalCovariance(GRID, 1e-3), SEA)
    problem = WeakConstraint4DVar(strong.model, strong.background, strong.covariance, q, strong.observations,
                                  n_steps=6, timing=SubWindows(3))  # fmt: skip
    zero = problem.zero_control()
    assert zero.v.shape == (N_ACTIVE,) and zero.w.shape == (2, N_ACTIVE)
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    c = jax.tree_util.tree_map(lambda z, k: 0.3 * jax.random.normal(k, z.shape), zero, type(zero)(k1, k2))
    dc = jax.tree_util.tree_map(lambda z, k: jax.random.normal(k, z.shape), zero, type(zero)(k2, k1))
    eta = problem.model_errors(c)
    assert eta.shape == (2,) + GRID.shape and np.all(np.asarray(eta)[:, ~SEA] == 0.0)
    cost = eqx.filter_jit(lambda p, x: p.prepared().cost(x))
    j0, grad = eqx.filter_jit(lambda p, x: jax.value_and_grad(p.prepared().cost)(x))(problem, c)
    assert grad.w.shape == (2, N_ACTIVE)
    slope = float(jnp.vdot(grad.v, dc.v) + jnp.vdot(grad.w, dc.w))
    epsilons = 0.1 * 2.0 ** -np.arange(0, 8)
    remainders = [abs(float(cost(problem, jax.tree_util.tree_map(lambda a, d, e=e: a + e * d, c, dc)) - j0) - e * slope)
                  for e in epsilons]  # fmt: skip
    orders = taylor_orders(np.array(remainders), epsilons)
    assert np.all(orders[1:-1] > 1.9), (orders, remainders)
