"""What a case builds: the `Experiment` (grid, model, B, solver, twin), the `Outcome` of a run, and its parts.

Each `make_*` asks the case's own section to build its object (`case.model.build`, `case.solver.build`, …),
so that a new kind is one schema class; the case forms (`assim.case.twin`, `assim.case.data`,
`assim.case.files`) assemble them into an `Experiment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import jax
import numpy as np
from jaxtyping import PyTree

from assim.case.config import Case
from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.problems.twin import TwinExperiment
from assim.solvers.gauss_newton import GaussNewton
from models import CartesianGrid, Neumann, Periodic
from models.base import AbstractModel
from models.grid import AbstractGrid
from models.shallow_water import SWState


@dataclass
class Experiment:
    """Everything built from a case: grid, model, B, solver, the twin and the observation locations."""

    case: Case
    grid: AbstractGrid  # Cartesian, or a [data] field's own grid (latitude-longitude or Cartesian)
    model: AbstractModel
    covariance: AbstractBackgroundCovariance
    solver: GaussNewton
    twin: TwinExperiment
    obs_locations: np.ndarray  # (n_obs, ndim) coordinates of the observed points
    obs_steps: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict)
    truth_model: AbstractModel | None = None  # the model that ran the truth, where [truth] sets other parameters
    files: dict = field(default_factory=dict)  # extra datasets written next to analysis.nc (name → xarray.Dataset)
    state_attrs: dict = field(default_factory=dict)  # the state variable's name, units, standard_name ([data] cases)
    provenance: dict = field(default_factory=dict)  # where the data came from and how it reached the grid
    start: object = None  # np.datetime64 of the window start, where the data have dates


@dataclass
class Outcome:
    """Plain-array results of a run (numpy), ready to be written."""

    truth: np.ndarray | None  # (time, *grid); shallow water: η; None for a case with observations.file
    background: np.ndarray  # (time, *grid): background forecast (window) or backgrounds at window starts (cycling)
    analysis: np.ndarray  # (time, *grid): analysis trajectory (window) or analyses at window starts (cycling)
    state_steps: np.ndarray  # model steps of background/analysis along their time axis
    obs_values: np.ndarray  # (obs_time, obs)
    obs_innovation: np.ndarray  # y − H(background trajectory)
    obs_residual: np.ndarray  # y − H(analysis trajectory)
    diagnostics: dict[str, np.ndarray]
    metrics: dict
    components: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # shallow water: u, v
    filter: dict[str, np.ndarray] = field(default_factory=dict)  # cycling: filter_* states at the latest obs times


def _primary(tree) -> np.ndarray:
    """The main field of a state or trajectory (shallow water: η)."""
    return np.asarray(tree.eta if isinstance(tree, SWState) else tree)


def _components(**trees) -> dict[str, dict[str, np.ndarray]]:
    """Secondary fields by component, then by role: {"u": {"truth": …, …}, "v": …} (shallow water only)."""
    first = next(iter(trees.values()))
    if not isinstance(first, SWState):
        return {}
    return {c: {role: np.asarray(getattr(t, c)) for role, t in trees.items()} for c in ("u", "v")}


def make_grid(case: Case) -> CartesianGrid:
    """The case's Cartesian grid: grid.file's coordinates, or the model's grid of the [grid] table."""
    g = case.grid
    assert g is not None, "a case without [data] has a [grid] (checked)"
    if g.file is not None:  # cell centres from the file's x (and y) coordinates
        from assim.io.grid_file import cartesian_grid_from_file

        return cartesian_grid_from_file(g.file, g.ndim, Periodic() if g.boundary == "periodic" else Neumann())
    return case.model.grid_for(g)


def make_model(
    case: Case, grid: AbstractGrid, spin_up: bool = True, provenance: dict | None = None
) -> tuple[AbstractModel, PyTree[jax.Array]]:
    """The model and the truth's initial state (lorenz96: spun up unless `spin_up` is False).

    How field-valued parameters from sources reached the grid goes into `provenance`."""
    return case.model.build(grid, case.time.dt, spin_up, provenance=provenance)


def make_covariance(case: Case, grid: AbstractGrid) -> AbstractBackgroundCovariance:
    """B of the case: the [background] kind for each field of the model's state."""
    return case.model.covariance(case.background, grid)


def make_model_error_covariance(case: Case, grid: AbstractGrid) -> AbstractBackgroundCovariance:
    """Q of the case's [weak_constraint]: a B-like covariance of the error of one model step."""
    assert case.weak_constraint is not None, "a weak-constraint case"
    return make_covariance(case.model_copy(update={"background": case.weak_constraint.q}), grid)


def make_timing(case: Case):
    """Which model-error control forces each step ([weak_constraint.timing])."""
    assert case.weak_constraint is not None, "a weak-constraint case"
    return case.weak_constraint.timing.build()


def make_solver(case: Case, control=None, shape=None, *, grid=None, inflow=None, start=None) -> GaussNewton:
    """The case's solver for controls shaped like `control` (None: validation, for controls of grid shape `shape`).

    An inner model ([solver.inner_model]) is built like the case's model: on `grid` (default: the case's [grid]),
    with the `inflow` of open boundaries and the window's `start` date."""
    key = jax.random.fold_in(jax.random.PRNGKey(case.observations.seed), 104729)  # preconditioner probes
    if grid is None and case.grid is not None:
        grid = make_grid(case)
    solver = case.solver.build(control, key, shape, model=case.model, grid=grid, dt=case.time.dt, inflow=inflow,
                               start=start)  # fmt: skip
    # kind "unrolled": a trained solver (None when validating) that solves and reports like Gauss-Newton
    return cast(GaussNewton, solver)


def make_operator(case: Case, grid: AbstractGrid, key: jax.Array):
    """Observation operator and the coordinates of its observed points."""
    assert case.observations.network is not None, "a twin's synthetic network (checked)"
    return case.observations.network.build(grid, key, case.model.component)
