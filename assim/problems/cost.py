"""Strong-constraint 4D-Var in control-variable form: x0 = x_b + B^{1/2} v, residual r(v), J = ½‖r‖².

    r(v) = [ v ;  R_t^{-1/2} (y_t − H_t(M_{0→t}(x0))) for each observation set and time ]

3D-Var is the zero-length window: every observation at step 0 (the model is then not run).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.errors import ObservationError
from assim.observations.observation_set import ObservationSet
from assim.problems.window import check_window
from models.base import AbstractModel
from models.rollout import AbstractCheckpointing, NoCheckpointing, rollout
from models.tree import tree_sq

Residual = tuple[PyTree[Array], tuple[Float[Array, "time obs"], ...]]


class StrongConstraint4DVar(eqx.Module):
    """The 4D-Var problem of one window: model, background state, B, and observation sets (with R)."""

    model: AbstractModel | None
    background: PyTree[Array]
    covariance: AbstractBackgroundCovariance
    observations: tuple[ObservationSet, ...]
    n_steps: int = eqx.field(static=True)
    t0: Float[Array, ""]
    checkpointing: AbstractCheckpointing = eqx.field(static=True)

    def __init__(
        self,
        model: AbstractModel | None,
        background: PyTree[ArrayLike],
        covariance: AbstractBackgroundCovariance,
        observations: ObservationSet | Sequence[ObservationSet],
        n_steps: int | None = None,
        t0: float = 0.0,
        checkpointing: AbstractCheckpointing = NoCheckpointing(),
    ):
        background, observations, n_steps = check_window(model, background, observations, n_steps)
        if model is None and n_steps != 0:
            raise ObservationError("without a model only 3D-Var is possible: put every observation at step 0.")
        self.model = model
        self.background = background
        self.covariance = covariance
        self.observations = observations
        self.n_steps = n_steps
        self.t0 = jnp.asarray(t0, dtype=float)
        self.checkpointing = checkpointing

    def prepared(self) -> StrongConstraint4DVar:
        """The same problem with the covariance's loop-invariant factors precomputed."""
        return eqx.tree_at(lambda c: c.covariance, self, self.covariance.prepare())

    def zero_control(self) -> PyTree[Array]:
        """v = 0, i.e. x0 = x_b (shaped as the covariance's control vector)."""
        return self.covariance.zero_control(self.background)

    def initial_state(self, v: PyTree[Array]) -> PyTree[Array]:
        """Initial state x0 = x_b + B^{1/2} v of the window."""
        return jax.tree_util.tree_map(jnp.add, self.background, self.covariance.sqrt(v))

    def trajectory(self, v: PyTree[Array]) -> PyTree[Array]:
        """States x_0 … x_N of the window, stacked along a leading time axis."""
        x0 = self.initial_state(v)
        if self.model is None:
            return jax.tree_util.tree_map(lambda x: x[None], x0)
        return rollout(self.model, x0, self.n_steps, self.t0, self.checkpointing)

    def departures(self, v: PyTree[Array]) -> tuple[Float[Array, "time obs"], ...]:
        """Normalised departures R^{-1/2}(y − H(M(x0))) of every observation set."""
        traj = self.trajectory(v)
        return tuple(o.normalised_departures(traj) for o in self.observations)

    def residual(self, v: PyTree[Array]) -> Residual:
        """Residual vector r(v) = (v, normalised departures); J = ½‖r‖²."""
        return v, self.departures(v)

    def cost_parts(self, v: PyTree[Array]) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """Background and observation parts (J_b, J_o) of the cost."""
        return 0.5 * tree_sq(v), 0.5 * tree_sq(self.departures(v))

    def cost(self, v: PyTree[Array]) -> Float[Array, ""]:
        """J(v) = ½‖v‖² + ½ Σ_t ‖R_t^{-1/2}(y_t − H_t(x_t))‖²."""
        jb, jo = self.cost_parts(v)
        return jb + jo


def residual_cost(r: Residual) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(J_b, J_o) from a residual vector."""
    return 0.5 * tree_sq(r[0]), 0.5 * tree_sq(r[1])
