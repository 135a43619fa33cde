"""Results as CF-style netCDF (xarray) plus metrics.json and summary.md, written atomically.

`to_dataset(experiment, outcome, case_text)` gives an `xarray.Dataset` with dims
(time, y, x) or (time, x), real coordinates with units, variables truth, background,
analysis, and the observations (values, innovations y − H(x_b), analysis residuals
y − H(x_a)) on (obs_time, obs) with their locations; with several observation sets
(observations.file = [...]) one `obs` dimension concatenates them, set by set, and each
observation carries its own obs_time, obs_step, obs_component, obs_set, position and
obs_error, so `ds.background.sel(time=ds.obs_time, y=ds.obs_y, x=ds.obs_x, method="nearest")`
reads both layouts the same way. The resolved case (TOML), the case
file's text, package versions and solver diagnostics are attributes. `AtomicOutputs`
writes every file under a temporary name and renames all of them only when the run has
succeeded, so a failed run leaves no partial netCDF behind.
"""

from __future__ import annotations

import json
import math
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import xarray as xr

import assim.io.accessor  # noqa: F401  (registers ds.assim)
from assim.case.config import to_toml
from assim.case.experiment import Experiment, Outcome
from assim.io.observation_files import observation_rows
from assim.io.outputs import AtomicOutputs  # noqa: F401  (re-exported: its home is assim.io.outputs)

if TYPE_CHECKING:
    from models.grid import CartesianGrid

PACKAGES = ("assim", "jax", "equinox", "lineax", "optimistix", "numpy", "xarray", "netCDF4", "pydantic")


def json_safe(tree):
    """A JSON-safe copy of nested dicts/lists of numbers: non-finite floats become null."""
    if isinstance(tree, dict):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_safe(v) for v in tree]
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree


def json_text(tree) -> str:
    """Indented strict JSON of a report (non-finite numbers as null), newline-terminated."""
    return json.dumps(json_safe(tree), indent=2, allow_nan=False) + "\n"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _units(exp: Experiment) -> dict[str, str]:
    """Units of lengths, times and fields: the data variable's own ([data] cases), else the model section's."""
    if exp.state_attrs:  # a [data] case: the state variable's own units; time in s, lat/lon in degrees
        return {"length": "m", "time": "s", "state": exp.state_attrs.get("units", "1"), "lat": "degrees_north",
                "lon": "degrees_east"}  # fmt: skip
    return exp.case.model.units()


def _space(exp: Experiment) -> tuple[tuple[str, ...], dict[str, xr.Variable]]:
    grid = exp.grid
    lorenz = exp.case.model.kind == "lorenz96"
    dims = ("x",) if lorenz else tuple(grid.dims)
    coords = {}
    for dim, values in zip(dims, grid.coords().values()):
        if lorenz:  # cell centres are the variable indices
            attrs = {"units": "1", "long_name": "variable index on the Lorenz-96 ring", "axis": "X"}
        elif dim in ("lat", "lon"):
            attrs = {"units": _units(exp)[dim], "standard_name": {"lat": "latitude", "lon": "longitude"}[dim],
                     "long_name": f"{dim} (cell centre)", "axis": {"lat": "Y", "lon": "X"}[dim]}  # fmt: skip
        else:
            attrs = {"units": _units(exp)["length"], "long_name": f"{dim} (cell centre)", "axis": dim.upper()}
        coords[dim] = xr.Variable((dim,), np.asarray(values, dtype=float), attrs)
    return dims, coords


def to_dataset(exp: Experiment, out: Outcome, case_text: str) -> xr.Dataset:
    """CF-style dataset of a run: fields, observations, coordinates with units, provenance attributes."""
    case = exp.case
    dt = case.time.dt
    dims, coords = _space(exp)
    u = _units(exp)
    time_attrs = {"units": u["time"], "long_name": "model time", "axis": "T", "standard_name": "time"}
    coords["time"] = xr.Variable(("time",), np.arange(case.time.n_steps + 1) * dt, time_attrs)
    if exp.start is not None:  # dated data: the window's own calendar times
        start = cast(np.datetime64, exp.start)  # Experiment.start is typed object
        iso = np.datetime_as_string(np.datetime64(start, "s"), unit="s").replace("T", " ")  # pyright: ignore[reportCallIssue, reportArgumentType]  (NumPy's stubs refuse a datetime64 value here)
        dates = np.datetime64(start, "ns") + (np.arange(case.time.n_steps + 1) * dt * 1e9).astype("timedelta64[ns]")  # pyright: ignore[reportCallIssue, reportArgumentType]  (NumPy's stubs refuse a datetime64 value here)
        coords["time"] = xr.Variable(("time",), dates, {"long_name": "model time", "axis": "T",
                                                        "standard_name": "time"},
                                     encoding={"units": f"seconds since {iso}", "dtype": "float64"})  # fmt: skip
    coords["step"] = xr.Variable(("time",), np.arange(case.time.n_steps + 1), {"long_name": "model step", "units": "1"})
    units = {"units": u["state"]}
    if exp.state_attrs:  # the data variable's name and standard name travel with every state field
        units.update({f"source_{k}" if k == "name" else k: v for k, v in exp.state_attrs.items()
                      if k in ("name", "standard_name")})  # fmt: skip
    cycling = case.cycling is not None
    state_dim = "window" if cycling else "time"
    data = {}
    if out.truth is not None:  # twin experiments; a case with observations.file has no truth
        data["truth"] = xr.Variable(("time", *dims), out.truth, {**units, "long_name": "true state"})
    if cycling:
        coords["window_time"] = xr.Variable(("window",), out.state_steps * dt,
                                            {"units": u["time"], "long_name": "window start time"})  # fmt: skip
        bg_name, an_name = "background at each window start", "analysis at each window start"
    else:
        bg_name, an_name = "background forecast (from x_b)", "analysis trajectory (from x_a)"
    data["background"] = xr.Variable((state_dim, *dims), out.background, {**units, "long_name": bg_name})
    data["analysis"] = xr.Variable((state_dim, *dims), out.analysis, {**units, "long_name": an_name})
    if cycling and out.filter:  # the filter convention: each window's states at its latest observation time
        steps = np.asarray(out.filter["steps"])
        coords["filter_time"] = xr.Variable(
            ("filter_time",),
            steps * dt,
            {"units": u["time"], "long_name": "latest observation time of each window (filter analysis time)"},
        )
        coords["filter_step"] = xr.Variable(("filter_time",), steps, {"long_name": "model step", "units": "1"})
        for role in ("background", "analysis"):
            data[f"filter_{role}"] = xr.Variable(
                ("filter_time", *dims),
                out.filter[role],
                {**units, "long_name": f"{role} at each window's latest observation time (filter convention)"},
            )
        data["window_converged"] = xr.Variable(("window",), np.asarray(out.diagnostics["converged"], np.int8), {
            "long_name": "whether the window's solver converged", "flag_values": np.array([0, 1], np.int8),
            "flag_meanings": "not_converged converged"})  # fmt: skip
    if out.components:  # shallow water: η is the state; u on east faces, v on north faces (C-grid)
        if "truth" in data:  # a case with observations.file has no truth
            data["truth"].attrs["long_name"] = "true free-surface height eta"
        dy, dx = cast("CartesianGrid", exp.grid).spacing  # shallow water: a Cartesian grid
        coords["x_u"] = xr.Variable(("x_u",), coords["x"].values + dx / 2,
                                    {"units": u["length"], "long_name": "x of east faces (u points)"})  # fmt: skip
        coords["y_v"] = xr.Variable(("y_v",), coords["y"].values + dy / 2,
                                    {"units": u["length"], "long_name": "y of north faces (v points)"})  # fmt: skip
        where = {"u": ("y", "x_u"), "v": ("y_v", "x")}
        for c, roles in out.components.items():
            for role, values in roles.items():
                first = "time" if role == "truth" else state_dim
                data[f"{role}_{c}"] = xr.Variable((first, *where[c]), values,
                                                  {"units": u[c], "long_name": f"{role} velocity component {c}"})  # fmt: skip
    sets = exp.twin.observations
    locations = np.asarray(exp.obs_locations)  # (obs, ndim), or (obs_time, obs, ndim) for tracks
    sigma = None  # several sets: each observation's σ
    if len(sets) == 1:  # one set: (obs_time, obs)
        coords["obs_time"] = xr.Variable(("obs_time",), np.asarray(exp.obs_steps) * dt,
                                         {"units": u["time"], "long_name": "observation time"})  # fmt: skip
        obs_dims = ("obs_time", "obs")
        loc_dims = obs_dims[3 - locations.ndim :]
    else:  # several sets (files): one row per observation, each with its time, step, component and set
        rows = observation_rows(sets)
        obs_dims = loc_dims = ("obs",)
        coords["obs_time"] = xr.Variable(obs_dims, rows["step"] * dt, {"units": u["time"],
                                                                     "long_name": "observation time"})  # fmt: skip
        coords["obs_step"] = xr.Variable(obs_dims, rows["step"], {"units": "1", "long_name": "model step observed"})
        coords["obs_set"] = xr.Variable(obs_dims, rows["set"].astype(np.int32),
                                        {"units": "1", "long_name": "observation set (index into observation_files)",
                                         "observation_files": json.dumps(_observation_files(case))})  # fmt: skip
        coords["obs_component"] = xr.Variable(obs_dims, rows["component"].astype(str),
                                              {"long_name": "observed state component (empty: the state)"})  # fmt: skip
        sigma = np.concatenate([np.reshape(np.broadcast_to(np.asarray(o.error.sigma), np.shape(o.values)), -1)
                                for o in sets])  # fmt: skip
    for i, dim in enumerate(dims):
        attrs = {"units": u.get(dim, u["length"]), "long_name": f"observation {dim}"}
        coords[f"obs_{dim}"] = xr.Variable(loc_dims, locations[..., i], attrs)
    data["obs_value"] = xr.Variable(obs_dims, out.obs_values, {**units, "long_name": "observed value y"})
    if sigma is not None:
        data["obs_error"] = xr.Variable(obs_dims, np.where(np.isfinite(out.obs_values), sigma, np.nan),
                                        {**units, "long_name": "observation error standard deviation"})  # fmt: skip

    def along(what: str) -> str:
        return f" (each window's {what}, until the next window starts)" if cycling else ""

    innovation = {**units, "long_name": "innovation y - H(background forecast)" + along("background")}
    residual = {**units, "long_name": "residual y - H(analysis)" + along("analysis")}
    data["obs_innovation"] = xr.Variable(obs_dims, out.obs_innovation, innovation)
    data["obs_residual"] = xr.Variable(obs_dims, out.obs_residual, residual)
    diag_dim = "window" if cycling else "outer"
    for name, values in out.diagnostics.items():
        values = np.asarray(values)
        if values.dtype == bool:
            values = values.astype(np.int8)
        attrs = {"long_name": f"solver diagnostic {name} per {diag_dim}"}
        data[f"solver_{name}"] = xr.Variable((diag_dim,), values, attrs)
    attrs: dict[str, Any] = {
        "Conventions": "CF-1.10",
        "title": f"assim {'twin experiment' if out.truth is not None else 'assimilation'}: {case.name}",
        "source": f"assim {package_versions()['assim']} ({case.model.kind}, "
        f"{'cycled' if cycling else 'strong-constraint'} 4D-Var, "
        f"{'trained unrolled Gauss-Newton' if getattr(case.solver, 'kind', '') == 'unrolled' else 'Gauss-Newton'})",
        "case": to_toml(case),
        "case_file": case_text,
        "package_versions": json.dumps(package_versions()),
        "metrics": json.dumps(out.metrics),
    }
    if exp.provenance:
        attrs["provenance"] = json.dumps(json_safe(exp.provenance), default=str)
    for k, v in out.metrics.items():
        if v is not None:  # netCDF attributes cannot be null
            attrs[f"metric_{k}"] = int(v) if isinstance(v, bool) else v
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _observation_files(case) -> list[str]:
    f = case.observations.file
    return [] if f is None else [f] if isinstance(f, str) else list(f)


def write_dataset(ds: xr.Dataset, path: Path) -> None:
    """netCDF-4 file of a dataset."""
    ds.to_netcdf(path, engine="netcdf4", format="NETCDF4")


def summary_markdown(exp: Experiment, out: Outcome) -> str:
    """A short human-readable report of a run."""
    c, m = exp.case, out.metrics
    lines = [
        f"# {c.name}",
        "",
        c.description or "",
        "",
        f"- model: {c.model.kind}, grid {'×'.join(map(str, exp.grid.shape))}, "
        f"{c.time.n_steps} steps of dt = {c.time.dt:g}",
        (
            f"- observations: {c.observations.network.kind} network, every {c.observations.every} steps, "  # pyright: ignore[reportOptionalMemberAccess]  (a network where file is None)
            f"σ = {c.observations.noise:g}, {m['n_observations']} valid values"
        )
        if c.observations.file is None
        else (
            f"- observations: file{'s' if len(_observation_files(c)) > 1 else ''} "
            f"{', '.join(_observation_files(c))}, σ = "
            f"{'from the file' if c.observations.noise is None else format(c.observations.noise, 'g')}, "
            f"{m['n_observations']} valid values, {m['n_observations_masked']} masked (no truth: no RMSE)"
        ),
        f"- background: {c.background.kind} B; solver: {c.solver.kind}",
        f"- mode: {m['mode']}"
        + (
            f" ({c.cycling.n_windows} windows of {c.cycling.window} steps, shift {c.cycling.shift})"
            if c.cycling
            else ""
        ),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for k, v in m.items():
        lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in exp.timings.items()), ""]
    return "\n".join(lines)
