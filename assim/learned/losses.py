"""Training losses for learned 4D-Var solvers that need no ground truth (masking, KKT residual), plus the
supervised state error (twin experiments only, for comparison) and weighted sums of them.

Masking: each window's valid observations are split at random (explicit PRNG key) into an input set Θ and a
held-out set Λ with `ObservationSet.with_mask`; the solver sees Θ only and the loss is the mean squared
normalised misfit on Λ of the forward-modelled analysis, ‖R_Λ^{-1/2}(y_Λ − H_Λ M(x̂_0))‖² / |Λ|.
KKT residual: ‖∇_v J_Θ(v̂)‖² / ‖∇_v J_Θ(v_0)‖² (strong constraint), or with the projected gradient
v − Π(v − ∇J) when the state has a lower bound (e.g. a non-negative tracer).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from assim.covariances.covariance import DiagonalCovariance
from assim.errors import InputError
from assim.problems.cost import StrongConstraint4DVar
from assim.solvers.krylov import tree_dot

Analyse = Callable[[StrongConstraint4DVar], PyTree[Array]]


# --------------------------------------------------------------------------------------------- splits


class AbstractSplit(eqx.Module):
    """How a window's observations are divided into the solver's input set and a held-out set."""

    @abc.abstractmethod
    def __call__(
        self, key: PRNGKeyArray, problem: StrongConstraint4DVar
    ) -> tuple[StrongConstraint4DVar, StrongConstraint4DVar | None]:
        """(problem on the input observations, problem on the held-out observations or None)."""


class NoSplit(AbstractSplit):
    """The solver sees every observation; nothing is held out (KKT and supervised losses)."""

    def __call__(self, key, problem):
        return problem, None


class RandomSplit(AbstractSplit):
    """Hold out each valid observation independently with probability `heldout_fraction` (fresh per key)."""

    heldout_fraction: float = 0.2

    def __check_init__(self):
        if not (0.0 < self.heldout_fraction < 1.0):
            raise InputError(f"heldout_fraction must lie in (0, 1); got {self.heldout_fraction}.")

    def __call__(self, key, problem):
        inputs, heldout = [], []
        for i, obs in enumerate(problem.observations):
            held = jax.random.uniform(jax.random.fold_in(key, i), obs.values.shape) < self.heldout_fraction
            inputs.append(obs.with_mask(~held))
            heldout.append(obs.with_mask(held))
        with_obs = lambda sets: eqx.tree_at(lambda p: p.observations, problem, tuple(sets))  # noqa: E731
        return with_obs(inputs), with_obs(heldout)


# --------------------------------------------------------------------------------------------- bounds


class AbstractBound(eqx.Module):
    """Bounds on the initial state that the KKT residual respects."""


class Unbounded(AbstractBound):
    """No bound: the KKT residual is the plain gradient."""


class LowerBound(AbstractBound):
    """x0 ≥ `value` elementwise (0: a non-negative tracer); needs a diagonal B so the bound is a box on v."""

    value: Float[Array, ""]

    def __init__(self, value: float = 0.0):
        self.value = jnp.asarray(value, dtype=float)


def _kkt_vector(bound: AbstractBound, problem: StrongConstraint4DVar, v: PyTree[Array]) -> PyTree[Array]:
    """∇_v J(v), or the projected gradient v − Π_box(v − ∇_v J(v)) under a lower bound on x0."""
    g = jax.grad(problem.cost)(v)
    if isinstance(bound, Unbounded):
        return g
    if not isinstance(problem.covariance, DiagonalCovariance):
        raise InputError(
            "the projected KKT residual needs a DiagonalCovariance B (then x0 ≥ bound is a box on v); "
            f"got {type(problem.covariance).__name__}: use Unbounded() or a diagonal B."
        )
    sigma = jnp.sqrt(problem.covariance.variance)
    lower = (cast(LowerBound, bound).value - problem.background) / sigma  # the only bound besides Unbounded
    return v - jnp.maximum(v - g, lower)


# --------------------------------------------------------------------------------------------- losses


class LossInputs(eqx.Module):
    """What a loss sees for one window: input and held-out problems, background control v_0 = 0, analysis v̂, truth."""

    problem: StrongConstraint4DVar
    heldout: StrongConstraint4DVar | None
    v0: PyTree[Array]
    analysis: PyTree[Array]
    truth: PyTree[Array] | None


class AbstractLoss(eqx.Module):
    """A scalar training loss of one window's analysis."""

    @abc.abstractmethod
    def __call__(self, inputs: LossInputs) -> Float[Array, ""]:
        """Loss value of the window."""


class MaskedMisfit(AbstractLoss):
    """Mean squared normalised misfit of the forward-modelled analysis on the held-out observations."""

    def __call__(self, inputs):
        if inputs.heldout is None:
            raise InputError("MaskedMisfit needs held-out observations: evaluate it with split=RandomSplit(...).")
        departures = inputs.heldout.departures(inputs.analysis)  # zero where not held out
        count = sum(jnp.sum(o.mask) for o in inputs.heldout.observations)
        return tree_dot(departures, departures) / jnp.maximum(count, 1)


class KKTResidual(AbstractLoss):
    """‖∇_v J_Θ(v̂)‖² / ‖∇_v J_Θ(v_0)‖² on the input observations (projected gradient under a bound)."""

    bound: AbstractBound = Unbounded()

    def __call__(self, inputs):
        g = _kkt_vector(self.bound, inputs.problem, inputs.analysis)
        g0 = _kkt_vector(self.bound, inputs.problem, inputs.v0)
        return tree_dot(g, g) / tree_dot(g0, g0)


class SupervisedStateError(AbstractLoss):
    """‖x̂_0 − x^t_0‖² / ‖x_b − x^t_0‖²: analysis error relative to background error (twin experiments only)."""

    def __call__(self, inputs):
        if inputs.truth is None:
            raise InputError("SupervisedStateError needs the true initial state (twin experiments only).")
        err = jax.tree_util.tree_map(jnp.subtract, inputs.problem.initial_state(inputs.analysis), inputs.truth)
        err_b = jax.tree_util.tree_map(jnp.subtract, inputs.problem.background, inputs.truth)
        return tree_dot(err, err) / tree_dot(err_b, err_b)


class WeightedSum(AbstractLoss):
    """Σ_i w_i ℓ_i over (weight, loss) pairs."""

    terms: tuple[tuple[float, AbstractLoss], ...]

    def __init__(self, terms: Sequence[tuple[float, AbstractLoss]]):
        terms = tuple((float(w), loss) for w, loss in terms)
        if not terms or any(w < 0 for w, _ in terms):
            raise InputError("WeightedSum needs at least one (weight ≥ 0, loss) pair.")
        self.terms = terms

    def __call__(self, inputs):
        return sum(w * loss(inputs) for w, loss in self.terms)


def window_loss(
    loss: AbstractLoss,
    analyse: Analyse,
    problem: StrongConstraint4DVar,
    key: PRNGKeyArray,
    split: AbstractSplit = NoSplit(),
    truth: PyTree[Array] | None = None,
) -> Float[Array, ""]:
    """Loss of one window: split its observations, analyse the input set (`analyse(problem)` → v̂), score it."""
    inputs, heldout = split(key, problem)
    v0 = inputs.zero_control()
    analysis = analyse(inputs)
    return loss(LossInputs(problem=inputs, heldout=heldout, v0=v0, analysis=analysis, truth=truth))
