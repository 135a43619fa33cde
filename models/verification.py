"""Verification tools used by operational 4D-Var systems: Taylor (tangent-linear) and adjoint tests."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jaxtyping import PyTree

from models import tree


def tree_dot(a: PyTree, b: PyTree) -> float:
    """Euclidean inner product of two pytrees of arrays (`models.tree.tree_dot`), as a Python float."""
    return float(tree.tree_dot(a, b))


def tree_norm(a: PyTree) -> float:
    """Euclidean norm of a pytree of arrays, as a Python float (through this module's `tree_dot`)."""
    return float(np.sqrt(tree_dot(a, a)))


def taylor_remainders(f: Callable[[PyTree], PyTree], x: PyTree, dx: PyTree, epsilons: np.ndarray) -> np.ndarray:
    """Remainders ‖f(x+εδ) − f(x) − ε f′(x)δ‖ over ε (should fall as ε²)."""
    fx, tangent = jax.jvp(f, (x,), (dx,))
    out = []
    for eps in epsilons:
        xp = jax.tree_util.tree_map(lambda a, d: a + eps * d, x, dx)
        r = jax.tree_util.tree_map(lambda a, b, t: a - b - eps * t, f(xp), fx, tangent)
        out.append(tree_norm(r))
    return np.asarray(out)


def taylor_orders(remainders: np.ndarray, epsilons: np.ndarray) -> np.ndarray:
    """Observed convergence orders log(r_i/r_{i+1}) / log(ε_i/ε_{i+1}) between successive ε."""
    return np.log(remainders[:-1] / remainders[1:]) / np.log(epsilons[:-1] / epsilons[1:])


def adjoint_mismatch(f: Callable[[PyTree], PyTree], x: PyTree, dx: PyTree, w: PyTree) -> tuple[float, float]:
    """(|⟨f′(x)δ, w⟩ − ⟨δ, f′(x)ᵀw⟩|, ‖f′(x)δ‖‖w‖) for the tangent-linear model at x."""
    _, tangent = jax.jvp(f, (x,), (dx,))
    _, vjp = jax.vjp(f, x)
    (adjoint,) = vjp(w)
    return abs(tree_dot(tangent, w) - tree_dot(dx, adjoint)), tree_norm(tangent) * tree_norm(w)
