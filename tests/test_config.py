"""Case-file schema: shipped cases validate, bad entries fail with one line naming the key path, overrides parse."""

import tomllib
from pathlib import Path

import pytest

from assim.case.config import apply_overrides, parse_override, to_toml, validate
from assim.cli import main
from assim.errors import ConfigError

CASES = sorted((Path(__file__).parents[1] / "cases").glob("*.toml"))
QUICKSTART = Path(__file__).parents[1] / "cases" / "quickstart.toml"


def raw(path=QUICKSTART) -> dict:
    return tomllib.loads(Path(path).read_text())


def test_every_model_has_a_case():
    kinds = {raw(p)["model"]["kind"] for p in CASES}
    assert {"advection_diffusion", "diffusion", "burgers", "lorenz96"} <= kinds
    assert any("cycling" in raw(p) for p in CASES)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_resolved_case_round_trips_through_toml(path):
    case = validate(raw(path))
    assert validate(tomllib.loads(to_toml(case))) == case


BAD = [
    (["--set", "grid.nn=16"], r"^grid\.nn: unknown key"),
    (["--set", "model.kapa=0.1"], r"^model\.kapa: unknown key"),  # inside a discriminated union: no tag in the path
    (["--set", "observations.network.fractoin=0.1"], r"^observations\.network\.fractoin: unknown key"),
    (["--set", "grid.n='big'"], r"^grid\.n: .*integer"),
    (["--set", "observations.noise=-1"], r"^observations\.noise: must be > 0 \(got -1\)"),
    (["--set", "observations.noise=0"], r"^observations\.noise: must be > 0 \(got 0\)"),
    (["--set", "model.kind='navier_stokes'"], r"^model\.kind: unknown kind 'navier_stokes'; use one of"),
    (["--set", "cycling={window=4, shift=6, n_windows=1}"], r"^cycling\.shift: must be ≤ cycling\.window = 4"),
    (["--set", "cycling={window=20, shift=2, n_windows=1}"], r"^cycling\.window: must be ≤ time\.n_steps = 10"),
    (["--set", "cycling={window=4, shift=4, n_windows=3}"], r"^cycling\.n_windows: 3 windows span 12 steps"),
    (["--set", "cycling={window=4, shift=3, n_windows=2}"], r"^cycling\.shift: must be a multiple of"),
    (["--set", "grid.boundary='neumann'"], r"^background\.kind: spectral_gaussian needs grid\.boundary"),
    (["--set", "observations.every=11"], r"^observations\.every: must be ≤ time\.n_steps"),
    (["--set", "time.dt=0"], r"^time\.dt: must be > 0"),
    (["--set", "solver.kind='newton'"], r"^solver\.kind: unknown kind"),
    (["--set", "model.initial.centre=[0.5]"], r"^model\.initial\.centre: needs 2 coordinates"),
    (["--set", "nonsense"], r"^--set 'nonsense': expected KEY\.SUB=VALUE"),
    (["--set", "time.dt=inf"], r"^time\.dt: input should be a finite number \(got inf\)"),
    (["--set", "grid.length=nan"], r"^grid\.length: input should be a finite number"),
    (["--set", "model.kappa=inf"], r"^model\.kappa: input should be a finite number"),  # a member of float | source
    (["--set", "model.kappa={file='k.nc'}"], r"^model\.kappa\.variable: required key is missing"),
]


@pytest.mark.parametrize("extra, pattern", BAD, ids=[b[1][:40] for b in BAD])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_case_fails_with_one_line_naming_the_key(command, extra, pattern, tmp_path, capsys):
    out = tmp_path / "out"
    args = [command, str(QUICKSTART), *extra] + (["--out", str(out)] if command == "run" else [])
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("assim: error: ") and err.count("\n") == 1, err
    import re

    assert re.search(pattern, err.removeprefix("assim: error: ")), err
    assert not list(tmp_path.rglob("*.nc")) and not list(tmp_path.rglob("*.part"))


def test_missing_key_and_unreadable_file(tmp_path, capsys):
    data = raw()
    del data["observations"]["noise"]
    with pytest.raises(ConfigError, match=r"^observations\.noise: required key is missing"):
        validate(data)
    assert main(["validate", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read case file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\nn = 3")
    assert main(["validate", str(bad)]) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_overrides_are_toml_values():
    assert parse_override("grid.n=16") == (["grid", "n"], 16)
    assert parse_override("time.dt = 1e-3") == (["time", "dt"], 1e-3)
    assert parse_override("model.scheme=backward_euler") == (["model", "scheme"], "backward_euler")
    assert parse_override("outputs.figures=false") == (["outputs", "figures"], False)
    keys, value = parse_override('observations.network={kind="stations", count=3}')
    assert value == {"kind": "stations", "count": 3}
    data = apply_overrides(raw(), ["grid.n=16", 'observations.network={kind="stations", count=3}', "cycling.window=2"])
    case = validate({**data, "cycling": {**data["cycling"], "shift": 2, "n_windows": 2}})
    assert case.grid.n == 16 and case.observations.network.kind == "stations" and case.cycling.window == 2
    assert raw()["grid"]["n"] == 48  # the original table is untouched
    with pytest.raises(ConfigError, match="is a value, not a table"):
        apply_overrides(raw(), ["grid.n.sub=1"])
