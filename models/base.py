"""The model interface: an implicit time-stepper with differentiable physical parameters."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree

from models.errors import GridMismatchError, InputError, NonFiniteError


class AbstractModel(eqx.Module):
    """A forward model M: state at time t → state at time t + dt (one implicit or IMEX step).

    Physical parameters are array fields of the module and are differentiable
    (`eqx.filter_grad` / `eqx.filter_jvp` with respect to the model); the grid, time step
    and solver settings are static.
    """

    dt: eqx.AbstractVar[float]

    @abc.abstractmethod
    def step(self, state: PyTree[Array], t: ArrayLike = 0.0) -> PyTree[Array]:
        """Advance the state from time t to t + dt."""

    @abc.abstractmethod
    def state_shape(self) -> PyTree[jax.ShapeDtypeStruct]:
        """Shape and dtype of a state, as a pytree of ShapeDtypeStruct."""

    def check_state(self, state: PyTree[ArrayLike]) -> None:
        """Raise a project error if a concrete state has the wrong structure, shape or non-finite values."""
        expected = self.state_shape()
        try:
            leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda e, s: (e, s), expected, state))
        except ValueError as err:
            raise GridMismatchError(f"state has the wrong structure for {type(self).__name__}: {err}") from None
        for spec, value in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(state)):
            if tuple(np.shape(value)) != tuple(spec.shape):
                raise GridMismatchError(
                    f"{type(self).__name__} expects a state of shape {tuple(spec.shape)}, got {tuple(np.shape(value))}."
                )
            if not isinstance(value, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(value))):
                raise NonFiniteError(
                    f"the initial state of {type(self).__name__} holds NaN or inf; fill or mask missing values first."
                )
        del leaves


def fail_if(x, failed, message: str, error: type[Exception]):
    """Raise `error(message)` if `failed` holds; under tracing, attach a runtime check to `x` instead."""
    if isinstance(failed, jax.core.Tracer):
        return eqx.error_if(x, failed, message)
    if bool(jnp.any(failed)):
        raise error(message)
    return x


def check_positive(value: ArrayLike, name: str, fix: str = "") -> None:
    """Raise InputError if a concrete parameter is not strictly positive and finite everywhere."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{name} holds NaN or inf; give finite values.")
    if not np.all(arr > 0):
        raise InputError(f"{name} must be positive everywhere (minimum is {arr.min():.3g}). {fix}".strip())


def as_field(value: ArrayLike) -> Array:
    """A parameter as a float array (scalar or field)."""
    return jnp.asarray(value, dtype=float)
