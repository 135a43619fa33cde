"""The contract harness itself: wrong adjoints, wrong tangents, wrong gradients, a broken inner product and an
inexact solver must make the contract tests of tests/test_contracts.py fail (and their correct twins pass).

Each operator here becomes a temporary registry entry and goes through the very test functions the registry
runs, so what is tested is the code the contract tests use.
"""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import registry
import test_contracts as contracts
from contract_helpers import assert_adjoint, check_inner_products

import assim.solvers.krylov
import models.verification
from models import CartesianGrid, Dirichlet
from models.diffusion import Diffusion

N = 12
X = jax.random.normal(jax.random.PRNGKey(0), (N,))
DX = jax.random.normal(jax.random.PRNGKey(1), (N,))
W = jax.random.normal(jax.random.PRNGKey(2), (N,))


def forward_difference(x):
    """A non-symmetric stencil: (Dx)_i = x_{i+1} − x_i, periodic."""
    return jnp.roll(x, -1) - x


def forward_difference_transpose(y):
    """Dᵀ: (Dᵀy)_i = y_{i−1} − y_i."""
    return jnp.roll(y, 1) - y


@pytest.fixture(autouse=True, scope="module")
def _drop_built_cases():
    yield
    registry.clear()


def run(monkeypatch, test, name, case, properties=frozenset(), epsilons=None):
    """Run one contract test on a temporary registry entry."""
    entry = registry.Entry(name, "harness", lambda: case, frozenset(properties), epsilons)
    monkeypatch.setitem(registry.BY_NAME, name, entry)
    test(entry)


# ------------------------------------------------------------------------------------------ adjoints


def test_correct_hand_written_adjoint_passes(monkeypatch):
    case = registry.Case(forward_difference, X, X, W, adjoint=forward_difference_transpose)
    run(monkeypatch, contracts.test_adjoint_identity, "harness-stencil", case)
    run(monkeypatch, contracts.test_hand_written_adjoint_is_the_autodiff_transpose, "harness-stencil", case)


def test_untransposed_stencil_fails_the_adjoint_test(monkeypatch):
    case = registry.Case(forward_difference, X, X, W, adjoint=forward_difference)  # D for Dᵀ
    with pytest.raises(AssertionError, match="adjoint identity"):
        run(monkeypatch, contracts.test_adjoint_identity, "harness-untransposed", case)
    with pytest.raises(AssertionError, match="relative difference"):
        run(monkeypatch, contracts.test_hand_written_adjoint_is_the_autodiff_transpose, "harness-untransposed", case)


@jax.custom_vjp
def difference_with_bad_backward(x):
    return forward_difference(x)


def _fwd(x):
    return forward_difference(x), None


def _bwd(_, w):
    return (forward_difference_transpose(w) + 1e-9 * jnp.roll(w, 3),)  # Dᵀw off by a small perturbation


difference_with_bad_backward.defvjp(_fwd, _bwd)


def bad_backward(w):
    """The reverse pass of the custom_vjp, used as the operator's adjoint."""
    return jax.vjp(difference_with_bad_backward, jnp.zeros(N))[1](w)[0]


def test_backward_pass_off_by_a_small_perturbation_fails_the_adjoint_test(monkeypatch):
    case = registry.Case(forward_difference, X, X, W, adjoint=bad_backward)
    with pytest.raises(AssertionError, match="adjoint identity"):
        run(monkeypatch, contracts.test_adjoint_identity, "harness-bad-backward", case)


def test_backward_pass_off_by_a_small_perturbation_fails_the_transpose_test(monkeypatch):
    """The operator's own reverse mode is wrong, its hand-written adjoint right: the transpose test catches it."""
    case = registry.Case(difference_with_bad_backward, X, X, W, adjoint=forward_difference_transpose)
    run(monkeypatch, contracts.test_adjoint_identity, "harness-bad-reverse-mode", case)  # Lᵀ itself is right
    with pytest.raises(AssertionError, match="relative difference"):
        run(monkeypatch, contracts.test_hand_written_adjoint_is_the_autodiff_transpose, "harness-bad-reverse-mode",
            case)  # fmt: skip


# ------------------------------------------------------------------------------------ inner products


def _zero_dot(a, b):
    return 0.0


@pytest.mark.parametrize("where", ["verification", "krylov", "both"])
def test_an_inner_product_returning_zero_fails_the_adjoint_test(monkeypatch, where):
    """Today's unguarded check passes with a zero tree_dot (both sides 0, bound 0); the harness does not."""
    case = registry.Case(forward_difference, X, X, W, adjoint=forward_difference_transpose)
    if where in ("verification", "both"):
        monkeypatch.setattr(models.verification, "tree_dot", _zero_dot)
    if where in ("krylov", "both"):
        monkeypatch.setattr(assim.solvers.krylov, "tree_dot", lambda a, b: jnp.asarray(0.0))
    if where != "krylov":  # the hole the harness closes: adjoint_mismatch's own bound is 0 too
        err, scale = models.verification.adjoint_mismatch(forward_difference, X, DX, W)
        assert err == 0.0 and scale == 0.0 and err <= 1e-12 * scale
    with pytest.raises(AssertionError, match="inner product is broken"):
        run(monkeypatch, contracts.test_adjoint_identity, f"harness-zero-dot-{where}", case)


def test_inner_products_agree_with_numpy_and_a_wrong_one_is_caught(monkeypatch):
    tree = (X, {"a": jnp.ones((2, 3)), "b": DX})
    other = (W, {"a": jnp.arange(6.0).reshape(2, 3), "b": X})
    check_inner_products(tree, other)
    monkeypatch.setattr(models.verification, "tree_dot", lambda a, b: 0.5 * assim.solvers.krylov.tree_dot(a, b))
    with pytest.raises(AssertionError, match="models.verification.tree_dot"):
        check_inner_products(tree, other)


def test_a_zero_operator_is_not_a_passing_adjoint_test():
    with pytest.raises(AssertionError, match="vacuous"):
        assert_adjoint(jnp.zeros(N), W, DX, jnp.zeros(N), 1e-12)


# ------------------------------------------------------------------------------------------- tangents


@jax.custom_jvp
def cubic(x):
    return x**3 + jnp.sin(x)


@cubic.defjvp
def _cubic_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return cubic(x), (3 * x**2 + jnp.cos(x)) * t * (1.0 + 1e-3)  # the tangent is 0.1 % off


def test_wrong_tangent_fails_the_taylor_test(monkeypatch):
    eps = 0.1 * 2.0 ** -np.arange(11)
    good = registry.Case(lambda x: x**3 + jnp.sin(x), X, DX, W)
    run(monkeypatch, contracts.test_taylor_remainder_falls_as_epsilon_squared, "harness-good-jvp", good, epsilons=eps)
    with pytest.raises(AssertionError, match="Taylor orders"):
        bad = registry.Case(cubic, X, DX, W)
        run(monkeypatch, contracts.test_taylor_remainder_falls_as_epsilon_squared, "harness-bad-jvp", bad,
            epsilons=eps)  # fmt: skip


def test_taylor_range_must_span_two_decades(monkeypatch):
    case = registry.Case(lambda x: x**3 + jnp.sin(x), X, DX, W)
    with pytest.raises(AssertionError, match="two decades"):
        run(monkeypatch, contracts.test_taylor_remainder_falls_as_epsilon_squared, "harness-short-range", case,
            epsilons=0.1 * 2.0 ** -np.arange(5))  # fmt: skip


# ------------------------------------------------------------------------------------------ gradients


def _scaled(theta, x):
    return theta["k"] * jnp.tanh(x)


@jax.custom_vjp
def scaled_with_bad_gradient(theta, x):
    return _scaled(theta, x)


def _sfwd(theta, x):
    return _scaled(theta, x), (theta, x)


def _sbwd(res, w):
    theta, x = res
    gt, gx = jax.vjp(_scaled, theta, x)[1](w)
    return {"k": 1.001 * gt["k"]}, gx  # the parameter gradient is 0.1 % off


scaled_with_bad_gradient.defvjp(_sfwd, _sbwd)


@pytest.mark.parametrize("correct", [True, False])
def test_wrong_parameter_gradient_fails_the_gradient_test(monkeypatch, correct):
    theta = {"k": jnp.asarray(0.7)}
    g = (lambda th: _scaled(th, X)) if correct else (lambda th: scaled_with_bad_gradient(th, X))
    gradient = registry.GradientCase(g, theta, W, {"k": {"k": jnp.asarray(1.0)}}, h=1e-4, rtol=1e-6)
    case = registry.Case(forward_difference, X, DX, W, gradient=gradient)
    name = f"harness-gradient-{correct}"
    if correct:
        run(monkeypatch, contracts.test_parameter_gradients_match_central_differences, name, case)
    else:
        with pytest.raises(AssertionError, match="central difference"):
            run(monkeypatch, contracts.test_parameter_gradients_match_central_differences, name, case)


# ---------------------------------------------------------------------------------------- jit, vmap


def _differs_under_tracing(x):
    return x * (2.0 if isinstance(x, jax.core.Tracer) else 1.0)


def test_code_that_branches_on_tracing_fails_the_jit_test(monkeypatch):
    case = registry.Case(_differs_under_tracing, X, DX, W)
    with pytest.raises(AssertionError, match="relative difference"):
        run(monkeypatch, contracts.test_jit_equals_eager, "harness-tracing-branch", case)


def test_code_that_mixes_the_batch_fails_the_vmap_test(monkeypatch):
    mixing = jax.custom_batching.custom_vmap(lambda x: x)

    @mixing.def_vmap
    def _(axis_size, in_batched, xs):  # a batching rule that mixes the members of the batch
        return jnp.broadcast_to(jnp.mean(xs, axis=0), xs.shape), True

    leak = jax.custom_jvp(mixing)  # the identity's tangent, so that the loop's compiled program can linearise it
    leak.defjvp(lambda primals, tangents: (leak(*primals), tangents[0]))

    with pytest.raises(AssertionError, match="relative difference"):
        run(monkeypatch, contracts.test_vmap_over_a_batch_equals_the_loop, "harness-batch-leak",
            registry.Case(leak, X, DX, W))  # fmt: skip


# ------------------------------------------------------------------------------ inexact inner solves


def test_loose_inner_solver_fails_1e12_and_meets_the_derived_bound():
    """A diffusion window with CG at τ = 1e-6: the tangent and adjoint disagree far above 1e-12 (so the tight
    entries' 1e-12 is a real test) yet within the bound 100·n·τ that the default-tolerance entries are held to."""
    grid = CartesianGrid((16,), (1.0,), Dirichlet(0.0))
    model = Diffusion(grid, 1.0 + 0.5 * jnp.sin(jnp.arange(16.0)), 0.01, solver=lx.CG(rtol=1e-6, atol=1e-6))
    case = registry.model_case(model, 1.0 + jnp.cos(jnp.arange(16.0)), 3, default=True)
    assert case.adjoint_rtol == registry.default_adjoint_rtol(1e-6, registry.N_STEPS) == pytest.approx(1e-3)
    d = jax.jit(lambda x, dx, w: (jax.jvp(case.f, (x,), (dx,))[1], jax.vjp(case.f, x)[1](w)[0]))
    tangent, adjoint = d(case.x, case.dx, case.w)
    relative = assert_adjoint(tangent, case.w, case.dx, adjoint, case.adjoint_rtol)
    assert relative > 1e-10, relative
    with pytest.raises(AssertionError, match="adjoint identity"):
        assert_adjoint(tangent, case.w, case.dx, adjoint, registry.TIGHT_ADJOINT)
