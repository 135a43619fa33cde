"""Learned preconditioner scalings: symmetric positive definite, the identity when untrained, an exact inverse
makes preconditioned CG converge in one iteration, and the unrolled solver trains them (gradients reach them)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from l96_window import SOLVE, N, window

from assim.errors import InputError
from assim.learned.preconditioner import (
    DiagonalScaling,
    SpectralScaling,
    _radial_wavenumber,
)
from assim.learned.unrolled import UnrolledGaussNewton, fixed_cg
from assim.solvers.krylov import tree_dot


def _random_gains(p, key):
    leaves, tree = jax.tree_util.tree_flatten(p)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("make", [lambda: SpectralScaling((12,), 5), lambda: SpectralScaling((6, 8), 4),
                                  lambda: DiagonalScaling(jnp.zeros((2, 6, 8)))])  # fmt: skip
def test_scalings_are_symmetric_positive_and_start_as_identity(make):
    p = make()
    shape = (2, 6, 8) if isinstance(p, DiagonalScaling) else p.shape
    a, b = (jax.random.normal(k, shape) for k in jax.random.split(jax.random.PRNGKey(0)))
    np.testing.assert_allclose(p(a), a, rtol=0, atol=1e-14)  # untrained: P = I
    trained = _random_gains(p, jax.random.PRNGKey(1))
    pa, pb = trained(a), trained(b)
    assert abs(float(jnp.vdot(pa, b) - jnp.vdot(a, pb))) <= 1e-12 * float(jnp.linalg.norm(pa) * jnp.linalg.norm(b))
    assert float(jnp.vdot(pa, a)) > 0 and float(jnp.vdot(pb, b)) > 0
    assert float(jnp.linalg.norm(pa - a)) > 1e-3 * float(jnp.linalg.norm(a))  # the gains do act


def test_exact_spectral_inverse_makes_pcg_converge_in_one_iteration():
    """On a stationary periodic operator A = F⁻¹ diag(a(|k|)) F, P = A⁻¹ (gains −log a at the nodes, a linear in
    |k| between them) solves A x = b in one PCG iteration; plain CG needs many."""
    shape = (16, 16)
    nodes = np.linspace(0.0, np.sqrt(2.0), 6)
    log_a = jnp.asarray(np.log1p(40.0 * np.exp(-4.0 * nodes)))  # a(k): 41 at k = 0 down to ~1: condition ~ 40
    symbol = jnp.exp(jnp.interp(jnp.asarray(_radial_wavenumber(shape)), jnp.asarray(nodes), log_a))
    matvec = lambda x: jnp.fft.irfftn(jnp.fft.rfftn(x) * symbol, s=shape)  # noqa: E731
    exact = eqx.tree_at(lambda p: p.log_gain, SpectralScaling(shape, 6), -log_a)
    b = jax.random.normal(jax.random.PRNGKey(2), shape)
    x_true = jnp.fft.irfftn(jnp.fft.rfftn(b) / symbol, s=shape)
    x1, n1 = fixed_cg(matvec, b, 1, preconditioner=exact)
    np.testing.assert_allclose(x1, x_true, rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(x_true))))
    x_plain, _ = fixed_cg(matvec, b, 3)
    assert float(jnp.linalg.norm(x_plain - x_true)) > 1e-3 * float(jnp.linalg.norm(x_true))
    # a rough preconditioner still gives the CG solution once converged, and the CG identity xᵀAx = bᵀx holds
    rough = _random_gains(SpectralScaling(shape, 6), jax.random.PRNGKey(3))
    x_rough, _ = fixed_cg(matvec, b, 60, tol=1e-13, preconditioner=rough)
    np.testing.assert_allclose(x_rough, x_true, rtol=0, atol=1e-8 * float(jnp.max(jnp.abs(x_true))))
    x2, _ = fixed_cg(matvec, b, 2, preconditioner=rough)
    np.testing.assert_allclose(tree_dot(x2, matvec(x2)), tree_dot(b, x2), rtol=1e-10)


def test_unrolled_solver_with_untrained_preconditioner_is_classical_and_its_gains_receive_gradients():
    problem = window()[0]
    plain = SOLVE(UnrolledGaussNewton(2, 6, weight=1.0), problem)
    solver = UnrolledGaussNewton(2, 6, weight=1.0, preconditioner=SpectralScaling((N,), 6))

    @eqx.filter_jit
    @eqx.filter_value_and_grad(has_aux=True)
    def grad(s):
        result = s.solve(problem)
        return result.diagnostics.cost[-1], result

    (_, result), g = grad(solver)
    np.testing.assert_allclose(result.v, plain.v, rtol=0, atol=1e-12)
    assert float(jnp.linalg.norm(g.preconditioner.log_gain)) > 0.0
    with pytest.raises(InputError, match="grid"):
        SpectralScaling((N + 1,), 6)(jnp.zeros(N))
    with pytest.raises(InputError):
        SpectralScaling((N,), 1)


def test_case_settings_build_the_scalings():
    """`solver.preconditioner` in a case builds the scaling; "spectral" needs one grid-field control."""
    from assim.case.schema import UnrolledSolver
    from assim.errors import ConfigError
    from assim.learned.trained_solver import skeleton

    key = jax.random.PRNGKey(0)
    settings = UnrolledSolver(kind="unrolled", checkpoint="x.eqx", layers=2, cg_steps=3, preconditioner="spectral")
    assert isinstance(skeleton(settings, jnp.zeros((8, 6)), key).preconditioner, SpectralScaling)
    assert skeleton(settings, jnp.zeros((8, 6)), key).preconditioner.shape == (8, 6)
    with pytest.raises(ConfigError, match='use "diagonal"'):
        skeleton(settings, (jnp.zeros((8, 6)), jnp.zeros((8, 6))), key)
    diagonal = skeleton(settings.model_copy(update={"preconditioner": "diagonal"}), (jnp.zeros(3), jnp.zeros(4)), key)
    assert isinstance(diagonal.preconditioner, DiagonalScaling)
    assert skeleton(settings.model_copy(update={"preconditioner": "none"}), jnp.zeros(5), key).preconditioner is None
