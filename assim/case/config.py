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
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w
from pydantic import ValidationError

from assim.case.schema import (
    BackgroundConfig,
    CyclingConfig,
    DataConfig,
    DiscoverConfig,
    GaussNewtonSolver,
    GridConfig,
    ModelConfig,
    ObservationsConfig,
    OutputsConfig,
    SolverConfig,
    TimeConfig,
    TrainingConfig,
    TruthConfig,
    WeakConstraintConfig,
    file_tables,
    resolve_path,
)
from assim.case.schema.base import Strict as _Strict
from assim.case.schema.checks import checked, grid_length  # noqa: F401
from assim.errors import ConfigError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails


class Case(_Strict):
    """A whole twin experiment."""

    name: str = "case"
    description: str = ""
    model: ModelConfig
    grid: GridConfig | None = None  # required except with [data] (the grid comes from the data)
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
    data: DataConfig | None = None


# ---------------------------------------------------------------- errors
def _path(loc: tuple, data: Any) -> str:
    """Key path of a pydantic error location, without the union tags pydantic inserts."""
    parts = []
    for item in loc:
        if isinstance(data, dict) and item not in data and data.get("kind") == item:
            continue  # the tag of a discriminated union
        if isinstance(item, str) and not (isinstance(data, dict) and item in data) and _member_tag(item):
            continue  # the member of a plain union (`float | FieldSourceConfig`): "constrained-float", …
        parts.append(str(item) if str(item).isprintable() else repr(item))  # one-line messages, odd keys visible
        if isinstance(data, dict):
            data = data.get(item)
        elif isinstance(data, list) and isinstance(item, int) and item < len(data):
            data = data[item]
        else:
            data = None
    return ".".join(parts) or "case"


def _member_tag(item: str) -> bool:
    """Whether a location item names a union member (a type), not a key (keys are lower-case identifiers)."""
    return not item.isidentifier() or item[0].isupper() or item in ("float", "int", "str", "bool", "list", "dict")


def _message(err: ErrorDetails, path: str) -> str:
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    bounds = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<", "less_than_equal": "≤"}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        bound = f"{bound:g}" if isinstance(bound, (int, float)) else bound
        return f"{path}: must be {bounds[kind]} {bound} (got {got!r}); set it to a value {bounds[kind]} {bound}"
    if kind == "extra_forbidden":
        return f"{path}: unknown key; remove it or fix its spelling (see the schema in assim/case/config.py)"
    if kind == "missing":
        return f"{path}: required key is missing; add it to the case file or pass --set {path}=VALUE"
    if kind == "union_tag_invalid":
        return f"{path}.kind: unknown kind {ctx.get('tag')!r}; use one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{path}.kind: required key is missing; set kind to select the {path} type"
    text = err["msg"].removeprefix("Value error, ")
    got = "" if "(got " in text else f" (got {got!r})"  # a table's own check names what it got: not the whole table
    return f"{path}: {text[0].lower() + text[1:]}{got}; fix the value in the case file or with --set"


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
        errors = exc.errors()
        # a plain union reports every member: prefer the error of the member shaped like the input (a table's key)
        err = next((e for e in errors if e["loc"][: len(errors[0]["loc"]) - 1] == errors[0]["loc"][:-1]
                    and len(e["loc"]) > len(errors[0]["loc"])), errors[0])  # fmt: skip
        raise ConfigError(_message(err, _path(err["loc"], data))) from None
    return checked(case)


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


def resolve_files(data: dict, base: Path) -> dict:
    """A copy of the raw case with every table's `file` joined to `base` (or found in a package: `package:...`)."""
    import copy

    data = copy.deepcopy(data)
    for table in file_tables(data):
        table["file"] = resolve_path(table["file"], base)
    obs = data.get("observations")
    if isinstance(obs, dict) and isinstance(obs.get("file"), list):  # observations.file = [several files]
        obs["file"] = [resolve_path(p, base) if isinstance(p, str) and p else p for p in obs["file"]]
    return data


def load_case(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Case, str]:
    """Validated case from a TOML file with overrides applied (file paths relative to its directory), and its text."""
    text = read_case_text(path)
    data = apply_overrides(parse_case_text(text, str(path)), list(overrides))
    return validate(resolve_files(data, Path(path).parent)), text


def load_case_for_outputs(
    path: str | Path, overrides: Sequence[str] = (), out_dir: str | Path | None = None
) -> tuple[Case, str, list[str]]:
    """`load_case` with `--out DIR` applied as an outputs.directory override; also the overrides used."""
    overrides = list(overrides)
    if out_dir is not None:
        overrides.append(f"outputs.directory={json.dumps(str(out_dir))}")
    case, text = load_case(path, overrides)
    return case, text, overrides


def _without_none(v: Any) -> Any:
    """A dumped value with every None left out (TOML has no null: a missing key reads back as the default None)."""
    if isinstance(v, dict):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_without_none(x) for x in v]
    return v


def to_toml(case: Case) -> str:
    """The case as TOML (every default spelled out, written by tomli-w): loading it gives back the same case."""
    return tomli_w.dumps(_without_none(case.model_dump()))
