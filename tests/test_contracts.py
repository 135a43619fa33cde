"""Contract tests over the whole registry (tests/registry.py): adjoint identity, hand-written adjoint = autodiff
transpose, Taylor remainder O(ε²), parameter gradients against central differences, vmap = loop, jit = eager.

Each property runs over every registry entry that has it; the assertions live in tests/contract_helpers.py
(tested themselves in tests/test_harness.py).
"""

import inspect

import jax
import pytest
import registry
from contract_helpers import (
    assert_adjoint,
    assert_close,
    assert_gradient,
    assert_taylor,
    np_dot,
)
from registry import case, having

import assim
from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.covariances.diffusion import DiffusionCovariance
from assim.observations.operators import AbstractObservationOperator
from assim.problems.problem import AbstractVariationalProblem


@pytest.fixture(autouse=True, scope="module")
def _drop_built_cases():
    yield
    registry.clear()


def _ids(prop):
    return pytest.mark.parametrize("entry", having(prop), ids=str)


@_ids("adjoint")
def test_adjoint_identity(entry):
    """|⟨Lδ, w⟩ − ⟨δ, Lᵀw⟩| ≤ rtol‖Lδ‖‖w‖: the hand-written adjoint of a linear operator, else jvp against vjp."""
    c, d = case(entry.name), registry.derivatives(entry.name)
    assert_adjoint(d["tangent"], c.w, c.dx, d["adjoint"] if c.adjoint is not None else d["pullback"], c.adjoint_rtol)


def test_adjoint_bounds_are_tight_or_derived_from_the_solver_tolerance():
    """Tight and exact entries meet 1e-12; a default-tolerance entry meets 100·n·τ (registry.default_adjoint_rtol),
    τ the tolerance its constructor defaults give its inner solves, n the solves in a chain."""
    for entry in having("adjoint"):
        c = case(entry.name)
        if entry.name.endswith("@tight") or entry.kind in ("operator", "residual"):
            assert c.adjoint_rtol == registry.TIGHT_ADJOINT, entry.name
        elif entry.kind == "model" and not entry.name.startswith("lorenz96"):
            tau = registry.inner_tolerance(c.x[1])  # the parameter half of the model keeps its (static) solvers
            assert tau == pytest.approx(1e-10), (entry.name, tau)  # the constructors' default tolerances
            assert c.adjoint_rtol == registry.default_adjoint_rtol(tau, registry.N_STEPS) == pytest.approx(1e-7)
        elif entry.kind == "covariance" and entry.name.endswith(
            "@default"
        ):  # a diffusion B: M/2 CG solves each way, M = 4, at the default τ
            solver = inspect.signature(DiffusionCovariance.__init__).parameters["solver"].default
            assert c.adjoint_rtol == registry.default_adjoint_rtol(max(solver.rtol, solver.atol), 4), entry.name
        else:
            assert c.adjoint_rtol == registry.TIGHT_ADJOINT, entry.name


@_ids("transpose")
def test_hand_written_adjoint_is_the_autodiff_transpose(entry):
    c = case(entry.name)
    d = registry.derivatives(entry.name)
    assert_close(d["adjoint"], d["pullback"], c.adjoint_rtol, entry.name)


@_ids("taylor")
def test_taylor_remainder_falls_as_epsilon_squared(entry):
    c = case(entry.name)
    d = registry.derivatives(entry.name)
    assert_taylor(registry.jitted(entry.name), c.x, c.dx, d["fx"], d["tangent"], entry.epsilons)


@_ids("gradient")
def test_parameter_gradients_match_central_differences(entry):
    gc = case(entry.name).gradient
    assert gc.directions, "no differentiable parameter"
    gradient, g = registry.gradient_of(entry.name), registry.gradient_loss(entry.name)
    for label, d in gc.directions.items():

        def loss(s, d=d):
            shifted = jax.tree_util.tree_map(lambda a, b: a + s * b, gc.theta, d)
            return np_dot(gc.w, g(shifted))

        try:
            assert_gradient(loss, np_dot(gradient, d), gc.h, gc.rtol)
        except AssertionError as err:
            raise AssertionError(f"{entry.name} {label}: {err}") from None


@_ids("vmap")
def test_vmap_over_a_batch_equals_the_loop(entry):
    c = case(entry.name)
    xs, stacked = registry.batch(entry.name)
    batched = registry.unstack(registry.vmapped(entry.name)(stacked), len(xs))
    for got, x in zip(batched, xs):
        assert_close(got, registry.jitted(entry.name)(x), c.adjoint_rtol, entry.name)


@_ids("jit")
def test_jit_equals_eager(entry):
    c = case(entry.name)
    assert_close(c.f(c.x), registry.jitted(entry.name)(c.x), c.adjoint_rtol, entry.name)


def _concrete_subclasses(base):
    out, stack = set(), [base]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if not inspect.isabstract(sub) and not sub.__name__.startswith("Abstract"):
                out.add(sub)
    return out


def test_registry_covers_every_shipped_model_operator_covariance_and_problem():
    """A new model, observation operator, covariance or variational problem needs an entry in tests/registry.py."""
    from models.base import AbstractModel

    exported = {getattr(assim, n) for n in assim.__all__ if inspect.isclass(getattr(assim, n))}
    shipped = {c for c in exported if issubclass(c, (AbstractBackgroundCovariance, AbstractObservationOperator))}
    shipped |= {c for c in exported if issubclass(c, AbstractVariationalProblem)} | {assim.StrongConstraint4DVar}
    shipped |= {
        c for c in _concrete_subclasses(AbstractModel)
        if c.__module__.startswith("models.") and c.__name__ != "FunctionModel"  # a wrapper of the user's step
    }  # fmt: skip
    shipped = {c for c in shipped if not inspect.isabstract(c) and not c.__name__.startswith("Abstract")}
    covered = {e.covers for e in registry.ENTRIES}
    assert not shipped - covered, f"no registry entry for {sorted(c.__name__ for c in shipped - covered)}"
