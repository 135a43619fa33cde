"""Fuzzing the command line: over 1000 near-valid case files and --set overrides per run, fed to `assim`.

Each generated case starts from a shipped case and is mutated the ways a scientist gets a case wrong: a key
dropped, an unknown key added, a kind changed to another valid or an invalid kind, a number set to 0, negative,
inf, nan, huge or the wrong type, a list of the wrong length, a missing file, a table replaced by a scalar;
overrides are built from the schema's real key paths. For each, `assim validate` (in-process: validate never
runs the case) exits 0 with one line on stdout or 2 with exactly one line on stderr, never a traceback, and
leaves no file behind; a few `assim run` processes on tiny grids check the run path's refusals the same way.
Hypothesis runs derandomized, so a CI run is reproducible.
"""

import contextlib
import copy
import io
import math
import subprocess
import sys
import tempfile
import tomllib
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from test_config_properties import toml_text, toml_value

from assim.case.config import Case, resolve_files
from assim.cli import main

ROOT = Path(__file__).parents[1]
CASES = sorted((ROOT / "cases").glob("*.toml"))
BASES = {p.stem: resolve_files(tomllib.loads(p.read_text()), p.parent) for p in CASES}
MAX_MEMORY = "2GB"  # a near-valid case may be huge: refused by the memory preflight, never allocated here
BATTERY = settings(max_examples=700, deadline=None, database=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
OVERRIDES = settings(BATTERY, max_examples=350)
RUNS = settings(BATTERY, max_examples=10)


# ---------------------------------------------------------------- the schema's key paths and kinds
def _models(annotation) -> list[type[BaseModel]]:
    """The case-table classes an annotation allows (through Annotated, unions, Optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def schema_paths(model: type[BaseModel] = Case, prefix: tuple = (), depth: int = 0) -> dict[tuple, list[str]]:
    """Every key path of the schema → the `kind` tags of the tables allowed there (empty: not a tagged table)."""
    out: dict[tuple, list[str]] = {}
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        members = _models(field.annotation)
        out.setdefault(path, [])
        for member in members:
            kind = member.model_fields.get("kind")
            if kind is not None:
                out[path].extend(typing.get_args(kind.annotation))
            if depth < 3:
                for sub, tags in schema_paths(member, path, depth + 1).items():
                    out.setdefault(sub, []).extend(t for t in tags if t not in out.get(sub, []))
    return out


PATHS = schema_paths()
KINDS = sorted({tag for tags in PATHS.values() for tag in tags})
assert len(PATHS) > 150 and {"lorenz96", "gauss_newton", "spectral_gaussian", "random_fraction"} <= set(KINDS)

# ---------------------------------------------------------------- mutations of a shipped case
BAD_NUMBERS = [0, -1, -0.5, 1e-300, 1e300, 10**30, 2**63 - 1, math.inf, -math.inf, math.nan, "3", "", True, [], {}]
PLAUSIBLE = [0.01, 0.1, 0.5, 1, 2, 4, 8, 16, 32]  # values a valid case may hold: some variants stay valid
numbers = st.one_of(st.sampled_from(BAD_NUMBERS), st.sampled_from(PLAUSIBLE), st.integers(-(10**6), 10**9),
                    st.floats(-1e6, 1e6))  # fmt: skip
any_value = st.one_of(numbers, st.sampled_from(KINDS), st.text(max_size=6), st.lists(st.integers(-2, 5), max_size=3))


def _paths(table: dict, prefix=()) -> list[tuple]:
    out = []
    for k, v in table.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out.extend(_paths(v, (*prefix, k)))
    return out


def _get(table, path):
    for k in path:
        table = table[k]
    return table


def _put(table: dict, path: tuple, value) -> None:
    """Set a nested key, creating tables on the way (nothing where a value stands in the way)."""
    for k in path[:-1]:
        table = table.setdefault(k, {})
        if not isinstance(table, dict):
            return
    table[path[-1]] = value


@st.composite
def near_valid(draw) -> dict:
    """A shipped case with one to three edits of the kinds a scientist makes."""
    data = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    for _ in range(draw(st.integers(1, 3))):
        existing = _paths(data)
        path = draw(st.sampled_from(existing))
        parent, key = _get(data, path[:-1]), path[-1]
        tables = [p for p in existing if isinstance(_get(data, p), dict)]
        op = draw(st.sampled_from(["drop", "unknown", "kind", "number", "list", "file", "scalar", "schema_key"]))
        if op == "drop":
            del parent[key]
        elif op == "unknown":
            where = _get(data, draw(st.sampled_from(tables))) if tables and draw(st.booleans()) else data
            where[draw(st.sampled_from(["n_step", "kinds", "noise_", "Grid", "extra", "dt2"]))] = draw(any_value)
        elif op == "kind":
            kinded = [p for p in tables if "kind" in _get(data, p)]
            if kinded:
                _get(data, draw(st.sampled_from(kinded)))["kind"] = draw(st.one_of(st.sampled_from(KINDS),
                                                                                   st.sampled_from(["", "Diffusion", "gauss-newton", 3])))  # fmt: skip
        elif op == "number":
            numeric = [
                p for p in existing if isinstance(_get(data, p), (int, float)) and not isinstance(_get(data, p), bool)
            ]
            if numeric:
                target = draw(st.sampled_from(numeric))
                _get(data, target[:-1])[target[-1]] = draw(numbers)
        elif op == "list":
            lists = [p for p in existing if isinstance(_get(data, p), list) and _get(data, p)]
            if lists:
                target = draw(st.sampled_from(lists))
                items = _get(data, target)
                _get(data, target[:-1])[target[-1]] = items[:-1] if draw(st.booleans()) else [*items, items[-1]]
        elif op == "file":
            files = [p for p in existing if p[-1] in ("file", "checkpoint")]
            target = draw(st.sampled_from(files)) if files else ("observations", "file")
            _put(data, target, draw(st.sampled_from(["/nonexistent/data.nc", "missing.nc", "package:nopackage/x.nc"])))
        elif op == "scalar":
            if tables:
                target = draw(st.sampled_from(tables))
                _get(data, target[:-1])[target[-1]] = draw(st.sampled_from([0, 1.5, "table", True, []]))
        else:  # a real key of the schema, somewhere the case does not have it yet
            _put(data, draw(st.sampled_from(sorted(PATHS, key=str))), draw(any_value))
        if not data:
            data["name"] = "emptied"
    return data


@st.composite
def schema_overrides(draw, base: dict | None = None) -> list[str]:
    """One to three `--set KEY.SUB=VALUE` with real key paths of the schema (or of the `base` case's numbers)."""
    out = []
    numeric = [p for p in _paths(base or {}) if type(_get(base, p)) in (int, float)]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(sorted(PATHS, key=str)))
        tags = PATHS[path]
        if numeric and draw(st.booleans()):  # a number of the case itself, most often to a plausible value
            path, value = draw(st.sampled_from(numeric)), draw(st.one_of(st.sampled_from(PLAUSIBLE), numbers))
        elif tags and draw(st.booleans()):
            path, value = (*path, "kind"), draw(st.sampled_from([*tags, "nope"]))
        else:
            value = draw(any_value)
        out.append(f"--set={'.'.join(path)}={toml_value(value)}")
    return out


# ---------------------------------------------------------------- the properties
def validate_in_process(data: dict, overrides: list[str] = ()) -> tuple[int, str, str]:
    """(status, stdout, stderr) of `assim validate` on the case; nothing else may appear in its directory."""
    with tempfile.TemporaryDirectory() as tmp:
        data = copy.deepcopy(data)
        if isinstance(data.get("outputs"), dict):
            data["outputs"]["directory"] = str(Path(tmp) / "out")  # where a run would write: must stay absent
        case = Path(tmp) / "case.toml"
        case.write_text(toml_text(data), encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            status = main(["validate", str(case), "--max-memory", MAX_MEMORY, *overrides])
        assert sorted(p.name for p in Path(tmp).rglob("*")) == ["case.toml"]
    return status, out.getvalue(), err.getvalue()


def assert_documented(status: int, stdout: str, stderr: str) -> None:
    """Exit 0 with one line of stdout, or 2 with exactly one line `assim: error: …` on stderr, no traceback."""
    assert status in (0, 2), (status, stderr)
    assert "Traceback" not in stdout + stderr
    if status == 0:
        assert stderr == "" and stdout.count("\n") == 1 and ": valid (" in stdout, (stdout, stderr)
    else:
        assert stdout == "" and stderr.startswith("assim: error: ") and stderr.count("\n") == 1, stderr
        assert stderr.endswith("\n") and len(stderr.strip()) > len("assim: error: "), stderr


@BATTERY
@given(near_valid())
def test_validate_on_near_valid_cases_exits_0_or_2_with_one_line(data):
    assert_documented(*validate_in_process(data))


@OVERRIDES
@given(st.sampled_from(sorted(BASES)), st.data())
def test_validate_with_schema_overrides_exits_0_or_2_with_one_line(name, data):
    assert_documented(*validate_in_process(BASES[name], data.draw(schema_overrides(BASES[name]))))


TINY = {"quickstart": ["grid.n=8", "time.n_steps=2", "observations.every=1"],
        "lorenz96": ["grid.n=8", "time.n_steps=4", "cycling.window=2", "cycling.shift=2", "cycling.n_windows=2",
                     "model.spin_up=0"]}  # fmt: skip


@RUNS
@given(st.sampled_from(sorted(TINY)), st.data())
def test_run_refusals_exit_2_with_one_line_and_leave_nothing(name, data):
    """`assim run` on a tiny grid with one schema override that the validator refuses: the same line, nothing written."""
    overrides = [f"--set={o}" for o in TINY[name]] + data.draw(schema_overrides(BASES[name]).filter(
        lambda sets: validate_in_process(BASES[name], [f"--set={o}" for o in TINY[name]] + sets)[0] == 2))  # fmt: skip
    expected = validate_in_process(BASES[name], overrides)[2]
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp) / "case.toml"
        case.write_text(toml_text(BASES[name]), encoding="utf-8")
        out = Path(tmp) / "out"
        proc = subprocess.run([sys.executable, "-m", "assim.cli", "run", str(case), "--out", str(out),
                               "--max-memory", MAX_MEMORY, "-q", *overrides], check=False, capture_output=True,
                              text=True, timeout=120, cwd=ROOT)  # fmt: skip
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert_documented(proc.returncode, proc.stdout, proc.stderr)
        if "outputs" not in expected:  # `run --out` sets outputs.directory, which an override may also touch
            assert proc.stderr == expected
        assert sorted(p.name for p in Path(tmp).rglob("*")) == ["case.toml"]


# ---------------------------------------------------------------- what the fuzzer found (shrunk examples)
@pytest.mark.parametrize("case, overrides", [
    ("quickstart", ["--set=grid.n=100000"]),  # a 2-D grid of 10^10 cells: once a NumPy allocation traceback
    ("lorenz96", ["--set=time.n_steps=100000000", "--set=cycling.n_windows=1"]),
    ("real_fields", ['--set=model.wind.u.mean=["time", "time"]']),  # numpy: "duplicate value in 'axis'" traceback
    ("real_fields", ['--set=model.wind.u.mean=["nodim"]']),  # xarray: a ValueError traceback (found by hand)
])  # fmt: skip
def test_found_by_the_fuzzer(case, overrides):
    status, stdout, stderr = validate_in_process(BASES[case], overrides)
    assert_documented(status, stdout, stderr)
    assert status == 2
    key = overrides[0].removeprefix("--set=").partition("=")[0]
    assert stderr.startswith(f"assim: error: {key.rpartition('.')[0] if 'mean' in key else 'memory'}: "), stderr
