"""The twin form of a case: a preset truth run of the case's model, synthetic observations of it, x_b from B.

Keys: `PRNGKey(observations.seed)` is split into the network's key and the twin's key
(`assim.problems.twin` folds the twin key per network), so a case reproduces exactly from its seed.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from assim.case.config import Case
from assim.case.experiment import (
    Experiment,
    make_covariance,
    make_grid,
    make_model,
    make_model_error_covariance,
    make_operator,
    make_solver,
)
from assim.case.parameters import check_parameter_names, truth_model
from assim.errors import ConfigError
from assim.problems.twin import ObservationNetwork, _normal_like, twin_experiment
from models.base import AbstractModel


def check(case: Case) -> None:
    """Construct the grid, model, B, solver and observation operator (no truth run): their own checks apply."""
    grid = make_grid(case)
    model, _ = make_model(case, grid, spin_up=False)
    truth_model(case, model)
    if case.discover is not None:
        check_parameter_names(model, case.discover.parameters, "discover.parameters", case.model.kind)
    if case.weak_constraint is not None:
        make_model_error_covariance(case, grid)
    make_covariance(case, grid)
    make_solver(case, shape=grid.shape, grid=grid)
    make_operator(case, grid, jax.random.PRNGKey(case.observations.seed))


def build(case: Case, sample: int = 0) -> Experiment:
    """Grid, model, truth, observations, background and solver of window `sample` of a validated case.

    Sample 0 is the case's own window; sample i > 0 (training windows) keeps the observation network and draws
    its own truth (initial state + a draw from B), background and observation noise from fold_in(seed key, i).
    """
    start = time.perf_counter()
    grid = make_grid(case)
    fields: dict = {}  # how field-valued parameters from sources reached the grid
    model, truth0 = make_model(case, grid, provenance=fields)
    covariance = make_covariance(case, grid)
    k_net, k_twin = jax.random.split(jax.random.PRNGKey(case.observations.seed))
    operator, locations = make_operator(case, grid, k_net)
    n_steps = case.time.n_steps
    noise = case.observations.noise
    if noise is None:  # the case's checks require it of a synthetic network
        raise ConfigError("observations.noise: required key is missing; give the σ of the synthetic network's noise")
    network = ObservationNetwork.every(operator, case.observations.every, n_steps, noise)
    true_model = truth_model(case, model)
    if sample:
        truth0, k_twin = sample_window(case, true_model, truth0, covariance, sample)
    twin = twin_experiment(k_twin, true_model, truth0, n_steps, network, covariance)
    jax.block_until_ready(twin.truth)
    exp = Experiment(case, grid, model, covariance, make_solver(case, twin.background, grid=grid), twin, locations, network.steps,
                     truth_model=true_model, provenance={"fields": fields} if fields else {})  # fmt: skip
    exp.timings["build_s"] = time.perf_counter() - start
    return exp


def sample_window(case: Case, model: AbstractModel, truth0, covariance, sample: int):
    """(true initial state, twin key) of training sample `sample` > 0: x^t_0 + B^{1/2} ξ (Lorenz-96: spun up again)."""
    if int(sample) != sample or sample < 0:
        raise ConfigError(f"window sample must be an integer ≥ 0 (got {sample})")
    k_truth, k_twin = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(case.observations.seed), sample))
    draw = covariance.prepare().sqrt(_normal_like(k_truth, covariance.zero_control(truth0)))
    truth0 = jax.tree_util.tree_map(jnp.add, truth0, draw)
    return case.model.resample(model, truth0), k_twin  # lorenz96: back onto the attractor
