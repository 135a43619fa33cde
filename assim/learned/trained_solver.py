"""Trained unrolled solvers on disk: the module skeleton of a case, checkpoint files, and a solve that reports like
the classical solver's.

A checkpoint is one JSON header line (format, skeleton settings, network kind, control shape, provenance) followed
by the solver's leaves in equinox serialisation (`eqx.tree_serialise_leaves`). Loading rebuilds the skeleton from
the case's `[solver]` settings, checks them against the header (a mismatch names the key and the value to set) and
deserialises into it, so a reloaded solver is bit-identical to the one written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int, PRNGKeyArray, PyTree

from assim.errors import ConfigError
from assim.learned.networks import AbstractControlNetwork, ConvNetwork, MLPNetwork
from assim.learned.preconditioner import DiagonalScaling, SpectralScaling
from assim.learned.unrolled import UnrolledGaussNewton
from assim.solvers.gauss_newton import MAX_OUTER, GaussNewtonDiagnostics

FORMAT = "assim-unrolled-solver"
VERSION = 1
SKELETON_KEYS = ("layers", "cg_steps", "weight_schedule", "correction", "first_guess", "preconditioner",
                 "network_width", "network_depth", "prior")  # fmt: skip
LATER_KEYS = {"preconditioner": "none", "prior": None}  # keys added after VERSION 1: their value in older checkpoints


def _setting(settings, key: str):
    """A skeleton setting as JSON would hold it (a table such as `prior` as its dict)."""
    value: Any = getattr(settings, key, LATER_KEYS.get(key))
    return value.model_dump() if hasattr(value, "model_dump") else value


def network_kind(control: PyTree[Array]) -> str:
    """ "conv" for a control that is one 1-D or 2-D field (periodic conv net), else "mlp" (ravelled controls)."""
    leaves = jax.tree_util.tree_leaves(control)
    return "conv" if len(leaves) == 1 and jnp.ndim(leaves[0]) in (1, 2) else "mlp"


def _network(settings, control: PyTree[Array], n_inputs: int, key: PRNGKeyArray) -> AbstractControlNetwork:
    if network_kind(control) == "conv":
        ndim = jnp.ndim(jax.tree_util.tree_leaves(control)[0])
        return ConvNetwork(n_inputs, ndim, settings.network_width, settings.network_depth, key=key)
    size = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(control))
    return MLPNetwork(n_inputs, size, settings.network_width, settings.network_depth, key=key)


def skeleton(
    settings, control: PyTree[Array], key: PRNGKeyArray, step: float = 1.0, damping: float = 0.0, grid=None
) -> UnrolledGaussNewton:
    """Unrolled solver of the given skeleton settings for controls shaped like `control` (classical at step 1, μ 0).

    A learned prior (`settings.prior`) is built on `grid`, the window's grid (its mask: the active cells)."""
    k_corr, k_first = jax.random.split(key)
    config = getattr(settings, "prior", None)
    if config is not None and grid is None:
        raise ConfigError("prior: a learned prior needs the model's grid; this model has none (remove prior)")
    prior = None if config is None else config.build(grid, control)
    correction = _network(settings, control, 2, k_corr) if settings.correction else None
    first_guess = _network(settings, control, 1, k_first) if settings.first_guess else None
    weight = 1.0 if settings.weight_schedule else None
    return UnrolledGaussNewton(settings.layers, settings.cg_steps, damping=damping, step=step, weight=weight,
                               correction=correction, first_guess=first_guess,
                               preconditioner=_preconditioner(settings, control), prior=prior)  # fmt: skip


def _preconditioner(settings, control: PyTree[Array]):
    kind = getattr(settings, "preconditioner", "none")
    if kind == "diagonal":
        return DiagonalScaling(control)
    if kind == "spectral":
        if network_kind(control) != "conv":
            raise ConfigError('solver.preconditioner = "spectral" needs a control that is one 1-D or 2-D grid field; '
                              'use "diagonal" for this case')  # fmt: skip
        return SpectralScaling(np.shape(jax.tree_util.tree_leaves(control)[0]))
    return None


def header(settings, control: PyTree[Array], **provenance) -> dict:
    """Checkpoint header: skeleton settings, network kind and control shape, plus provenance entries."""
    shapes = [list(np.shape(x)) for x in jax.tree_util.tree_leaves(control)]
    return {"format": FORMAT, "version": VERSION, "skeleton": {k: _setting(settings, k) for k in SKELETON_KEYS},
            "network": network_kind(control), "control_shapes": shapes, **provenance}  # fmt: skip


def save_solver(path: str | Path, solver: UnrolledGaussNewton, head: dict) -> None:
    """Write a checkpoint: the JSON header line, then the solver's leaves."""
    with open(path, "wb") as f:
        f.write((json.dumps(head) + "\n").encode())
        eqx.tree_serialise_leaves(f, solver)


def read_header(path: str | Path, key: str = "solver.checkpoint") -> dict:
    """The header of a checkpoint (ConfigError, naming `key`, if it is missing or not an assim checkpoint)."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except FileNotFoundError:
        raise ConfigError(f"{key}: no checkpoint at {str(path)!r}; run `assim train CASE` first "
                          f"(its training case writes it) or fix {key}") from None  # fmt: skip
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {str(path)!r}: {exc.strerror}; fix {key}") from None
    try:
        head = json.loads(first)
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("format") != FORMAT:  # JSON, and an object with the format
        raise ConfigError(f"{key}: {str(path)!r} is not a solver checkpoint written by `assim train`; fix {key}")
    if head.get("version") != VERSION:
        raise ConfigError(f"{key}: checkpoint format version {head.get('version')} (this assim reads {VERSION}); "
                          "retrain with `assim train CASE`")  # fmt: skip
    return head


def check_settings(settings, head: dict, control: PyTree[Array] | None = None, prefix: str = "solver") -> None:
    """ConfigError naming the first `[solver]` setting (or control shape) that differs from the checkpoint's."""
    for k in SKELETON_KEYS:
        trained = head["skeleton"].get(k, LATER_KEYS.get(k))
        if _setting(settings, k) != trained:
            shown = json.dumps(trained)
            raise ConfigError(f"{prefix}.{k}: the checkpoint was trained with {k} = {shown} (got "
                              f"{json.dumps(_setting(settings, k))}); set {prefix}.{k} = {shown}")  # fmt: skip
    if control is None or not (settings.correction or settings.first_guess):
        return
    shapes = [list(np.shape(x)) for x in jax.tree_util.tree_leaves(control)]
    kind = network_kind(control)
    same = kind == head["network"] and (
        shapes == head["control_shapes"]
        if kind == "mlp"
        else [len(s) for s in shapes] == [len(s) for s in head["control_shapes"]]
    )
    if not same:
        raise ConfigError(
            f"{prefix}.checkpoint: its {head['network']} networks were trained on controls of shape "
            f"{head['control_shapes']}, this case has {shapes}; use the grid of the training case"
        )


def load_solver(path: str | Path, settings, control: PyTree[Array], key: str = "solver.checkpoint", grid=None):
    """The trained solver in a checkpoint, deserialised into the skeleton of `settings` for `control` (on `grid`)."""
    head = read_header(path, key)
    check_settings(settings, head, control)
    like = skeleton(settings, control, jax.random.PRNGKey(0), grid=grid)
    with open(path, "rb") as f:
        f.readline()
        data = f.read()
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(data), like)
    except Exception as exc:  # a truncated or foreign file: numpy / equinox raise various errors
        raise ConfigError(f"{key}: {str(path)!r} does not hold a solver of these settings ({type(exc).__name__}); "
                          "retrain with `assim train CASE`") from None  # fmt: skip


def load_trained(config, control: PyTree[Array] | None, grid=None) -> TrainedSolver | None:
    """The case's `[solver]` of kind "unrolled" ready to solve; `control=None` (validate) checks an existing header."""
    if control is None:
        if Path(config.checkpoint).exists():
            check_settings(config, read_header(config.checkpoint))
        return None
    return TrainedSolver(load_solver(config.checkpoint, config, control, grid=grid))


class TrainedAnalysis(eqx.Module):
    """Analysis of a trained solver: control, initial state and the classical solver's diagnostics."""

    v: PyTree[Array]
    x0: PyTree[Array]
    diagnostics: GaussNewtonDiagnostics
    converged: Bool[Array, ""]
    n_layers: int = eqx.field(static=True)
    cg_steps: int = eqx.field(static=True)

    @property
    def reason(self) -> Int[Array, ""]:
        """`MAX_OUTER`: the trained layers ran their whole budget (no convergence test)."""
        return jnp.asarray(MAX_OUTER, jnp.int32)

    def message(self) -> str:
        """What the solver did (it runs a fixed number of layers: there is no convergence test)."""
        g = np.asarray(self.diagnostics.gradient_norm)
        return (f"ran the {self.n_layers} trained layers of {self.cg_steps} CG iterations (no convergence test); "
                f"gradient norm reduced by {g[-1] / g[0]:.3g}")  # fmt: skip


_solve = eqx.filter_jit(lambda solver, problem: solver.solve(problem))


class TrainedSolver(eqx.Module):
    """A trained unrolled Gauss-Newton solver with the classical solver's `solve(problem)` interface."""

    solver: UnrolledGaussNewton

    def result_problem(self, problem):
        """The window's 4D-Var posed with the solver's learned prior: the problem whose control the analysis is."""
        return self.solver.posed(problem)

    def solve(self, problem, v0: PyTree[Array] | None = None) -> TrainedAnalysis:
        """Run the trained layers on a window (posed with its learned prior; from the learned or zero first guess)."""
        problem = self.solver.posed(problem)
        result = _solve(self.solver, problem) if v0 is None else self.solver.solve(problem, v0)
        return TrainedAnalysis(result.v, result.x0, result.diagnostics, jnp.asarray(False),
                               self.solver.n_layers, self.solver.cg_steps)  # fmt: skip
