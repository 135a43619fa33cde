"""Every case-file table checks itself against the whole case, in every case form (twin, file, [data])."""

import copy

import pytest

from assim.case.config import validate
from assim.errors import ConfigError

TWIN = {
    "model": {"kind": "diffusion", "kappa": 0.01},
    "grid": {"n": 8, "ndim": 2, "boundary": "periodic"},
    "time": {"n_steps": 4, "dt": 0.01},
    "observations": {"network": {"kind": "regular", "spacing": 2}, "noise": 0.05},
    "background": {"kind": "diagonal", "variance": 0.04},
}


def case(*, file: bool = False, **tables) -> dict:
    """The twin above (or, with `file`, the same case reading observations.file) with tables replaced."""
    data = copy.deepcopy(TWIN)
    if file:
        data["observations"] = {"file": "obs.nc"}
    data.update(tables)
    return data


def fails(data: dict, key: str) -> str:
    with pytest.raises(ConfigError) as err:
        validate(data)
    text = str(err.value)
    assert text.startswith(f"{key}: ") and "\n" not in text, text
    return text


@pytest.mark.parametrize("file", [False, True], ids=["twin", "observations_file"])
def test_a_model_checks_its_grid_in_every_form(file):
    sw = {"kind": "shallow_water", "depth": 100.0, "initial": {"centre": [0.5]}}
    fails(case(file=file, model=sw, grid={"n": 8, "ndim": 1, "boundary": "periodic"}), "grid.ndim")
    fails(case(file=file, model={"kind": "burgers", "nu": 0.01}), "grid.ndim")
    fails(case(file=file, model={"kind": "lorenz96"}, grid={"n": 8, "ndim": 1, "boundary": "neumann"}), "grid.ndim")
    python = {"kind": "python", "module": "m", "file": "m.py", "attribute": "f"}
    assert "exactly one" in fails(case(file=file, model=python), "model.module")
    fails(case(file=file, model={"kind": "diffusion", "kappa": 0.01, "initial": {"centre": [0.5]}}),
          "model.initial.centre")  # fmt: skip
    shallow = case(file=file, model={**sw, "initial": {"centre": [0.5, 0.5]}},
                   grid={"n": 8, "ndim": 2, "boundary": "periodic"})  # fmt: skip
    assert validate(shallow).model.kind == "shallow_water"  # a multi-field state may read observation files


@pytest.mark.parametrize("file", [False, True], ids=["twin", "observations_file"])
def test_b_and_q_check_themselves_at_their_own_path(file):
    fails(case(file=file, grid={"n": 8, "ndim": 2, "boundary": "neumann"},
               background={"kind": "spectral_gaussian", "variance": 0.04, "length_scale": 0.1}), "background.kind")  # fmt: skip
    fails(case(file=file, background={"kind": "climatology"}), "background.kind")
    fails(case(file=file, background={"kind": "diagonal", "variance": 0.04, "velocity_variance": 0.1}),
          "background.velocity_variance")  # fmt: skip
    if not file:  # a file case is strong-constraint (refused as a form, before Q checks itself)
        q = {"q": {"kind": "climatology"}}
        fails(case(weak_constraint=q), "weak_constraint.q.kind")
        q = {"q": {"kind": "diagonal", "variance": 1e-4}, "timing": {"kind": "subwindows", "length": 5}}
        fails(case(weak_constraint=q), "weak_constraint.timing.length")


def test_networks_check_themselves_against_the_grid():
    fails(case(observations={"network": {"kind": "regular", "spacing": 9}, "noise": 0.1}),
          "observations.network.spacing")  # fmt: skip
    fails(case(observations={"network": {"kind": "random_fraction", "fraction": 0.01}, "noise": 0.1}),
          "observations.network.fraction")  # fmt: skip
    fails(case(observations={"network": {"kind": "stations", "points": [[0.5, 2.0]]}, "noise": 0.1}),
          "observations.network.points.0")  # fmt: skip
    fails(case(observations={"network": {"kind": "stations_and_tracks"}, "noise": 0.1}), "observations.network.kind")


def test_the_form_is_checked_before_the_tables():
    """A file case refuses the tables a twin needs; a [data] case refuses a [grid] before any table speaks."""
    fails(case(file=True, cycling={"window": 2, "shift": 2, "n_windows": 2}), "cycling")
    data = case(
        data={
            "field": {"file": "f.nc", "variable": "sst"},
            "dimension": "time",
            "window": 4,
            "climatology": {"index": [0, 3]},
        },
        background={"kind": "climatology"},
    )
    fails(data, "grid")
    del data["grid"]
    assert "tracer models" in fails({**data, "model": {"kind": "burgers", "nu": 0.01}}, "model.kind")
    fails({**data, "background": {"kind": "climatology"}, "model": {"kind": "advection_diffusion", "kappa": 0.0}},
          "model.wind")  # fmt: skip
