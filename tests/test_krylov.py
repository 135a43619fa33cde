"""`ZeroStartCG`: CG from a zero first guess costs one operator application per iteration and matches lineax's CG."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import models  # noqa: F401  (float64)
from assim.solvers.krylov import ZeroStartCG, rms_norm

N = 30


def _spd(seed=0):
    a = jax.random.normal(jax.random.PRNGKey(seed), (N, N))
    return a @ a.T / N + 0.1 * jnp.eye(N)


def _counting_operator(matrix, calls):
    def mv(x):
        jax.debug.callback(lambda: calls.append(1))
        return matrix @ x

    return lx.FunctionLinearOperator(mv, jax.ShapeDtypeStruct((N,), jnp.float64),
                                     tags=(lx.symmetric_tag, lx.positive_semidefinite_tag))  # fmt: skip


def test_iterations_equal_operator_applications_and_match_lineax_cg():
    """n iterations cost n applications (lineax's CG spends one more on b − A·0); the iterates agree."""
    a = _spd()
    b = jax.random.normal(jax.random.PRNGKey(1), (N,))
    for atol in (1e-1, 1e-3, 0.0):
        ours_calls, theirs_calls = [], []
        steps = 7 if atol == 0 else 200
        ours = lx.linear_solve(
            _counting_operator(a, ours_calls), b, ZeroStartCG(atol=atol, max_steps=steps), throw=False
        )
        ref_solver = lx.CG(rtol=0.0, atol=atol, max_steps=steps, norm=rms_norm, stabilise_every=None)
        theirs = lx.linear_solve(_counting_operator(a, theirs_calls), b, ref_solver, throw=False)
        jax.block_until_ready((ours.value, theirs.value))
        n = int(ours.stats["num_steps"])
        assert n == int(theirs.stats["num_steps"]) and n >= 1
        assert len(ours_calls) == n and len(theirs_calls) == n + 1
        np.testing.assert_allclose(ours.value, theirs.value, rtol=1e-12, atol=1e-14)
    exact = jnp.linalg.solve(a, b)
    converged = lx.linear_solve(lx.MatrixLinearOperator(a, (lx.symmetric_tag, lx.positive_semidefinite_tag)), b,
                                ZeroStartCG(atol=1e-13, max_steps=500))  # fmt: skip
    np.testing.assert_allclose(converged.value, exact, rtol=1e-9)


def test_truncated_run_reports_max_steps_and_cg_identity_holds():
    """With a tolerance it cannot reach it reports max_steps_reached; every iterate has δᵀAδ = bᵀδ (predicted reduction)."""
    a = _spd(2)
    b = jax.random.normal(jax.random.PRNGKey(3), (N,))
    op = lx.MatrixLinearOperator(a, (lx.symmetric_tag, lx.positive_semidefinite_tag))
    sol = lx.linear_solve(op, b, ZeroStartCG(atol=1e-14, max_steps=4), throw=False)
    assert sol.result == lx.RESULTS.max_steps_reached
    x = sol.value
    np.testing.assert_allclose(x @ a @ x, b @ x, rtol=1e-10)


def test_derivatives_through_the_solve_match_the_exact_inverse():
    """lineax's rules apply: d/dθ of A⁻¹b(θ) and the transpose (vjp) agree with the dense solve."""
    a = _spd(4)
    op = lx.MatrixLinearOperator(a, (lx.symmetric_tag, lx.positive_semidefinite_tag))
    solver = ZeroStartCG(atol=1e-14, max_steps=500)

    def ours(b):
        return lx.linear_solve(op, b, solver).value

    b = jax.random.normal(jax.random.PRNGKey(5), (N,))
    w = jax.random.normal(jax.random.PRNGKey(6), (N,))
    np.testing.assert_allclose(jax.jvp(ours, (b,), (w,))[1], jnp.linalg.solve(a, w), rtol=1e-9)
    np.testing.assert_allclose(jax.vjp(ours, b)[1](w)[0], jnp.linalg.solve(a.T, w), rtol=1e-9)


def test_non_symmetric_operators_are_refused():
    op = lx.MatrixLinearOperator(jnp.triu(_spd(7)))
    with pytest.raises(ValueError, match="symmetric positive"):
        lx.linear_solve(op, jnp.ones(N), ZeroStartCG(atol=1e-8, max_steps=10))


def test_memory_returns_conjugate_directions_and_their_products():
    """`memory` slots hold (p_i, A p_i) of the first iterations: A-conjugate directions; unused slots stay zero."""
    a = _spd(3)
    b = jax.random.normal(jax.random.PRNGKey(4), (N,))
    op = lx.FunctionLinearOperator(lambda x: a @ x, jax.ShapeDtypeStruct((N,), jnp.float64),
                                   tags=(lx.symmetric_tag, lx.positive_semidefinite_tag))  # fmt: skip
    plain = lx.linear_solve(op, b, ZeroStartCG(atol=0.0, max_steps=5))
    sol = lx.linear_solve(op, b, ZeroStartCG(atol=0.0, max_steps=5, memory=7))
    np.testing.assert_array_equal(sol.value, plain.value)  # recording changes nothing
    s, y = np.asarray(sol.stats["directions"]), np.asarray(sol.stats["products"])
    assert s.shape == y.shape == (7, N)
    np.testing.assert_allclose(y[:5], s[:5] @ np.asarray(a).T, rtol=1e-12, atol=1e-12)
    gram = s[:5] @ np.asarray(a) @ s[:5].T
    off = gram - np.diag(np.diag(gram))
    assert np.max(np.abs(off)) <= 1e-8 * np.max(np.diag(gram))
    np.testing.assert_allclose(s[0], b, rtol=1e-14)  # the first direction is the residual b
    assert np.all(s[5:] == 0) and np.all(y[5:] == 0)
    with pytest.raises(ValueError):
        ZeroStartCG(atol=0.0, max_steps=5, memory=-1)
