"""Rollouts: n model steps as a lax.scan, with nested checkpointing for sublinear gradient memory."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PyTree

from models.base import AbstractModel
from models.errors import InputError


class AbstractCheckpointing(eqx.Module):
    """How a rollout trades recomputation for memory in reverse mode."""


class NoCheckpointing(AbstractCheckpointing):
    """Store every step's residuals: fastest gradient, memory linear in the number of steps."""


class NestedCheckpointing(AbstractCheckpointing):
    """Nested rematerialised scans: memory ~ levels · n^(1/levels) states, ~levels extra forward passes."""

    levels: int = eqx.field(static=True, default=3)

    def __check_init__(self):
        if self.levels < 1:
            raise InputError(f"NestedCheckpointing needs levels ≥ 1; got {self.levels}.")


def _scan(step, carry, n: int, levels: int, collect: bool):
    """Scan `step` over n steps; with levels > 1, checkpoint blocks of ~n^((levels-1)/levels) steps."""
    if n == 0:
        return carry, None
    if levels <= 1 or n <= 2:
        return jax.lax.scan(lambda c, _: step(c, collect), carry, None, length=n)
    block = max(1, math.ceil(n ** ((levels - 1) / levels)))
    q, r = divmod(n, block)

    @jax.checkpoint
    def run_block(c):
        return _scan(step, c, block, levels - 1, collect)

    carry, ys = jax.lax.scan(lambda c, _: run_block(c), carry, None, length=q)
    if collect:
        ys = jax.tree_util.tree_map(lambda y: y.reshape((q * block,) + y.shape[2:]), ys)
    if r:
        carry, ys_r = _scan(step, carry, r, levels - 1, collect)
        if collect:
            ys = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ys, ys_r)
    return carry, ys


def _run(model, state, n_steps, t0, checkpointing, collect):
    if n_steps < 0:
        raise InputError(f"the number of steps must be non-negative; got {n_steps}.")
    model.check_state(state)
    levels = checkpointing.levels if isinstance(checkpointing, NestedCheckpointing) else 1

    def step(carry, collect):
        x, t = carry
        x_new = model.step(x, t)
        return (x_new, t + model.dt), (x_new if collect else None)

    (final, _), ys = _scan(step, (state, jnp.asarray(t0, dtype=float)), int(n_steps), levels, collect)
    # run eagerly, the result is concrete: a failed step (NaN from `fail_if` inside the scan) raises here;
    # under jit the caller checks what comes back (`model.check_result`)
    model.check_result(final, f"a {int(n_steps)}-step run")
    return final, ys


def integrate(
    model: AbstractModel,
    state: PyTree[Array],
    n_steps: int,
    t0: ArrayLike = 0.0,
    checkpointing: AbstractCheckpointing = NoCheckpointing(),
) -> PyTree[Array]:
    """State after n_steps model steps from time t0."""
    return _run(model, state, n_steps, t0, checkpointing, collect=False)[0]


def rollout(
    model: AbstractModel,
    state: PyTree[Array],
    n_steps: int,
    t0: ArrayLike = 0.0,
    checkpointing: AbstractCheckpointing = NoCheckpointing(),
) -> PyTree[Array]:
    """Trajectory of n_steps + 1 states (the initial state first), stacked along a leading time axis."""
    _, ys = _run(model, state, n_steps, t0, checkpointing, collect=True)
    if ys is None:
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], state)
    return jax.tree_util.tree_map(lambda x0, y: jnp.concatenate([jnp.asarray(x0)[None], y]), state, ys)
