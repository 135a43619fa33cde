"""Weak-constraint 4D-Var (model-error forcing form): the model is allowed an error η with covariance Q.

    x_0 = x_b + B^{1/2} v,    x_{t+1} = M(x_t) + η_{k(t)},    η_k = Q^{1/2} w_k,
    r(v, w) = [ v ; w_1 … w_K ; R_t^{-1/2} (y_t − H_t(x_t)) ],   J = ½‖r‖².

k(t) says which model-error control forces step t: one per model step (`EveryStep()`) or
one held constant over sub-windows of a few steps (`SubWindows(length)`). Q is any
background-covariance strategy (`assim.covariances.covariance`), applied to one state's worth of w; it
is the covariance of the error of one model step. With Q → 0 the problem tends to
strong-constraint 4D-Var, and with Q = 0 it is that problem (w then only adds ½‖w‖²).
The problem plugs into `assim.solvers.gauss_newton.GaussNewton` like `StrongConstraint4DVar`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.errors import InputError
from assim.observations.observation_set import ObservationSet
from assim.problems.problem import AbstractVariationalProblem, tree_sq
from assim.problems.window import check_window
from models.base import AbstractModel
from models.rollout import (
    AbstractCheckpointing,
    NestedCheckpointing,
    NoCheckpointing,
    _scan,
)


class AbstractModelErrorTiming(eqx.Module):
    """Which model-error control forces each model step of a window."""

    @abc.abstractmethod
    def segments(self, n_steps: int) -> Int[np.ndarray, " step"]:
        """Index k(t) of the model-error control that forces step t → t+1, for t = 0 … n_steps−1."""


class EveryStep(AbstractModelErrorTiming):
    """An independent model error η_t at every model step."""

    def segments(self, n_steps):
        return np.arange(n_steps)


class SubWindows(AbstractModelErrorTiming):
    """One model-error forcing η_k per sub-window of `length` steps, added at every step of the sub-window."""

    length: int = eqx.field(static=True)

    def __check_init__(self):
        if int(self.length) != self.length or self.length < 1:
            raise InputError(f"SubWindows needs a sub-window length of at least 1 step; got {self.length}.")

    def segments(self, n_steps):
        return np.arange(n_steps) // self.length


class WeakControl(eqx.Module):
    """Control vector of weak-constraint 4D-Var: initial-state control v and model-error controls w_k."""

    v: PyTree[Array]
    w: PyTree[Array]


class WeakConstraint4DVar(AbstractVariationalProblem):
    """The weak-constraint 4D-Var problem of one window: model, x_b, B, model-error Q and timing, observations."""

    model: AbstractModel
    background: PyTree[Array]
    covariance: AbstractBackgroundCovariance
    model_error_covariance: AbstractBackgroundCovariance
    observations: tuple[ObservationSet, ...]
    n_steps: int = eqx.field(static=True)
    timing: AbstractModelErrorTiming = eqx.field(static=True)
    t0: Float[Array, ""]
    checkpointing: AbstractCheckpointing = eqx.field(static=True)

    def __init__(
        self,
        model: AbstractModel,
        background: PyTree[ArrayLike],
        covariance: AbstractBackgroundCovariance,
        model_error_covariance: AbstractBackgroundCovariance,
        observations: ObservationSet | Sequence[ObservationSet],
        n_steps: int | None = None,
        timing: AbstractModelErrorTiming = EveryStep(),
        t0: float = 0.0,
        checkpointing: AbstractCheckpointing = NoCheckpointing(),
    ):
        if model is None:
            raise InputError("weak-constraint 4D-Var needs a model; for 3D-Var use StrongConstraint4DVar(None, ...).")
        if not isinstance(model_error_covariance, AbstractBackgroundCovariance):
            raise InputError(
                "model_error_covariance is Q, a covariance strategy (e.g. DiagonalCovariance, ScaledCovariance); "
                f"got {type(model_error_covariance).__name__}."
            )
        if not isinstance(timing, AbstractModelErrorTiming):
            raise InputError("timing must be EveryStep() or SubWindows(length).")
        background, observations, n_steps = check_window(model, background, observations, n_steps)
        if n_steps < 1:
            raise InputError(
                "a weak-constraint window needs at least one model step (model errors act between steps); "
                "for a zero-length window use StrongConstraint4DVar."
            )
        self.model = model
        self.background = background
        self.covariance = covariance
        self.model_error_covariance = model_error_covariance
        self.observations = observations
        self.n_steps = n_steps
        self.timing = timing
        self.t0 = jnp.asarray(t0, dtype=float)
        self.checkpointing = checkpointing

    @property
    def n_model_errors(self) -> int:
        """Number K of model-error controls in the window."""
        return int(self.timing.segments(self.n_steps).max()) + 1

    def prepared(self) -> WeakConstraint4DVar:
        """The same problem with both covariances' loop-invariant factors precomputed."""
        return eqx.tree_at(
            lambda p: (p.covariance, p.model_error_covariance),
            self,
            (self.covariance.prepare(), self.model_error_covariance.prepare()),
        )

    def zero_control(self) -> WeakControl:
        """v = 0 and w = 0: x0 = x_b and a perfect model (each w_k shaped as Q's control: active cells only)."""
        k = self.n_model_errors
        zeros = self.model_error_covariance.zero_control(self.background)
        w = jax.tree_util.tree_map(lambda x: jnp.zeros((k,) + jnp.shape(x), jnp.result_type(x)), zeros)
        return WeakControl(self.covariance.zero_control(self.background), w)

    def initial_state(self, control: WeakControl) -> PyTree[Array]:
        """Initial state x0 = x_b + B^{1/2} v of the window."""
        return jax.tree_util.tree_map(jnp.add, self.background, self.covariance.sqrt(control.v))

    def model_errors(self, control: WeakControl) -> PyTree[Array]:
        """Model-error forcings η_k = Q^{1/2} w_k, stacked along a leading axis of length K."""
        return jax.vmap(self.model_error_covariance.sqrt)(control.w)

    def trajectory(self, control: WeakControl) -> PyTree[Array]:
        """States x_0 … x_N with x_{t+1} = M(x_t) + η_{k(t)}, stacked along a leading time axis."""
        x0 = self.initial_state(control)
        eta = self.model_errors(control)
        segment = jnp.asarray(self.timing.segments(self.n_steps), dtype=jnp.int32)
        levels = self.checkpointing.levels if isinstance(self.checkpointing, NestedCheckpointing) else 1

        def step(carry, collect):
            x, t, i = carry
            forced = jax.tree_util.tree_map(lambda m, e: m + e[segment[i]], self.model.step(x, t), eta)
            return (forced, t + self.model.dt, i + 1), (forced if collect else None)

        carry0 = (x0, self.t0, jnp.asarray(0, dtype=jnp.int32))
        _, ys = _scan(step, carry0, self.n_steps, levels, True)
        return jax.tree_util.tree_map(lambda a, y: jnp.concatenate([a[None], y]), x0, ys)

    def departures(self, control: WeakControl) -> tuple[Float[Array, "time obs"], ...]:
        """Normalised departures R^{-1/2}(y − H(x_t)) along the forced trajectory."""
        traj = self.trajectory(control)
        return tuple(o.normalised_departures(traj) for o in self.observations)

    def cost_terms(self, control: WeakControl) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
        """Background, model-error and observation terms (J_b, J_q, J_o) of the cost."""
        return 0.5 * tree_sq(control.v), 0.5 * tree_sq(control.w), 0.5 * tree_sq(self.departures(control))
