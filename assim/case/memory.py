"""Memory a case needs, estimated from its validated tables before anything is allocated; refused if it cannot fit.

The estimate counts float64 values: the twin's truth trajectory and observations, the trajectories a run's
outputs keep (truth, background, analysis), and per window the trajectories 4D-Var holds (the nonlinear
trajectory, the residuals its linearisation keeps for the tangent-linear and adjoint sweeps: no checkpointing in
the case layer) plus the work vectors of the Krylov solvers (the outer CG in control space, the model's own
implicit solves in state space); training multiplies the window by the batch and the unrolled layers.
No JAX here: `preflight` runs right after the case loads, before the build.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from assim.errors import ConfigError

BYTES = 8  # float64
OUTPUT_TRAJECTORIES = 4  # the twin's truth, and the outcome's truth, background and analysis (numpy copies)
LINEARISED = 3  # per window step: the trajectory, the linearisation's residuals, the adjoint's cotangents
KRYLOV_VECTORS = 8  # CG in control space: x, r, p, Ap, the background and gradient, two spare
MODEL_SOLVER_VECTORS = {"advection_diffusion": 24, "burgers": 24, "diffusion": 6, "shallow_water": 6}  # GMRES(20)
UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


@dataclass(frozen=True)
class Estimate:
    """Values of each part of a case's memory (float64 values; `bytes` is their total)."""

    state: int  # values of one model state (every component)
    steps: int  # model steps of the experiment (the truth's trajectory has steps + 1 states)
    window: int  # steps of one 4D-Var window
    batch: int  # windows held at once (training batch × unrolled layers; 1 otherwise)
    held: int  # the twin's truth and observations and the outputs' trajectories
    per_window: int  # the trajectories and Krylov vectors of one window's solve

    @property
    def bytes(self) -> int:
        """Total bytes: what is held plus every window of the batch."""
        return BYTES * (self.held + self.batch * self.per_window)

    def describe(self) -> str:
        """The sizes in words, e.g. `state 2304 values × 11 window states × 3 …`."""
        text = (f"state {self.state:,} values × {self.window + 1:,} window states × {LINEARISED} kept, "
                f"truth and outputs {self.state:,} × {self.steps + 1:,} states × {OUTPUT_TRAJECTORIES}")  # fmt: skip
        return text + (f", batch {self.batch}" if self.batch > 1 else "")


def parse_size(text: str) -> int:
    """`2GB`, `500 MB`, `1.5GiB`, `123456` (bytes) → bytes (decimal units for kB/MB/GB/TB, binary for KiB/…)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS or not math.isfinite(value := float(match.group(1))) or value <= 0:
        raise ConfigError(f"--max-memory {text!r}: expected a size such as 2GB, 500MB or 1.5GiB")
    return int(value * UNITS[unit])


def human(n: float) -> str:
    """Bytes as `1.2 GB` (decimal units)."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def available() -> int | None:
    """Memory the machine can give now: MemAvailable of /proc/meminfo (psutil where installed); None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _file_shape(path: str, variable: str | None, drop: set[str]) -> dict[str, int] | None:
    """Sizes of a netCDF variable's dimensions (or of its x/y coordinates), read from the header; None if unreadable."""
    try:
        import xarray as xr

        with xr.open_dataset(path, decode_times=False) as ds:
            if variable is None:
                return {d: ds.sizes[d] for d in ("y", "x") if d in ds.sizes} or None
            return {str(d): n for d, n in ds[variable].sizes.items() if d not in drop}
    except Exception:  # noqa: BLE001 - an unreadable file is reported, with its key, by the build's own checks
        return None


def state_values(case) -> int | None:
    """Values of one model state: n^ndim cells (× 3 fields for shallow water), or the [data] field's cells."""
    components = max(1, len(getattr(case.model, "fields", ())))
    if case.data is not None:
        f = case.data.field
        shape = _file_shape(f.file, f.variable, {case.data.dimension, *f.sel, *f.isel, *f.mean})
        if shape is None:
            return None
        factor = (lambda d: int(f.coarsen.get(d, 1))) if isinstance(f.coarsen, dict) else (lambda d: int(f.coarsen))
        return components * math.prod(max(1, n // factor(d)) for d, n in shape.items())  # subset: an upper bound
    g = case.grid
    if g.file is not None:
        shape = _file_shape(g.file, None, set())
        return None if shape is None else components * math.prod(shape.values())
    return components * g.n ** (1 if case.model.kind == "lorenz96" else g.ndim)


def _observed_fraction(case, state: int) -> float:
    """Share of the state a network observes at each observed time (1 when unknown)."""
    net = case.observations.network
    if getattr(net, "fraction", None) is not None:
        return net.fraction
    if getattr(net, "spacing", None) is not None:
        return 1.0 / net.spacing ** (case.grid.ndim if case.grid is not None else 1)
    if getattr(net, "points", None) is not None:
        return min(1.0, len(net.points) / state)
    return 1.0


def estimate(case) -> Estimate | None:
    """The memory estimate of a validated case (None where its state size cannot be read before the build)."""
    state = state_values(case)
    if state is None:
        return None
    steps = case.time.n_steps
    window = case.cycling.window if case.cycling is not None else steps
    every = max(1, case.observations.every)
    observations = 3 * math.ceil(state * _observed_fraction(case, state)) * (steps // every + 1)  # y, σ, H's index
    held = OUTPUT_TRAJECTORIES * state * (steps + 1) + observations
    control = state * (window + 1) if case.weak_constraint is not None else state  # weak: a state per step
    vectors = KRYLOV_VECTORS * control + MODEL_SOLVER_VECTORS.get(case.model.kind, 4) * state
    per_window = LINEARISED * state * (window + 1) + vectors
    t = case.training
    batch = t.batch_size * (t.layers if t.hypergradient.kind == "unrolled" else 1) if t is not None else 1
    return Estimate(state, steps, window, batch, held, per_window)


_BOUND: list[int | None] = [None]  # the command line's --max-memory, in bytes


def set_bound(max_memory: str | int | None) -> None:
    """The default bound of `preflight` (the `--max-memory` option; None: what the machine has available)."""
    _BOUND[0] = parse_size(max_memory) if isinstance(max_memory, str) else max_memory


def preflight(case, max_memory: str | int | None = None):
    """The case, or ConfigError (one line naming the sizes) if its estimate exceeds `max_memory` or what is free."""
    bound = parse_size(max_memory) if isinstance(max_memory, str) else (max_memory or _BOUND[0])
    found = estimate(case)
    free = available() if found is not None else None
    if found is not None and bound is not None and found.bytes > bound:
        limit = f"the --max-memory bound {human(bound)}"
    elif found is not None and free is not None and found.bytes > free:
        limit = f"the {human(free)} this machine has available (MemAvailable)"
    else:
        return case
    raise ConfigError(f"memory: the case needs about {human(found.bytes)} ({found.describe()}), more than {limit}; "
                      "shrink grid.n, time.n_steps or cycling.window (or training.batch_size), or raise --max-memory")  # fmt: skip


__all__ = ["Estimate", "available", "estimate", "human", "parse_size", "preflight", "set_bound", "state_values"]
