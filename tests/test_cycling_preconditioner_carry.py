"""`CarriedPairs`: a cycle hands each window's limited-memory CG pairs to the next window's first inner loop —
the same analyses, the first window untouched, fewer CG iterations over a linear advection-diffusion cycle."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from assim.covariances.covariance import SpectralGaussianCovariance
from assim.errors import InputError
from assim.observations.operators import GriddedObservation
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.twin import ObservationNetwork, twin_experiment
from assim.solvers.cycling import Cycling
from assim.solvers.gauss_newton import Affine, GaussNewton, NoDamping
from assim.solvers.limited_memory_preconditioner import CarriedPairs, FreshPreconditioner, LimitedMemory
from assim.solvers.preconditioner import NoPreconditioner
from models import CartesianGrid, Periodic
from models.advection_diffusion import IMEX, AdvectionDiffusion

n, WINDOW, N_WINDOWS, MEMORY = 16, 4, 4, 8
GRID = CartesianGrid((n, n), (1.0, 1.0), Periodic())
MODEL = AdvectionDiffusion(GRID, (0.5 * jnp.ones((n, n)), jnp.ones((n, n))), 2.0 / n, 0.5 / n, IMEX())
B = SpectralGaussianCovariance(GRID, 0.2**2, 0.1)
SOLVER = GaussNewton(damping=NoDamping(), linearity=Affine(), max_outer=3, cg_max_steps=200, cg_tol=1e-9, gtol=1e-8,
                     preconditioner=LimitedMemory(memory=MEMORY))  # fmt: skip


@pytest.fixture(scope="module")
def cycles():
    """The same linear cycle (20% of cells observed every 2 steps, σ_o = 0.1) without and with carried pairs."""
    truth = SpectralGaussianCovariance(GRID, 1.0, 0.15).sqrt(jax.random.normal(jax.random.PRNGKey(1), GRID.shape))
    cells = np.sort(np.random.default_rng(2).choice(GRID.size, GRID.size // 5, replace=False))
    steps = WINDOW * N_WINDOWS
    net = ObservationNetwork.every(GriddedObservation(GRID, cells), 2, steps, 0.1)
    twin = twin_experiment(jax.random.PRNGKey(3), MODEL, truth, steps, net, B)
    args = (MODEL, twin.background, B, twin.observations[0], twin.truth)
    fresh = Cycling(WINDOW, WINDOW, N_WINDOWS, SOLVER).run(*args)
    carried = Cycling(WINDOW, WINDOW, N_WINDOWS, SOLVER, preconditioner_carry=CarriedPairs()).run(*args)
    return fresh, carried


def test_carried_pairs_give_the_same_analyses(cycles):
    fresh, carried = cycles
    assert bool(jnp.all(fresh.diagnostics.converged)) and bool(jnp.all(carried.diagnostics.converged))
    scale = float(jnp.max(jnp.abs(fresh.analyses)))
    np.testing.assert_allclose(carried.analyses, fresh.analyses, rtol=0, atol=1e-6 * scale)


def test_first_window_is_solved_exactly_as_without_carrying(cycles):
    fresh, carried = cycles
    np.testing.assert_array_equal(carried.analyses[0], fresh.analyses[0])  # zero slots: P is the base
    assert int(carried.diagnostics.cg_iterations[0]) == int(fresh.diagnostics.cg_iterations[0])


def test_carried_pairs_save_cg_iterations_over_the_cycle(cycles):
    fresh, carried = cycles
    total_fresh = int(jnp.sum(fresh.diagnostics.cg_iterations))
    total_carried = int(jnp.sum(carried.diagnostics.cg_iterations))
    assert total_carried <= 0.9 * total_fresh  # measured: 65 against 80 CG iterations
    assert bool(jnp.all(carried.diagnostics.cg_iterations[1:] < fresh.diagnostics.cg_iterations[1:]))


def test_gauss_newton_takes_and_returns_pairs():
    """A solve started from another solve's pairs reaches the same analysis in fewer CG iterations (linear window)."""
    cells = np.sort(np.random.default_rng(4).choice(GRID.size, GRID.size // 5, replace=False))
    net = ObservationNetwork(GriddedObservation(GRID, cells), (2, WINDOW), 0.1)
    twin = twin_experiment(jax.random.PRNGKey(5), MODEL, jnp.zeros(GRID.shape), WINDOW, net, B)
    problem = StrongConstraint4DVar(MODEL, twin.background, B, twin.observations, n_steps=WINDOW)
    first = SOLVER.solve(problem)
    s, y = first.pairs
    assert s.shape == (MEMORY, *GRID.shape) and bool(jnp.any(s != 0))
    again = SOLVER.solve(problem, pairs=first.pairs)
    np.testing.assert_allclose(again.v, first.v, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(first.v))))
    assert int(again.diagnostics.cg_iterations[1]) < int(first.diagnostics.cg_iterations[1])
    plain = eqx.tree_at(lambda g: g.preconditioner, SOLVER, NoPreconditioner())
    assert eqx.filter_eval_shape(plain.solve, problem).pairs is None
    with pytest.raises(InputError, match="keeps none"):
        plain.solve(problem, pairs=first.pairs)
    with pytest.raises(InputError, match="leading axis"):
        SOLVER.solve(problem, pairs=(s[:2], y[:2]))


def test_carrying_needs_a_limited_memory_gauss_newton():
    with pytest.raises(InputError, match="LimitedMemory"):
        Cycling(WINDOW, WINDOW, N_WINDOWS, GaussNewton(), preconditioner_carry=CarriedPairs())
    fresh = Cycling(WINDOW, WINDOW, N_WINDOWS, GaussNewton(), preconditioner_carry=FreshPreconditioner())
    assert fresh.preconditioner_carry == FreshPreconditioner()
