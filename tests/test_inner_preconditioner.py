"""Gauss-Newton inner-loop preconditioning: the probed spectral symbol of a stationary operator, fewer CG
iterations with it, and its probes counted as model runs."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from l96_window import N, window

from assim.errors import InputError
from assim.learned.preconditioner import SpectralScaling, _radial_wavenumber
from assim.solvers.gauss_newton import GaussNewton, LevenbergMarquardt
from assim.solvers.krylov import ZeroStartCG
from assim.solvers.preconditioner import (
    NoPreconditioner,
    ProbedSpectral,
    probed_scaling,
)

SHAPE = (32, 32)


def _stationary(symbol_of_k):
    """A = F⁻¹ diag(a(|k|)) F on SHAPE (the Fourier-diagonal structure a stationary Hessian has)."""
    symbol = jnp.asarray(symbol_of_k(_radial_wavenumber(SHAPE)))
    return lambda x: jnp.fft.irfftn(jnp.fft.rfftn(x) * symbol, s=SHAPE)


@pytest.mark.parametrize("node_exponent", [1.0, 2.0])
def test_probed_symbol_of_a_stationary_operator(node_exponent):
    """A piecewise-linear symbol (linear between the nodes) is recovered exactly; a smooth one within 10 %."""
    pre = ProbedSpectral(SHAPE, 6, 1, node_exponent, key=jax.random.PRNGKey(0))
    like = jnp.zeros(SHAPE)
    nodes = SpectralScaling(SHAPE, 6, node_exponent).nodes()
    values = np.array([40.0, 9.0, 3.0, 1.5, 1.2, 1.0])
    np.testing.assert_allclose(pre.symbol(_stationary(lambda k: np.interp(k, nodes, values)), like), values, rtol=1e-10)
    smooth = lambda k: 1.0 + 30.0 * np.exp(-3.0 * k)  # noqa: E731
    fit = np.asarray(pre.symbol(_stationary(smooth), like))
    np.testing.assert_allclose(fit[:-1], smooth(nodes)[:-1], rtol=0.1)
    assert 1.0 <= fit[-1] <= smooth(nodes[-2])  # the widest bin, at the corner of the spectrum: its average


def test_probed_preconditioner_cuts_cg_iterations_on_a_stationary_operator():
    a = _stationary(lambda k: 1.0 + 200.0 * np.exp(-6.0 * k))  # the large scales carry the observation term
    op = lx.FunctionLinearOperator(
        a, jax.ShapeDtypeStruct(SHAPE, jnp.float64), tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
    )
    b = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
    exact = jnp.fft.irfftn(jnp.fft.rfftn(b) / (1.0 + 200.0 * np.exp(-6.0 * _radial_wavenumber(SHAPE))), s=SHAPE)
    cg = ZeroStartCG(atol=1e-8, max_steps=500)
    plain = lx.linear_solve(op, b, cg)
    pre = ProbedSpectral(SHAPE, 8, 1, key=jax.random.PRNGKey(2)).build(a, b)
    preconditioned = lx.linear_solve(op, b, cg, options={"preconditioner": pre})
    for sol in (plain, preconditioned):
        np.testing.assert_allclose(sol.value, exact, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(exact))))
    assert int(preconditioned.stats["num_steps"]) <= 0.5 * int(plain.stats["num_steps"])


def test_gauss_newton_counts_the_probes_and_reaches_the_same_analysis():
    problem = window()[0]
    kw = dict(damping=LevenbergMarquardt(), max_outer=20, cg_max_steps=60, cg_tol=1e-8, gtol=1e-10, ftol=1e-14)
    plain = GaussNewton(**kw).solve(problem)
    probed = GaussNewton(**kw, preconditioner=ProbedSpectral((N,), 3, 2, key=jax.random.PRNGKey(3))).solve(problem)
    np.testing.assert_allclose(probed.v, plain.v, rtol=0, atol=1e-6)
    d = probed.diagnostics
    k = int(d.n_outer)
    steps = int(jnp.sum(d.cg_iterations[1 : k + 1] > 0))  # outer iterations that ran an inner solve
    assert int(d.tangent_linear_evaluations[k]) == int(jnp.sum(d.cg_iterations)) + 2 * steps
    assert isinstance(GaussNewton().preconditioner, NoPreconditioner)
    with pytest.raises(InputError):
        ProbedSpectral((N,), 3, 0, key=jax.random.PRNGKey(0))


def test_probed_scaling_fits_the_windows_gauss_newton_hessian():
    """`probed_scaling` probes I + J_dᵀJ_d at the background: the same gains as probing the dense Hessian."""
    problem = window()[0].prepared()
    v0 = problem.zero_control()
    jac = jax.jacfwd(problem.departures)(v0)  # tiny window (N = 8): dense only to check the matrix-free one
    jac = jnp.concatenate([j.reshape(-1, N) for j in jax.tree_util.tree_leaves(jac)])  # departures: one per time
    dense = jnp.eye(N) + jac.T @ jac
    probe = ProbedSpectral((N,), 3, 2, key=jax.random.PRNGKey(5))
    scaling = probed_scaling(problem, probe)
    np.testing.assert_allclose(scaling.log_gain, -jnp.log(probe.symbol(lambda x: dense @ x, v0)), rtol=1e-10)
    gains = np.asarray(scaling.log_gain)
    assert np.all(gains <= 0) and gains[0] < 0  # the observation term raises the symbol above 1 (at large scales)


def test_node_spacing():
    """Nodes from 0 to √ndim, crowded at the large scales for exponent > 1, never closer than the fundamental."""
    uniform, crowded = SpectralScaling(SHAPE, 8).nodes(), SpectralScaling(SHAPE, 8, 2.0).nodes()
    np.testing.assert_allclose(uniform, np.linspace(0.0, np.sqrt(2.0), 8))
    assert crowded[0] == 0 and crowded[-1] == pytest.approx(np.sqrt(2.0))
    assert np.all(np.diff(crowded) >= 2.0 / SHAPE[0] - 1e-15) and crowded[1] < uniform[1]
    with pytest.raises(InputError):
        SpectralScaling((8,), 8, 2.0)  # 8 nodes cannot be a fundamental wavenumber apart below Nyquist
    with pytest.raises(InputError):
        SpectralScaling(SHAPE, 8, 0.5)
    with pytest.raises(InputError):  # uniform nodes closer than the grid's wavenumbers: bins with nothing to fit
        ProbedSpectral((4,), 8, 1, 1.0, key=jax.random.PRNGKey(0))
