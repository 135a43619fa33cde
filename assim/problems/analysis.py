"""One window analysed: solve a variational problem and run its background and analysis trajectories.

The single core that `assim run` (`assim.case.solve`) and the xarray API (`assim.io.xarray_api.assimilate`)
share: both hand a problem and a solver here and read the same `WindowAnalysis` back.
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
from jaxtyping import Array, PyTree

from assim.problems.cost import StrongConstraint4DVar
from assim.problems.problem import AbstractVariationalProblem
from assim.solvers.gauss_newton import GaussNewton, GaussNewtonResult

# StrongConstraint4DVar is not a subclass of AbstractVariationalProblem; analyse takes either
_Problem = StrongConstraint4DVar | AbstractVariationalProblem
_trajectory = eqx.filter_jit(lambda problem, control: problem.trajectory(control))


class WindowAnalysis(eqx.Module):
    """The solver's result with the background run (zero control) and the analysis run of the window."""

    result: GaussNewtonResult
    background: PyTree[Array]  # (time, …): the background state run through the window
    analysis: PyTree[Array]  # (time, …): the analysed trajectory (weak constraint: forced by the model errors)
    solve_s: float = eqx.field(static=True)


def result_problem(solver, problem: _Problem) -> _Problem:
    """The problem whose control the solver's result `v` is: posed with a trained solver's learned prior, if any."""
    pose = getattr(solver, "result_problem", None)
    return problem if pose is None else pose(problem)


def analyse(solver: GaussNewton, problem: _Problem) -> WindowAnalysis:
    """Solve the window's problem and run its background and analysis trajectories."""
    start = time.perf_counter()
    result = solver.solve(problem)  # pyright: ignore[reportArgumentType]  (GaussNewton.solve names StrongConstraint4DVar only)
    jax.block_until_ready(result.v)
    solve_s = time.perf_counter() - start
    posed = result_problem(solver, problem)
    return WindowAnalysis(result, _trajectory(problem, problem.zero_control()), _trajectory(posed, result.v), solve_s)


__all__ = ["WindowAnalysis", "analyse", "result_problem"]
