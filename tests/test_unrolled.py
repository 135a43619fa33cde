"""Unrolled Gauss-Newton: classical parameters reproduce the classical solver's iterates, fixed-iteration CG is the
truncated CG (and its derivative that of the truncated computation), parameterisations keep μ ≥ 0 and α ∈ (0, 2),
learned modules start as the identity and receive gradients, bad input raises."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from l96_window import SOLVE, N, window

from assim.errors import InputError
from assim.learned.networks import ConvNetwork, MLPNetwork
from assim.learned.unrolled import UnrolledGaussNewton, fixed_cg
from assim.solvers.gauss_newton import GaussNewton

K = 4


@pytest.fixture(scope="module")
def problem():
    return window()[0]


@pytest.fixture(scope="module")
def classical(problem):
    return GaussNewton(max_outer=K, cg_max_steps=4 * N, cg_tol=1e-14, gtol=0.0, ftol=0.0).solve(problem)


def test_classical_parameters_reproduce_gauss_newton(problem, classical):
    d_ref = classical.diagnostics
    assert int(d_ref.n_outer) == K  # the classical run took all K steps: a fair comparison of every iterate
    result = SOLVE(UnrolledGaussNewton(K, 2 * N, damping=0.0, step=1.0, weight=1.0), problem)
    d = result.diagnostics
    np.testing.assert_allclose(d.cost, d_ref.cost, rtol=1e-10)
    np.testing.assert_allclose(d.cost_background, d_ref.cost_background, rtol=1e-10)
    np.testing.assert_allclose(d.gradient_norm, d_ref.gradient_norm, rtol=1e-8)
    np.testing.assert_allclose(result.v, classical.v, rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.x0, classical.x0, rtol=0, atol=1e-10)
    assert np.all(np.diff(np.asarray(d.cost)) < 0)  # nonlinear window: every layer does real work
    assert float(d.gradient_norm[K]) < 1e-3 * float(d.gradient_norm[0])
    # iterates: v_0 = 0, v_K = the analysis; model-run counts follow the layer structure
    assert result.iterates.shape == (K + 1, N)
    np.testing.assert_array_equal(result.iterates[0], np.zeros(N))
    np.testing.assert_array_equal(result.iterates[K], result.v)
    np.testing.assert_array_equal(d.forward_evaluations, np.arange(K + 1) + 1)
    np.testing.assert_array_equal(d.tangent_linear_evaluations, np.arange(K + 1) * 2 * N)
    np.testing.assert_array_equal(d.adjoint_evaluations, np.arange(K + 1) * (2 * N + 1) + 1)
    assert int(d.n_outer) == K and np.all(np.asarray(d.cg_iterations[1:]) <= 2 * N)


def test_step_damping_and_weight_act_as_specified(problem):
    classical = SOLVE(UnrolledGaussNewton(K, 2 * N, weight=1.0), problem)
    half = SOLVE(UnrolledGaussNewton(K, 2 * N, step=0.5, weight=1.0), problem)
    # the first layer linearises at v_0 = 0 in both: the half step is exactly half the increment
    np.testing.assert_allclose(half.iterates[1], 0.5 * classical.iterates[1], rtol=1e-12, atol=1e-12)
    damped = SOLVE(UnrolledGaussNewton(K, 2 * N, damping=10.0, weight=1.0), problem)
    heavy = SOLVE(UnrolledGaussNewton(K, 2 * N, weight=[50.0, 1.0, 1.0, 1.0]), problem)
    norm = lambda x: float(jnp.linalg.norm(x))  # noqa: E731
    assert norm(damped.iterates[1]) < norm(classical.iterates[1])  # μ shortens the step
    assert norm(heavy.iterates[1]) < norm(classical.iterates[1])  # a heavy background term too
    # at v_0 = 0 both solve (c I + J_dᵀJ_d) δ = −J_dᵀd: hence (I + J_dᵀJ_d)(δ_classical − δ) = (c − 1) δ
    _, jvp = jax.linearize(problem.departures, jnp.zeros(N))
    vjp = jax.linear_transpose(jvp, jnp.zeros(N))
    hess = lambda x: x + vjp(jvp(x))[0]  # noqa: E731
    for result, c in ((damped, 11.0), (heavy, 50.0)):
        delta = result.iterates[1]
        np.testing.assert_allclose(hess(classical.iterates[1] - delta), (c - 1.0) * delta, rtol=1e-9, atol=1e-9)
    assert float(damped.diagnostics.cost[K]) > float(classical.diagnostics.cost[K])  # with fewer effective steps
    # the damping does not enter the gradient norm reported: it is that of the problem's own cost
    np.testing.assert_allclose(damped.diagnostics.gradient_norm[0], classical.diagnostics.gradient_norm[0], rtol=1e-13)


def test_fixed_cg_is_truncated_cg_and_differentiates_as_such():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((6, 6))
    a0 = q @ q.T + 6 * np.eye(6)
    b = jnp.asarray(rng.standard_normal(6))
    e = jnp.asarray(np.outer(rng.standard_normal(6), rng.standard_normal(6)) + 0.0)
    e = e + e.T

    def solve(s, n, tol=0.0):
        return fixed_cg(lambda x: (jnp.asarray(a0) + s * e) @ x, b, n, tol)

    run = jax.jit(solve, static_argnums=(1, 2))
    x, count = run(0.0, 6, 0.0)
    np.testing.assert_allclose(x, np.linalg.solve(a0, b), rtol=1e-10)
    assert int(count) == 6
    _, count = run(0.0, 20, 1e-10)  # iterations past convergence are no-ops
    assert int(count) < 20
    # two iterations: the Krylov minimiser over span{b, Ab}, in the A-norm
    x2 = np.asarray(run(0.0, 2, 0.0)[0])
    basis = np.stack([b, a0 @ b], axis=1)
    c = np.linalg.solve(basis.T @ a0 @ basis, basis.T @ np.asarray(b))
    np.testing.assert_allclose(x2, basis @ c, rtol=1e-10)
    # its derivative is that of the truncated computation (finite differences), not of the exact solve
    f = jax.jit(jax.value_and_grad(lambda s: jnp.sum(solve(s, 2)[0] ** 2)))
    h = 1e-6
    fd = (f(h)[0] - f(-h)[0]) / (2 * h)
    np.testing.assert_allclose(f(0.0)[1], fd, rtol=1e-6)
    exact = lambda s: jnp.sum(jnp.linalg.solve(jnp.asarray(a0) + s * e, b) ** 2)  # noqa: E731
    assert abs(float(jax.grad(exact)(0.0)) - float(fd)) > 1e-3 * abs(float(fd))


def test_parameterisations_stay_inside_their_bounds():
    solver = UnrolledGaussNewton(3, 5, damping=[0.0, 0.2, 3.0], step=[0.1, 1.0, 1.9], weight=[4.0, 2.0, 1.0])
    np.testing.assert_allclose(solver.damping, [0.0, 0.2, 3.0], atol=1e-12)
    np.testing.assert_allclose(solver.step, [0.1, 1.0, 1.9], rtol=1e-12)
    np.testing.assert_allclose(solver.weight, [4.0, 2.0, 1.0], rtol=1e-12)
    extreme = eqx.tree_at(
        lambda s: (s.raw_damping, s.raw_step), solver, (jnp.array([-1e3, 0.0, 1e3]), jnp.array([-1e3, 0.0, 1e3]))
    )
    assert np.all(np.asarray(extreme.damping) >= 0.0)
    assert np.all(np.asarray(extreme.step) >= 0.0) and np.all(np.asarray(extreme.step) <= 2.0)
    np.testing.assert_array_equal(UnrolledGaussNewton(2, 3).weight, [1.0, 1.0])


def test_learned_modules_start_as_the_identity_and_receive_gradients(problem):
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    plain = SOLVE(UnrolledGaussNewton(K, 2 * N, weight=1.0), problem)  # compiled already by the tests above
    learned = UnrolledGaussNewton(
        K, 2 * N, weight=1.0, correction=MLPNetwork(2, N, 16, 1, key=keys[0]),
        first_guess=MLPNetwork(1, N, 16, 1, key=keys[1]),
    )  # fmt: skip

    @eqx.filter_jit
    @eqx.filter_value_and_grad(has_aux=True)
    def grad(solver):
        result = solver.solve(problem)
        return result.diagnostics.cost[-1], result

    (_, result), g = grad(learned)
    np.testing.assert_allclose(result.v, plain.v, rtol=0, atol=1e-13)
    assert int(result.diagnostics.forward_evaluations[0]) == 2  # the first guess costs one forward + adjoint run
    for net in (g.correction, g.first_guess):
        assert float(jnp.linalg.norm(net.mlp.layers[-1].weight)) > 0.0  # the zero-initialised layer learns
    assert float(jnp.linalg.norm(g.raw_step)) > 0.0


def test_conv_network_is_periodic_and_starts_at_zero():
    apply = eqx.filter_jit(lambda net, *inputs: net(*inputs))
    net = eqx.filter_jit(lambda k: ConvNetwork(2, 1, 4, 2, key=k))(jax.random.PRNGKey(0))  # one compile, not many
    x, y = jax.random.normal(jax.random.PRNGKey(1), (2, 16))
    np.testing.assert_array_equal(apply(net, x, y), np.zeros(16))
    last = net.layers[-1]
    net = eqx.tree_at(lambda n: n.layers[-1].weight, net, jax.random.normal(jax.random.PRNGKey(2), last.weight.shape))
    out = apply(net, x, y)
    assert out.shape == (16,) and float(jnp.abs(out).max()) > 0
    np.testing.assert_allclose(apply(net, jnp.roll(x, 3), jnp.roll(y, 3)), jnp.roll(out, 3), atol=1e-12)  # translation
    net2 = eqx.filter_jit(lambda k: ConvNetwork(1, 2, 4, 1, key=k))(jax.random.PRNGKey(0))
    assert apply(net2, jnp.ones((8, 8))).shape == (8, 8)


def test_bad_settings_raise():
    with pytest.raises(InputError, match="step α must lie in"):
        UnrolledGaussNewton(2, 4, step=2.0)
    with pytest.raises(InputError, match="damping μ must be ≥ 0"):
        UnrolledGaussNewton(2, 4, damping=-1.0)
    with pytest.raises(InputError, match="one value per layer"):
        UnrolledGaussNewton(2, 4, step=[0.5, 0.5, 0.5])
    with pytest.raises(InputError, match="integers ≥ 1"):
        UnrolledGaussNewton(0, 4)
    with pytest.raises(InputError, match="n_inputs=2"):
        UnrolledGaussNewton(2, 4, correction=MLPNetwork(1, N, 4, 1, key=jax.random.PRNGKey(0)))
    with pytest.raises(InputError, match="max_step ≤ 2"):
        UnrolledGaussNewton(2, 4, max_step=3.0)
