"""Pytree arithmetic shared by the models and the assimilation package: inner products, norms, axpy."""

from __future__ import annotations

import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree


def tree_dot(a: PyTree[Array], b: PyTree[Array]) -> Float[Array, ""]:
    """Σ aᵢ·bᵢ over every leaf of two pytrees of the same structure."""
    return sum((jnp.vdot(x, y) for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b))), jnp.asarray(0.0))


def tree_sq(tree: PyTree[Array]) -> Float[Array, ""]:
    """Squared Euclidean norm Σ xᵢ² of a pytree of arrays."""
    return sum((jnp.sum(x**2) for x in jtu.tree_leaves(tree)), jnp.asarray(0.0))


def tree_norm(a: PyTree[Array]) -> Float[Array, ""]:
    """Euclidean norm of a pytree of arrays."""
    return jnp.sqrt(tree_dot(a, a))


def tree_axpy(alpha, x: PyTree[Array], y: PyTree[Array]) -> PyTree[Array]:
    """α x + y, leaf by leaf."""
    return jtu.tree_map(lambda a, b: alpha * a + b, x, y)
