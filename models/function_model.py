"""Your own model: a pure JAX step function with parameters, used wherever assim takes a model.

`FunctionModel(step, dt, state, parameters)` wraps `step(state, t, parameters) -> state` (a pure,
differentiable JAX function of a state pytree, the time and a dict of parameter arrays) as an
`AbstractModel`: it runs through rollouts, 4D-Var, discovery (its parameters are fields of the
module) and training. An implicit step should differentiate by the implicit function theorem
(`models.linear_solve.implicit_solve`, `optimistix.root_find`), not through its iterations. A model
written as an `equinox.Module` subclassing `AbstractModel` needs no wrapper.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PyTree

from models.base import AbstractModel
from models.errors import InputError


class FunctionModel(AbstractModel):
    """A model given by a pure step function `step(state, t, parameters) -> state` and a time step."""

    step_function: Callable = eqx.field(static=True)
    dt: float = eqx.field(static=True)
    shape: PyTree[jax.ShapeDtypeStruct] = eqx.field(static=True)
    parameters: dict[str, Array]

    def __init__(self, step: Callable, dt: float, state: PyTree[ArrayLike], parameters: dict | None = None):
        if not callable(step):
            raise InputError(f"FunctionModel needs a callable step(state, t, parameters); got {type(step).__name__}.")
        if not dt > 0:
            raise InputError(f"the time step must be positive; got {dt}.")
        self.step_function = step
        self.dt = float(dt)
        self.shape = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(float)), state)
        self.parameters = {str(k): jnp.asarray(v, dtype=float) for k, v in (parameters or {}).items()}
        self._check_interface()

    def _check_interface(self) -> None:
        """InputError unless the step maps a state to a state of the same structure and shapes."""
        try:
            out = jax.eval_shape(self.step_function, self.shape, jax.ShapeDtypeStruct((), float), self.parameters)
        except Exception as exc:  # the user's code: any failure is an interface error
            raise InputError(f"the step function {getattr(self.step_function, '__name__', self.step_function)!r} "
                             f"fails on a state of shape {self.shape}: {type(exc).__name__}: {exc}; it must be "
                             "step(state, t, parameters) -> state") from None  # fmt: skip
        same = jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(self.shape) and all(
            a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(self.shape))
        )
        if not same:
            raise InputError(f"the step function returns {out} for a state {self.shape}; it must return a state of "
                             "the same structure and shapes")  # fmt: skip

    def step(self, state: PyTree[Array], t: ArrayLike = 0.0) -> PyTree[Array]:
        """Advance the state from time t to t + dt with the user's step function."""
        return self.step_function(state, jnp.asarray(t, dtype=float), self.parameters)

    def state_shape(self) -> PyTree[jax.ShapeDtypeStruct]:
        """Shape and dtype of a state."""
        return self.shape


__all__ = ["FunctionModel"]
