"""Case files: a TOML twin experiment validated by a pydantic schema; errors name the key path and the fix.

A case has the sections `model` (kind and physical parameters), `grid`, `time` (n_steps, dt),
optional `cycling` (window, shift, n_windows), `observations` (a synthetic network, noise σ,
PRNG seed), `background` (B kind, variance, length scale), `solver` (Gauss-Newton settings,
optional Levenberg-Marquardt damping) and `outputs`. Every table forbids unknown keys;
`kind` selects the member of a tagged union. `load_case(path, overrides)` applies
`--set key.sub=value` overrides (values parsed as TOML) before validating.
"""

from __future__ import annotations

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


ModelConfig = Annotated[
    Union[DiffusionModel, AdvectionDiffusionModel, BurgersModel, Lorenz96Model, ShallowWaterModel],
    Field(discriminator="kind"),
]


class GridConfig(_Strict):
    """Cartesian grid of n cells per axis over [0, length)^ndim (lorenz96: n variables, ndim = 1)."""

    n: int = Field(ge=4)
    ndim: Literal[1, 2] = 2
    length: float = Field(1.0, gt=0)
    boundary: Literal["periodic", "neumann"] = "periodic"


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


NetworkConfig = Annotated[Union[RandomFraction, Stations, Regular], Field(discriminator="kind")]


class ObservationsConfig(_Strict):
    """A synthetic network observing every `every` steps with Gaussian noise σ = `noise`; `seed` drives all draws."""

    network: NetworkConfig
    every: int = Field(1, ge=1)
    noise: float = Field(gt=0)
    seed: int = 0


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


class DiffusionB(_Strict):
    """Correlations by M implicit diffusion steps (any boundary)."""

    kind: Literal["diffusion"]
    variance: float = Field(gt=0)
    velocity_variance: float | None = Field(None, gt=0)
    length_scale: float = Field(gt=0)
    n_iterations: int = Field(10, ge=2)


class DiagonalB(_Strict):
    """Uncorrelated background errors."""

    kind: Literal["diagonal"]
    variance: float = Field(gt=0)
    velocity_variance: float | None = Field(None, gt=0)


BackgroundConfig = Annotated[Union[SpectralB, DiffusionB, DiagonalB], Field(discriminator="kind")]


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


SolverConfig = Annotated[Union[GaussNewtonSolver, LevenbergMarquardtSolver], Field(discriminator="kind")]


class OutputsConfig(_Strict):
    """Where results go and whether figures are drawn."""

    directory: str = "out"
    figures: bool = True


class Case(_Strict):
    """A whole twin experiment."""

    name: str = "case"
    description: str = ""
    model: ModelConfig
    grid: GridConfig
    time: TimeConfig
    cycling: CyclingConfig | None = None
    observations: ObservationsConfig
    background: BackgroundConfig
    solver: SolverConfig = GaussNewtonSolver(kind="gauss_newton")
    outputs: OutputsConfig = OutputsConfig()




# ---------------------------------------------------------------- errors
def _path(loc: tuple, data: Any) -> str:
    """Key path of a pydantic error location, without the union tags pydantic inserts."""
    parts = []
    for item in loc:
        if isinstance(data, dict) and item not in data and data.get("kind") == item:
            continue  # the tag of a discriminated union
        parts.append(str(item))
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
            if len(p) != g.ndim or not all(0 <= c <= g.length and math.isfinite(c) for c in p):
                fail(f"observations.network.points.{i}",
                     f"a station needs {g.ndim} coordinates inside [0, {g.length}] (got {p})")  # fmt: skip
    if net.kind == "random_fraction" and int(net.fraction * g.n**g.ndim) < 1:
        fail("observations.network.fraction", f"observes no cell of the {g.n}^{g.ndim} grid; raise it")
    if net.kind == "regular" and net.spacing > g.n:
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
    return case


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
                raise ConfigError(f"--set {text}: {'.'.join(keys[: i + 1])} is a value, not a table")
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
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read case file {str(path)!r}: {exc.strerror}; check the path") from None


def parse_case_text(text: str, source: str = "case") -> dict:
    """Raw table of a TOML case (ConfigError on a syntax error)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def load_case(path: str | Path, overrides: list[str] = ()) -> tuple[Case, str]:
    """Validated case from a TOML file with overrides applied, and the file's text."""
    text = read_case_text(path)
    data = apply_overrides(parse_case_text(text, str(path)), list(overrides))
    return validate(data), text


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
