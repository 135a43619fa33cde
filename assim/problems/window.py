"""Checks shared by every assimilation-window problem: observation sets, window length, background."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, PyTree

from assim.errors import ObservationError
from assim.observations.observation_set import ObservationSet
from models.base import AbstractModel


def check_window(
    model: AbstractModel | None,
    background: PyTree[ArrayLike],
    observations: ObservationSet | Sequence[ObservationSet],
    n_steps: int | None,
) -> tuple[PyTree, tuple[ObservationSet, ...], int]:
    """Validate a window; return (background as float arrays, observation sets as a tuple, window length in steps)."""
    observations = (observations,) if isinstance(observations, ObservationSet) else tuple(observations)
    if not observations:
        raise ObservationError("a 4D-Var problem needs at least one observation set.")
    last = max(max(o.steps) for o in observations)
    n_steps = last if n_steps is None else int(n_steps)
    if last > n_steps:
        raise ObservationError(
            f"an observation falls at step {last}, after the end of the {n_steps}-step window; "
            "lengthen the window or drop the late observations."
        )
    background = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=float), background)
    if model is not None:
        model.check_state(background)
    for o in observations:
        o.operator.check_state(background)
    return background, observations, n_steps
