"""`LimitedMemory`: the L-BFGS update of a base preconditioner with CG curvature pairs, in Gauss-Newton."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from l96_window import N, window

from assim.errors import InputError
from assim.solvers.gauss_newton import GaussNewton, LevenbergMarquardt
from assim.solvers.krylov import ZeroStartCG
from assim.solvers.limited_memory_preconditioner import LimitedMemory
from assim.solvers.preconditioner import NoPreconditioner, ProbedSpectral

M = 6


def _spd(seed):
    a = jax.random.normal(jax.random.PRNGKey(seed), (M, M))
    return a @ a.T / M + 0.5 * jnp.eye(M)


def _pairs(a, steps, memory):
    op = lx.FunctionLinearOperator(lambda x: a @ x, jax.ShapeDtypeStruct((M,), jnp.float64),
                                   tags=(lx.symmetric_tag, lx.positive_semidefinite_tag))  # fmt: skip
    b = jax.random.normal(jax.random.PRNGKey(9), (M,))
    stats = lx.linear_solve(op, b, ZeroStartCG(atol=0.0, max_steps=steps, memory=memory)).stats
    return stats["directions"], stats["products"]


def _dense(operator):
    return np.stack([np.asarray(operator.mv(e)) for e in jnp.eye(M)], axis=1)


def test_complete_pairs_give_the_inverse():
    """M conjugate pairs of an M × M SPD matrix: the L-BFGS update of the identity is A⁻¹ exactly."""
    a = _spd(0)
    p = LimitedMemory(NoPreconditioner(), M).build(lambda x: a @ x, jnp.zeros(M), _pairs(a, M, M))
    np.testing.assert_allclose(_dense(p) @ np.asarray(a), np.eye(M), atol=1e-9)


def test_partial_pairs_symmetric_positive_definite_and_exact_on_their_span():
    a = _spd(1)
    s, y = _pairs(a, 3, 5)  # two empty slots are skipped
    dense = _dense(LimitedMemory(NoPreconditioner(), 5).build(lambda x: a @ x, jnp.zeros(M), (s, y)))
    np.testing.assert_allclose(dense, dense.T, atol=1e-12)
    assert np.min(np.linalg.eigvalsh(dense)) > 0
    np.testing.assert_allclose(dense @ np.asarray(y[:3]).T, np.asarray(s[:3]).T, atol=1e-10)  # P y_i = s_i
    assert LimitedMemory(NoPreconditioner(), 5).build(lambda x: a @ x, jnp.zeros(M)) is None  # no pairs: the base


def test_gauss_newton_reaches_the_same_analysis_with_fewer_cg_iterations():
    """Reusing the previous inner loop's pairs: same analysis, no extra runs, fewer CG iterations in total."""
    problem = window()[0]
    kw = dict(damping=LevenbergMarquardt(), max_outer=20, cg_max_steps=60, cg_tol=1e-8, gtol=1e-10, ftol=1e-14)
    plain = GaussNewton(**kw).solve(problem)
    reused = GaussNewton(**kw, preconditioner=LimitedMemory(NoPreconditioner(), 8)).solve(problem)
    np.testing.assert_allclose(reused.v, plain.v, rtol=0, atol=1e-6)
    d, k = reused.diagnostics, int(reused.diagnostics.n_outer)
    assert int(d.tangent_linear_evaluations[k]) == int(jnp.sum(d.cg_iterations))  # the pairs cost no model run
    assert int(jnp.sum(d.cg_iterations)) < int(jnp.sum(plain.diagnostics.cg_iterations))
    assert int(d.cg_iterations[1]) == int(plain.diagnostics.cg_iterations[1])  # no pairs yet in the first inner loop
    spectral = LimitedMemory(ProbedSpectral((N,), 3, 1, 1.0, key=jax.random.PRNGKey(3)), 4)
    assert spectral.n_probes == 1
    np.testing.assert_allclose(GaussNewton(**kw, preconditioner=spectral).solve(problem).v, plain.v, rtol=0, atol=1e-6)
    with pytest.raises(InputError):
        LimitedMemory(NoPreconditioner(), 0)
    with pytest.raises(InputError):
        LimitedMemory(LimitedMemory(), 2)
