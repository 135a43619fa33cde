"""How cycled windows cut long observation records and how often each observation is used.

A window starting at step s assimilates the observations at steps in (s, s + window] (half-open: the
window's end is used, its start is not, so with shift = window each observation is used exactly once).
Observation-use schemes decide, per window and observation time, whether an observation enters the
window's cost and by how much its error variance is inflated: `AllObservations` (each window uses
every observation it holds; overlapping windows reuse them), `UseOnce` (an observation enters only the
first window that holds it), `MultipleDataAssimilation` (every window that holds it uses it with its
variance multiplied by the number of such windows, so that the weights 1/inflation sum to one).
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from assim.errors import ObservationError
from assim.observations.observation_set import ObservationSet


def windows_using(
    step: Int[ArrayLike, "*shape"], n_windows: Int[ArrayLike, ""], window: int, shift: int
) -> Int[Array, "*shape"]:
    """How many of the windows w = 0 … n_windows − 1, each holding steps (w·shift, w·shift + window], hold `step`."""
    step = jnp.asarray(step)
    first = jnp.maximum(-((window - step) // shift), 0)  # ⌈(step − window)/shift⌉: w·shift ≥ step − window
    last = jnp.minimum(-((-step) // shift) - 1, jnp.asarray(n_windows) - 1)  # ⌈step/shift⌉ − 1: w·shift < step
    return jnp.maximum(last - first + 1, 0).astype(jnp.int32)


class AbstractObservationUse(eqx.Module):
    """Which observations of a window enter its cost, and the inflation of their error variances."""

    @abc.abstractmethod
    def weights(
        self, relative: Int[ArrayLike, " time"], w: Int[ArrayLike, ""], n_windows: Int[ArrayLike, ""],
        window: int, shift: int,
    ) -> tuple[Bool[Array, " time"], Float[Array, " time"]]:  # fmt: skip
        """(used, variance inflation) at the window's observation times `relative` (steps from its start)."""


class AllObservations(AbstractObservationUse):
    """Every window uses every observation it holds (overlapping windows reuse observations)."""

    def weights(self, relative, w, n_windows, window, shift):
        relative = jnp.asarray(relative)
        return jnp.ones(relative.shape, bool), jnp.ones(relative.shape)


class UseOnce(AbstractObservationUse):
    """Each observation enters only the first window that holds it: after the first window, only the newest
    `shift` steps of a window are used."""

    def weights(self, relative, w, n_windows, window, shift):
        relative = jnp.asarray(relative)
        return (jnp.asarray(w) == 0) | (relative > window - shift), jnp.ones(relative.shape)


class MultipleDataAssimilation(AbstractObservationUse):
    """Every window holding an observation uses it, its error variance multiplied by the number of such windows."""

    def weights(self, relative, w, n_windows, window, shift):
        relative = jnp.asarray(relative)
        count = windows_using(jnp.asarray(w) * shift + relative, n_windows, window, shift)
        return jnp.ones(relative.shape, bool), count.astype(float)


class RecordPlan(NamedTuple):
    """How one record is cut into windows: steps within a window, record index of window 0's first
    observation, record times per shift, and how many windows the record holds."""

    steps: tuple[int, ...]
    offset: int
    stride: int
    capacity: int


def plan_record(record: ObservationSet, which: int, window: int, shift: int, n_windows: int) -> RecordPlan | None:
    """The slicing of record `which` (steps from the first window's start) into windows; None if no window holds any."""
    steps = np.asarray(record.steps)
    if steps.size < 2 or np.any(np.diff(steps) != steps[1] - steps[0]) or steps[1] <= steps[0]:
        raise ObservationError(
            f"observation record {which} must observe at regularly spaced, increasing steps (every k steps, at "
            f"least twice) to be sliced into windows; got steps {tuple(record.steps)[:6]}…"
        )
    k = int(steps[1] - steps[0])
    s0 = int(steps[0])
    if shift % k:
        raise ObservationError(
            f"windows shift by {shift} steps but record {which} observes every {k} steps: make the shift a multiple "
            f"of {k}, so that every window sees the same observation steps."
        )
    if s0 > k:
        raise ObservationError(
            f"record {which} starts at step {s0}, more than one observation interval ({k}) after the first window "
            "starts (step 0); start the record earlier or drop its first window."
        )
    first = s0 if s0 > 0 else k  # the first observation inside (0, window]; one at step 0 belongs to no window
    offset = (first - s0) // k
    relative = tuple(range(first, window + 1, k))
    if not relative:
        return None
    stride = shift // k
    needed = offset + (n_windows - 1) * stride + len(relative)
    if needed > steps.size:
        raise ObservationError(
            f"{n_windows} windows need {needed} observation times of record {which} but it holds {steps.size} "
            f"(up to step {int(steps[-1])}); use fewer windows or a longer record."
        )
    return RecordPlan(relative, offset, stride, (steps.size - offset - len(relative)) // stride + 1)


def window_set(
    record: ObservationSet, plan: RecordPlan, use: AbstractObservationUse, w: Int[Array, ""],
    n_windows: Int[Array, ""], window: int, shift: int,
) -> tuple[ObservationSet, Float[Array, " time"]]:  # fmt: skip
    """The observations of window w (steps from the window start, the scheme's weights applied) and their inflation."""
    start = plan.offset + w * plan.stride
    m = len(plan.steps)

    def cut(a):
        return jax.lax.dynamic_slice_in_dim(a, start, m, axis=0)

    operator = record.operator
    if operator.n_times is not None:  # time-dependent operator (swaths): its arrays carry the time axis too
        operator = jax.tree_util.tree_map(cut, operator)
    used, inflation = use.weights(jnp.asarray(plan.steps), w, n_windows, window, shift)
    sigma = cut(record.error.sigma) * jnp.sqrt(inflation)[:, None]
    mask = cut(record.error.mask) & used[:, None]
    return ObservationSet(operator, plan.steps, cut(record.values), sigma, mask), inflation
