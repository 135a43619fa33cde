"""The assertions of the contract tests (adjoint identity, Taylor remainder, gradient, agreement of two evaluations).

`tests/test_contracts.py` applies them to every entry of `tests/registry.py`; `tests/test_harness.py` checks that
they fail on wrong adjoints, wrong tangents and a broken inner product. Norms and reference inner products are
computed here with numpy, independently of the package's own `tree_dot` functions
(`models.verification.tree_dot`, `assim.solvers.krylov.tree_dot`): an inner product that returns 0 would otherwise make
both sides of the adjoint identity 0 and its bound ‖Lx‖‖y‖ 0 too, and every adjoint test would pass.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from assim.solvers import krylov
from models import verification

INNER_PRODUCT_RTOL = 1e-12  # float64 round-off of a sum of at most a few thousand products


def flat(tree) -> np.ndarray:
    """Every leaf of a pytree of arrays, as one float64 numpy vector."""
    leaves = jax.tree_util.tree_leaves(tree)
    return np.concatenate([np.asarray(leaf, dtype=np.float64).ravel() for leaf in leaves]) if leaves else np.zeros(0)


def np_dot(a, b) -> float:
    """Euclidean inner product of two pytrees of the same structure, in numpy."""
    fa, fb = flat(a), flat(b)
    assert fa.shape == fb.shape, (fa.shape, fb.shape)
    return float(fa @ fb)


def np_norm(a) -> float:
    """Euclidean norm of a pytree, in numpy."""
    return float(np.linalg.norm(flat(a)))


def package_inner_products() -> dict[str, Callable]:
    """The inner products the package computes with: verification's (adjoint tests) and krylov's (CG)."""
    return {"models.verification.tree_dot": verification.tree_dot, "assim.solvers.krylov.tree_dot": krylov.tree_dot}


def check_inner_products(a, b) -> None:
    """Each package inner product agrees with numpy on ⟨a, a⟩ (> 0), ⟨b, b⟩ and ⟨a, b⟩."""
    for name, dot in package_inner_products().items():
        for u, v in ((a, a), (b, b), (a, b)):
            reference = np_dot(u, v)
            got = float(dot(u, v))
            bound = INNER_PRODUCT_RTOL * np_norm(u) * np_norm(v)
            assert np.isfinite(got) and abs(got - reference) <= bound, (
                f"{name} gives {got!r} where numpy gives {reference!r}: the inner product is broken"
            )


def assert_adjoint(lx, y, x, lty, rtol: float) -> float:
    """|⟨Lx, y⟩ − ⟨x, Lᵀy⟩| ≤ rtol·‖Lx‖‖y‖ with a non-zero bound; returns the relative mismatch.

    The mismatch is computed with the package's inner product (as `models.verification.adjoint_mismatch` does)
    and with numpy; both must meet the bound, whose norms come from numpy, and the package's inner products
    must agree with numpy on these vectors.
    """
    scale = np_norm(lx) * np_norm(y)
    assert np.isfinite(scale) and scale > 0, f"‖Lx‖‖y‖ = {scale}: the adjoint test would be vacuous"
    assert np_norm(x) > 0 and np_norm(lty) > 0, "zero input or zero adjoint: the adjoint test would be vacuous"
    check_inner_products(lx, y)
    check_inner_products(x, lty)
    dot = verification.tree_dot
    mismatches = (abs(float(dot(lx, y)) - float(dot(x, lty))), abs(np_dot(lx, y) - np_dot(x, lty)))
    relative = max(mismatches) / scale
    assert relative <= rtol, f"adjoint identity off by {relative:.3g} (allowed {rtol:.3g}) of ‖Lx‖‖y‖"
    return relative


def taylor_remainders(f: Callable, x, dx, fx, tangent, epsilons: np.ndarray) -> np.ndarray:
    """‖f(x+εδ) − f(x) − ε f′(x)δ‖ over ε, with f′(x)δ given and numpy norms."""
    out = []
    for eps in epsilons:
        shifted = jax.tree_util.tree_map(lambda a, d, e=eps: a + e * d, x, dx)
        out.append(np.linalg.norm(flat(f(shifted)) - flat(fx) - eps * flat(tangent)))
    return np.asarray(out)


def assert_taylor(f: Callable, x, dx, fx, tangent, epsilons: np.ndarray, min_order: float = 1.9) -> np.ndarray:
    """The Taylor remainder falls as ε²: observed orders ≥ min_order over the middle of the ε range.

    The range must span at least two decades inside its two end points (which may sit in the pre-asymptotic
    regime or at round-off and are not judged), and the first-order term must dominate the remainder there.
    Returns the observed orders.
    """
    epsilons = np.asarray(epsilons, dtype=float)
    assert np.log10(epsilons[1] / epsilons[-2]) >= 2.0 - 1e-9, "the ε range must span two decades in its middle"
    remainders = taylor_remainders(f, x, dx, fx, tangent, epsilons)
    assert np.all(np.isfinite(remainders)) and np.all(remainders > 0), remainders
    orders = verification.taylor_orders(remainders, epsilons)
    middle = orders[1:-1]
    assert np.all(middle >= min_order), f"Taylor orders {np.round(orders, 3)} (middle must be ≥ {min_order})"
    linear = epsilons[1:-1] * np_norm(tangent)
    assert np.all(remainders[1:-1] < 0.1 * linear), "the remainder is not small against ε‖f′δ‖: not asymptotic"
    return orders


def assert_gradient(loss: Callable[[float], float], directional: float, h: float, rtol: float) -> float:
    """A reverse-mode directional derivative against the central difference (loss(h) − loss(−h)) / 2h."""
    fd = (loss(h) - loss(-h)) / (2 * h)
    assert np.isfinite(fd) and abs(fd) > 0, f"the central difference is {fd}: the parameter does not act"
    assert abs(directional - fd) <= rtol * abs(fd), f"gradient {directional!r} vs central difference {fd!r}"
    return abs(directional - fd) / abs(fd)


def assert_close(a, b, rtol: float, what: str = "") -> None:
    """Two pytrees of the same structure agree: ‖a − b‖ ≤ rtol·‖b‖ (numpy norms), every leaf finite."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), what
    fa, fb = flat(a), flat(b)
    assert fa.shape == fb.shape and np.all(np.isfinite(fa)), what
    assert np.linalg.norm(fa - fb) <= rtol * np.linalg.norm(fb), (
        f"{what}: relative difference {np.linalg.norm(fa - fb) / np.linalg.norm(fb):.3g} > {rtol:.3g}"
    )
