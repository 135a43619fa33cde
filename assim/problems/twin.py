"""Twin experiments from one PRNG key: a truth run, synthetic observations with Gaussian noise, a perturbed background.

    truth      x^t_0 … x^t_N = M(x^t_0) (the given initial state, run n_steps)
    y_t        = H_t(x^t_t) + σ ξ_t       for every network (operator, steps, σ)
    background x_b = x^t_0 + B^{1/2} ξ_b

Keys: the background's noise uses `fold_in(key, 0)` and network i's `fold_in(key, i + 1)`, so
adding a network after the others changes neither the background nor their noise.
Observation steps count from the start of the experiment; `assim.solvers.cycling` slices such long
records into windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.errors import InputError, ObservationError
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import AbstractObservationOperator
from models.base import AbstractModel
from models.rollout import AbstractCheckpointing, NoCheckpointing, rollout


class ObservationNetwork(eqx.Module):
    """A synthetic observing network: operator H, the model steps it observes, and its error std σ."""

    operator: AbstractObservationOperator
    steps: tuple[int, ...] = eqx.field(static=True)
    sigma: Float[Array, "..."]

    def __init__(self, operator: AbstractObservationOperator, steps: Sequence[int], sigma: Float[ArrayLike, "..."]):
        steps = tuple(int(s) for s in np.atleast_1d(np.asarray(steps)))
        if not steps or any(s < 0 for s in steps):
            raise ObservationError(f"a network observes at one or more model steps ≥ 0; got {steps}.")
        sigma = jnp.asarray(sigma, dtype=float)
        try:
            jnp.broadcast_shapes(sigma.shape, (len(steps), operator.n_obs))
        except ValueError:
            raise ObservationError(
                f"σ of shape {sigma.shape} does not broadcast to (n_times, n_obs) = ({len(steps)}, {operator.n_obs})."
            ) from None
        if not isinstance(sigma, jax.core.Tracer) and not np.all(np.asarray(sigma) > 0):
            raise ObservationError("observation error σ must be positive (and finite) everywhere.")
        self.operator = operator
        self.steps = steps
        self.sigma = sigma

    @classmethod
    def every(
        cls, operator: AbstractObservationOperator, k: int, n_steps: int, sigma: Float[ArrayLike, "..."], first: int = 0
    ) -> ObservationNetwork:
        """A network observing every k model steps from step `first` up to step n_steps."""
        if int(k) != k or k < 1:
            raise ObservationError(f"observe every k ≥ 1 steps; got k = {k}.")
        return cls(operator, range(int(first), int(n_steps) + 1, int(k)), sigma)


class TwinExperiment(eqx.Module):
    """A twin experiment: truth trajectory (n_steps + 1 states), observation sets, and a background state."""

    truth: PyTree[Array]
    observations: tuple[ObservationSet, ...]
    background: PyTree[Array]


def _normal_like(key: PRNGKeyArray, tree: PyTree[Array]) -> PyTree[Array]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, jnp.shape(x), dtype=float) for k, x in zip(keys, leaves)]
    )


def twin_experiment(
    key: PRNGKeyArray,
    model: AbstractModel,
    initial_state: PyTree[ArrayLike],
    n_steps: int,
    networks: ObservationNetwork | Sequence[ObservationNetwork],
    background_covariance: AbstractBackgroundCovariance,
    t0: float = 0.0,
    checkpointing: AbstractCheckpointing = NoCheckpointing(),
) -> TwinExperiment:
    """Truth run from `initial_state`, noisy observations of it by every network, and x_b = x^t_0 + B^{1/2} ξ."""
    networks = (networks,) if isinstance(networks, ObservationNetwork) else tuple(networks)
    if not networks:
        raise InputError("a twin experiment needs at least one observation network.")
    if int(n_steps) != n_steps or n_steps < 0:
        raise InputError(f"n_steps must be a non-negative integer; got {n_steps}.")
    late = [max(n.steps) for n in networks if max(n.steps) > n_steps]
    if late:
        raise ObservationError(
            f"a network observes at step {late[0]}, after the end of the {n_steps}-step truth run; "
            "lengthen the run or drop the late steps."
        )
    initial_state = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), initial_state)
    model.check_state(initial_state)
    start = jnp.asarray(t0, dtype=float)
    twin = _twin(key, model, initial_state, int(n_steps), networks, background_covariance, start, checkpointing)
    model.check_result(twin.truth, f"the {int(n_steps)}-step truth run")  # a failed step inside is NaN
    return twin


@eqx.filter_jit
def _twin(key, model, initial_state, n_steps, networks, background_covariance, t0, checkpointing) -> TwinExperiment:
    truth = rollout(model, initial_state, n_steps, t0, checkpointing)
    observations = []
    for i, net in enumerate(networks):
        k = jax.random.fold_in(key, i + 1)
        states = jax.tree_util.tree_map(lambda x: x[jnp.asarray(net.steps)], truth)
        clean_values = net.operator.apply_window(states)
        noise = net.sigma * jax.random.normal(k, clean_values.shape, dtype=float)
        observations.append(ObservationSet(net.operator, net.steps, clean_values + noise, net.sigma))
    control = background_covariance.zero_control(initial_state)  # masked grids: sea cells only
    xi = _normal_like(jax.random.fold_in(key, 0), control)
    background = jax.tree_util.tree_map(jnp.add, initial_state, background_covariance.prepare().sqrt(xi))
    return TwinExperiment(truth=truth, observations=tuple(observations), background=background)
