"""The interface a variational problem offers Gauss-Newton: a control vector, its residual r, J = ½‖r‖².

`assim.solvers.gauss_newton.GaussNewton` only calls `prepared`, `zero_control`, `residual`, `cost`,
`initial_state` and `trajectory`, and splits the residual as (prior part, observation
part): `r = (control-space term, normalised departures)`. `StrongConstraint4DVar`
(`assim.problems.cost`) offers the same methods; the weak-constraint and joint state–parameter
problems subclass this interface.
"""

from __future__ import annotations

import abc

import equinox as eqx
from jaxtyping import Array, Float, PyTree

from assim.problems.cost import residual_cost
from models.tree import tree_sq as tree_sq


class AbstractVariationalProblem(eqx.Module):
    """A variational problem in control-variable form: r(c) = (prior term, normalised departures), J = ½‖r‖²."""

    @abc.abstractmethod
    def prepared(self) -> AbstractVariationalProblem:
        """The same problem with loop-invariant factors (covariance normalisations) precomputed."""

    @abc.abstractmethod
    def zero_control(self) -> PyTree[Array]:
        """The control at which every state and parameter equals its prior (background) value."""

    @abc.abstractmethod
    def initial_state(self, control: PyTree[Array]) -> PyTree[Array]:
        """Initial state x0 of the window from a control."""

    @abc.abstractmethod
    def trajectory(self, control: PyTree[Array]) -> PyTree[Array]:
        """States x_0 … x_N of the window, stacked along a leading time axis."""

    @abc.abstractmethod
    def departures(self, control: PyTree[Array]) -> tuple[Float[Array, "time obs"], ...]:
        """Normalised departures R^{-1/2}(y − H(x_t)) of every observation set."""

    def residual(self, control: PyTree[Array]) -> tuple[PyTree[Array], tuple[Float[Array, "time obs"], ...]]:
        """Residual vector r(c) = (control, normalised departures); J = ½‖r‖²."""
        return control, self.departures(control)

    def cost_parts(self, control: PyTree[Array]) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """Prior (background, model-error, parameter) and observation parts (J_b, J_o) of the cost."""
        return residual_cost(self.residual(control))

    def cost(self, control: PyTree[Array]) -> Float[Array, ""]:
        """J(c) = ½‖c‖² + ½ Σ_t ‖R_t^{-1/2}(y_t − H_t(x_t))‖²."""
        jb, jo = self.cost_parts(control)
        return jb + jo
