"""Which model's tangent-linear and adjoint the Gauss-Newton inner loop runs.

Incremental 4D-Var solves each inner problem with a cheaper linearised model than the outer
loop's (Courtier et al. 1994: lower resolution or simplified physics; here typically the same
physics with looser implicit-solver tolerances). The outer loop keeps the problem's own model for
the cost and the gradient, so a fixed point is still a stationary point of the true cost: a
cheaper inner model changes how fast Gauss-Newton gets there, not where it goes.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from assim.errors import GridMismatchError, InputError
from models.base import AbstractModel


class AbstractInnerModel(eqx.Module):
    """The model whose tangent-linear and adjoint apply the Gauss-Newton Hessian in the inner loop."""

    @abc.abstractmethod
    def inner_problem(self, problem: PyTree) -> PyTree | None:
        """The problem the inner loop linearises, or None to reuse the outer loop's linearisation."""


class SameModel(AbstractInnerModel):
    """The problem's own model: the inner loop solves the exact Gauss-Newton normal equations."""

    def inner_problem(self, problem: PyTree) -> None:
        return None


class InnerModel(AbstractInnerModel):
    """A cheaper model of the same state for the inner loop (looser solver tolerances, simplified physics).

    Each step linearises it at the current iterate (one run of the cheaper model, counted as a forward
    run); its tangent-linear and adjoint apply the Hessian in CG. Cost, gradient and stopping tests stay
    with the problem's model.
    """

    model: AbstractModel

    def __check_init__(self):
        if not isinstance(self.model, AbstractModel):
            raise InputError(f"InnerModel needs a model (an AbstractModel); got {type(self.model).__name__}.")

    def inner_problem(self, problem: PyTree) -> PyTree:
        outer = getattr(problem, "model", None)
        if outer is None:
            raise InputError(
                f"{type(problem).__name__} has no forecast model for InnerModel to stand in for (3D-Var needs "
                "none): use SameModel()."
            )
        expected, got = outer.state_shape(), self.model.state_shape()
        if jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(got) or any(
            (a.shape, a.dtype) != (b.shape, b.dtype)
            for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got))
        ):
            raise GridMismatchError(
                f"the inner-loop model's state ({got}) differs from the problem model's ({expected}): "
                "build the inner model on the same grid and state layout."
            )
        if self.model.dt != outer.dt:
            raise InputError(
                f"the inner-loop model steps dt = {self.model.dt:g}, the problem's model dt = {outer.dt:g}: "
                "both must cover the window with the same steps."
            )
        where = getattr(problem, "where", None)  # joint state–parameter control: the controlled model fields
        if where is not None:
            try:
                selected = where(self.model)
            except (AttributeError, IndexError, TypeError) as err:
                raise InputError(
                    f"the inner-loop model lacks the parameter fields the problem controls ({err}): build it as the "
                    "same model class with looser solver settings."
                ) from None
            shapes = [jnp.shape(x) for x in jax.tree_util.tree_leaves(selected)]
            if shapes != [jnp.shape(x) for x in jax.tree_util.tree_leaves(where(outer))]:
                raise InputError(
                    f"the inner-loop model's controlled fields have shapes {shapes}, the problem model's differ: "
                    "give it parameter fields of the same shapes."
                )
        return eqx.tree_at(lambda q: q.model, problem, self.model)
