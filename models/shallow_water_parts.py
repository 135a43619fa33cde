"""Shallow-water building blocks: the C-grid state, Coriolis parameter, explicit staging and C-grid stencils."""

from __future__ import annotations

import abc
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from models.base import as_field
from models.errors import InputError, NonFiniteError


class SWState(NamedTuple):
    """Shallow-water state on the C-grid: η at cell centres, u on east faces, v on north faces (each ny × nx)."""

    eta: Float[Array, "ny nx"]
    u: Float[Array, "ny nx"]
    v: Float[Array, "ny nx"]


# --------------------------------------------------------------------------------------------------
# Coriolis parameter


class AbstractCoriolis(eqx.Module):
    """The Coriolis parameter f as a function of the northward coordinate y."""

    @abc.abstractmethod
    def parameter(self, y: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """Coriolis parameter f (1/s) at northward positions y."""


class FPlane(AbstractCoriolis):
    """Constant Coriolis parameter f = f0."""

    f0: Float[Array, ""]

    def __init__(self, f0: Float[ArrayLike, ""] = 0.0):
        _check_scalar(f0, "f0 (Coriolis parameter)")
        self.f0 = as_field(f0)

    def parameter(self, y):
        return jnp.broadcast_to(self.f0, jnp.shape(y))


class BetaPlane(AbstractCoriolis):
    """Linear Coriolis parameter f = f0 + β (y − y0)."""

    f0: Float[Array, ""]
    beta: Float[Array, ""]
    y0: float = eqx.field(static=True)

    def __init__(self, f0: Float[ArrayLike, ""], beta: Float[ArrayLike, ""], y0: float = 0.0):
        _check_scalar(f0, "f0 (Coriolis parameter)")
        _check_scalar(beta, "beta (meridional gradient of f)")
        self.f0 = as_field(f0)
        self.beta = as_field(beta)
        self.y0 = float(y0)

    def parameter(self, y):
        return self.f0 + self.beta * (jnp.asarray(y, dtype=float) - self.y0)


def _check_scalar(value, name: str) -> None:
    if np.shape(value) != ():
        raise InputError(f"{name} must be a scalar; got shape {np.shape(value)}.")
    if not isinstance(value, jax.core.Tracer) and not np.isfinite(np.asarray(value)):
        raise NonFiniteError(f"{name} is NaN or inf; give a finite value.")


# --------------------------------------------------------------------------------------------------
# Staging of the explicit terms


class AbstractExplicitStages(eqx.Module):
    """How the explicit Coriolis and advection tendencies are staged around the implicit gravity solves."""

    @property
    @abc.abstractmethod
    def fractions(self) -> tuple[float, ...]:
        """Fractions c_k of the step spanned by each stage (the last is 1): one Helmholtz solve per stage."""

    @property
    @abc.abstractmethod
    def stability_limit(self) -> float:
        """Largest accepted ω·Δt, with ω = max|f| + max|u|/Δx + max|v|/Δy the fastest explicit frequency."""


class PredictorCorrector(AbstractExplicitStages):
    """Half-step predictor, full-step corrector with the predictor's tendencies: two solves, second order.

    Like every two-stage second-order explicit scheme its amplification on the imaginary axis is
    √(1 + (ωΔt)⁴/4), a weak growth (forward Euler's is √(1 + (ωΔt)²)); ωΔt ≤ 0.3 keeps it below
    0.1 % per step.
    """

    @property
    def fractions(self):
        return (0.5, 1.0)

    @property
    def stability_limit(self):
        return 0.3


class RungeKutta3(AbstractExplicitStages):
    """Three stages (Δt/3, Δt/2, Δt): explicit part stable for ωΔt ≤ √3 (third order for linear tendencies); three solves."""

    @property
    def fractions(self):
        return (1.0 / 3.0, 0.5, 1.0)

    @property
    def stability_limit(self):
        return math.sqrt(3.0)


# --------------------------------------------------------------------------------------------------
# C-grid stencils (axis 0 = y, axis 1 = x; x periodic)


def _east(a: Array) -> Array:
    """a[j, i+1]."""
    return jnp.roll(a, -1, axis=1)


def _west(a: Array) -> Array:
    """a[j, i-1]."""
    return jnp.roll(a, 1, axis=1)


def _north(a: Array, periodic: bool, mirror: bool) -> Array:
    """a[j+1, i]; beyond a closed wall the last row (mirror) or zero."""
    if periodic:
        return jnp.roll(a, -1, axis=0)
    ghost = a[-1:] if mirror else jnp.zeros_like(a[-1:])
    return jnp.concatenate([a[1:], ghost], axis=0)


def _south(a: Array, periodic: bool, mirror: bool) -> Array:
    """a[j-1, i]; beyond a closed wall the first row (mirror) or zero."""
    if periodic:
        return jnp.roll(a, 1, axis=0)
    ghost = a[:1] if mirror else jnp.zeros_like(a[:1])
    return jnp.concatenate([ghost, a[:-1]], axis=0)


def _save_helmholtz_solutions(prim, *_, **__) -> bool:
    """Checkpoint policy: save the outputs of the implicit (custom_linear_solve) Helmholtz solves, recompute the rest.

    Naming the solution with `checkpoint_name` would not do: the solve's own derivative rule uses its unnamed output,
    so the solve would run again in the adjoint.
    """
    return prim.name == "custom_linear_solve"
