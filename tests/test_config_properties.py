"""Property-based case-loader tests: random keys, types and values injected into valid case tables.

Whatever is injected, loading gives a valid Case or a one-line ConfigError naming a key — never another
exception; on such a file the CLI exits non-zero with one line on stderr and writes nothing.
"""

import contextlib
import io
import math
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assim.case.config import Case, apply_overrides, to_toml, validate
from assim.cli import main
from assim.errors import ConfigError

CASES = sorted((Path(__file__).parents[1] / "cases").glob("*.toml"))
BASES = [tomllib.loads(p.read_text()) for p in CASES]
FAST = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CLI = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # no lone surrogates: UTF-8 files
NAMES = [
    "kind",
    "n",
    "noise",
    "dt",
    "window",
    "seed",
    "fraction",
    "variance",
    "length_scale",
    "points",
    "centre",
    "initial",
    "network",
    "every",
    "parameters",
    "checkpoint",
    "q",
    "timing",
]
keys = st.one_of(st.sampled_from(NAMES), text)
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 1, 3, 4, 2**31, 0.0, -0.0, 1e-300, 1e300, math.inf, -math.inf, math.nan]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    text,
    st.sampled_from(["diffusion", "lorenz96", "stations", "regular", "random_fraction", "spectral_gaussian",
                     "diagonal", "gauss_newton", "levenberg_marquardt", "periodic", "neumann", "crank_nicolson"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=8,
)


def paths(table: dict, prefix=()) -> list[tuple]:
    """Every key path of a nested table (tables and their entries)."""
    out = []
    for k, v in table.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out.extend(paths(v, (*prefix, k)))
    return out


@st.composite
def mutated(draw) -> dict:
    """A shipped case with 1–3 random edits: set an existing or new key to a random value, or delete a key."""
    import copy

    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        existing = paths(data)
        op = draw(st.sampled_from(["replace", "insert", "delete"] if existing else ["insert"]))
        if op == "insert":
            tables = [()] + [p for p in existing if isinstance(_get(data, p), dict)]
            path = (*draw(st.sampled_from(tables)), draw(keys))
        else:
            path = draw(st.sampled_from(existing))
        parent = _get(data, path[:-1])
        if op == "delete":
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(values)
    return data


def _get(table, path):
    for k in path:
        table = table[k]
    return table


def toml_string(v: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, everything else literal."""
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or c in '"\\\x7f' else c for c in v) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_text(data: dict) -> str:
    """A TOML file of a nested table (every value inline)."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in data.items())


def load_or_error(data: dict) -> Case | ConfigError:
    try:
        return validate(data)
    except ConfigError as err:
        return err


@pytest.mark.parametrize("base", BASES, ids=[p.stem for p in CASES])
def test_toml_writer_of_these_tests_is_faithful(base):
    assert tomllib.loads(toml_text(base)) == base


@FAST
@given(mutated())
def test_loader_gives_a_case_or_a_one_line_config_error(data):
    result = load_or_error(data)  # any other exception fails the test
    if isinstance(result, ConfigError):
        message = str(result)
        assert message and "\n" not in message, message
        assert "Traceback" not in message
        assert ": " in message and not message.startswith(": "), message  # "key.path: what is wrong; the fix"
    else:
        assert isinstance(result, Case)
        assert validate(tomllib.loads(to_toml(result))) == result  # a valid case round-trips


@FAST
@given(mutated(), st.lists(st.tuples(keys, values), min_size=1, max_size=2))
def test_overrides_of_random_keys_give_a_case_or_a_config_error(data, sets):
    overrides = [f"{k}={toml_value(v)}" for k, v in sets]
    try:
        validate(apply_overrides(data, overrides))
    except ConfigError as err:
        assert "\n" not in str(err)


@CLI
@given(mutated().filter(lambda d: isinstance(load_or_error(d), ConfigError)), st.sampled_from(["validate", "run"]))
def test_cli_on_a_bad_file_exits_non_zero_with_one_line_and_writes_nothing(data, command):
    expected = str(load_or_error(data))
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp) / "case.toml"
        case.write_text(toml_text(data), encoding="utf-8")
        out = Path(tmp) / "out"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main([command, str(case)] + (["--out", str(out)] if command == "run" else []))
        assert status == 2
        line = err.getvalue()
        assert line.startswith("assim: error: ") and line.count("\n") == 1 and line.endswith("\n")
        if command == "validate":  # `run --out` adds an override that may fail first (e.g. outputs = 0)
            assert line == f"assim: error: {expected}\n"
        assert sorted(p.name for p in Path(tmp).rglob("*")) == ["case.toml"]


@CLI
@given(st.binary(max_size=64))
def test_cli_on_garbage_bytes_exits_with_one_line(blob):
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp) / "case.toml"
        case.write_bytes(blob)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(["validate", str(case)])
        assert status == 2 and err.getvalue().startswith("assim: error: ") and err.getvalue().count("\n") == 1
