"""The model interface: an implicit time-stepper with differentiable physical parameters."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
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

    def failure_hint(self) -> str:
        """What to change when a run of this model returns NaN or inf (models with their own solvers say more)."""
        return (
            "a step diverged (reduce dt), an implicit solve did not converge (give its Krylov solver more steps "
            "or a looser rtol), or a parameter or the initial state holds NaN or inf (give finite values)"
        )

    def check_result(self, state: PyTree[ArrayLike], what: str = "a run") -> PyTree[ArrayLike]:
        """Return a concrete result of this model, or raise NonFiniteError if it holds NaN or inf.

        Call it where a result of jitted or scanned steps comes back: inside traced code a failed check
        poisons the state with NaN (`fail_if`) rather than raising, so this is where the failure is reported.
        A traced `state` is returned unchecked."""
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(state)):
            return state
        if not all_finite(state):
            raise NonFiniteError(f"{what} of {type(self).__name__} returned NaN or inf: {self.failure_hint()}.")
        return state


def fail_if(x, failed, message: str, error: type[Exception]):
    """Raise `error(message)` if a concrete `failed` holds; under tracing, poison `x` with NaN instead.

    No host callback enters a traced program (JAX's persistent cache refuses programs with callbacks): the
    NaN travels to where a concrete result comes back, whose check raises (`AbstractModel.check_result`,
    the Gauss-Newton stop reason), naming what to change."""
    if isinstance(failed, jax.core.Tracer):
        return poison(x, failed)
    if bool(jnp.any(failed)):
        raise error(message)
    return x


def poison(x: PyTree[Array], failed: ArrayLike) -> PyTree[Array]:
    """`x` with every inexact leaf NaN where `failed` holds (traceable, callback-free); other leaves unchanged."""

    def nan_if(leaf):
        leaf = jnp.asarray(leaf)
        return jnp.where(failed, jnp.nan, leaf) if jnp.issubdtype(leaf.dtype, jnp.inexact) else leaf

    return jax.tree_util.tree_map(nan_if, x)


def all_finite(tree: PyTree[ArrayLike]) -> bool:
    """Whether every leaf of a concrete pytree is finite (None leaves are skipped)."""
    return all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree_util.tree_leaves(tree))


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
