"""An observation set: operator, the model steps it belongs to, values, errors, and a validity mask.

Invalid observations are never dropped (shapes stay fixed for jit/vmap): they get weight 0
in R^{-1/2}, their values are replaced by 0, and the `ObservationReport` counts them by
reason, so nothing non-finite reaches the cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from assim.covariances.covariance import DiagonalObservationError
from assim.errors import ObservationError
from assim.observations.operators import AbstractObservationOperator


class ObservationReport(eqx.Module):
    """Counts of observations by fate; each masked observation is counted once, under its first reason.

    Reasons in order of precedence: outside the domain, non-finite value, non-positive or
    non-finite error, masked by the caller. `n_valid + n_outside + n_nonfinite + n_bad_error
    + n_masked == n_total`.
    """

    n_total: Int[Array, ""]
    n_valid: Int[Array, ""]
    n_outside: Int[Array, ""]
    n_nonfinite: Int[Array, ""]
    n_bad_error: Int[Array, ""]
    n_masked: Int[Array, ""]

    def as_dict(self) -> dict[str, int]:
        """Plain-integer counts (concrete reports only)."""
        names = ("n_total", "n_valid", "n_outside", "n_nonfinite", "n_bad_error", "n_masked")
        return {k: int(getattr(self, k)) for k in names}


def _count(x: Array) -> Array:
    return jnp.sum(x.astype(jnp.int32))


class ObservationSet(eqx.Module):
    """Observations y_t of one operator at the model steps `steps` (0 = window start), with errors σ and a mask."""

    operator: AbstractObservationOperator
    steps: tuple[int, ...] = eqx.field(static=True)
    values: Float[Array, "time obs"]
    error: DiagonalObservationError
    report: ObservationReport

    def __init__(
        self,
        operator: AbstractObservationOperator,
        steps: Sequence[int],
        values: Float[ArrayLike, "time obs"],
        errors: Float[ArrayLike, "time obs"] | float,
        mask: Bool[ArrayLike, "time obs"] | None = None,
    ):
        steps = tuple(int(s) for s in np.atleast_1d(np.asarray(steps)))
        if any(s < 0 for s in steps):
            raise ObservationError(f"observation steps must be ≥ 0 (0 is the window start); got {steps}.")
        n_times, n_obs = len(steps), operator.n_obs
        if operator.n_times is not None and operator.n_times != n_times:
            raise ObservationError(
                f"the swath operator has {operator.n_times} observation times but {n_times} steps were given; "
                "give one step per swath time."
            )
        values = jnp.asarray(values, dtype=float)
        if values.shape != (n_times, n_obs):
            raise ObservationError(
                f"observation values must have shape (n_times, n_obs) = ({n_times}, {n_obs}); got {values.shape}."
            )
        try:
            sigma = jnp.broadcast_to(jnp.asarray(errors, dtype=float), values.shape)
        except ValueError:
            raise ObservationError(
                f"observation errors of shape {jnp.shape(errors)} do not broadcast to the values' shape {values.shape}."
            ) from None
        inside = jnp.broadcast_to(operator.inside, values.shape)
        finite = jnp.isfinite(values)
        good_error = jnp.isfinite(sigma) & (sigma > 0)
        given = True if mask is None else mask
        try:
            user = jnp.broadcast_to(jnp.asarray(given, bool), values.shape)
        except ValueError:
            raise ObservationError(
                f"the observation mask of shape {jnp.shape(given)} does not broadcast to the values' shape "
                f"{values.shape}."
            ) from None
        valid = inside & finite & good_error & user
        self.operator = operator
        self.steps = steps
        self.values = jnp.where(valid, values, 0.0)
        self.error = DiagonalObservationError(sigma, valid)
        self.report = ObservationReport(
            n_total=jnp.asarray(values.size, dtype=jnp.int32),
            n_valid=_count(valid),
            n_outside=_count(~inside),
            n_nonfinite=_count(inside & ~finite),
            n_bad_error=_count(inside & finite & ~good_error),
            n_masked=_count(inside & finite & good_error & ~user),
        )
        if not isinstance(self.report.n_valid, jax.core.Tracer) and int(self.report.n_valid) == 0:
            raise ObservationError(
                f"all {values.size} observations are unusable ({self.report.as_dict()}); check the values for "
                "NaN, the errors for non-positive entries and the station positions against the grid."
            )

    @property
    def n_times(self) -> int:
        return len(self.steps)

    @property
    def mask(self) -> Bool[Array, "time obs"]:
        """Which observations enter the cost."""
        return self.error.mask

    def predict(self, trajectory: PyTree[Array]) -> Float[Array, "time obs"]:
        """Model equivalents H_t(x_t) from a trajectory stacked along time (index = model step)."""
        states = jax.tree_util.tree_map(lambda x: x[jnp.asarray(self.steps)], trajectory)
        return self.operator.apply_window(states)

    def normalised_departures(self, trajectory: PyTree[Array]) -> Float[Array, "time obs"]:
        """R^{-1/2}(y − H(x)) at every observation time (zero where masked)."""
        return self.error.inv_sqrt(self.values - self.predict(trajectory))

    def with_mask(self, mask: Bool[ArrayLike, "time obs"]) -> ObservationSet:
        """The same set with only the observations where `mask` is true kept (e.g. a training/held-out split)."""
        mask = jnp.broadcast_to(jnp.asarray(mask, bool), self.values.shape)
        keep = self.error.mask & mask
        new_error = eqx.tree_at(lambda e: e.mask, self.error, keep)
        masked_now = _count(self.error.mask & ~mask)
        counts = (self.report.n_valid - masked_now, self.report.n_masked + masked_now)
        report = eqx.tree_at(lambda r: (r.n_valid, r.n_masked), self.report, counts)
        values = jnp.where(keep, self.values, 0.0)
        return eqx.tree_at(lambda s: (s.error, s.report, s.values), self, (new_error, report, values))
