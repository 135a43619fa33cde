"""`assim sweep`: the cartesian product of case variants, run through Dask, gathered into one xarray Dataset.

`parse_vary("observations.noise=0.01,0.05")` gives a `Vary` (key and values, each parsed as a
TOML value like `--set`); `variants(varies)` is their cartesian product as lists of overrides.
A `SweepCommand` strategy says what one variant does (`RunSweep`: build the twin and solve it,
as `assim run`, without writing files) and returns scalar metrics. `sweep(...)` validates every
variant before any work starts, runs them on a `dask.distributed` cluster (a `LocalCluster` of
processes by default, or the scheduler at an address), and `to_dataset` stacks the metrics with
the varied keys as dimensions. A failed variant records NaN metrics and its error string; the
sweep fails (`AssimError`, nothing written) only if every variant failed.
"""

from __future__ import annotations

import abc
import itertools
import json
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import equinox as eqx
import numpy as np
import xarray as xr

from assim import compile_cache
from assim.case.config import (
    Case,
    apply_overrides,
    parse_case_text,
    read_case_text,
    validate,
)
from assim.case.memory import preflight
from assim.case.variants import Vary, _label, parse_vary, variants
from assim.errors import AssimError, ConfigError
from assim.progress import Bar
from assim.progress import bar as progress_bar


# ---------------------------------------------------------------- what one variant does
class SweepCommand(eqx.Module):
    """What a sweep does with each variant: check it up front, then run it and return scalar metrics."""

    name: ClassVar[str]  # the command's name on the command line

    @abc.abstractmethod
    def check(self, case: Case) -> None:
        """Raise ConfigError if the variant cannot run (cheap: no solve)."""

    @abc.abstractmethod
    def metrics(self, case: Case) -> dict[str, Any]:
        """Run the variant; scalar metrics (numbers, booleans, short strings) by name."""


class RunSweep(SweepCommand):
    """`assim run` on each variant: twin experiment and 4D-Var; RMSEs, innovation statistics, convergence, timings."""

    name: ClassVar[str] = "run"

    def check(self, case: Case) -> None:
        from assim.case.build import check

        check(case)

    def metrics(self, case: Case) -> dict[str, Any]:
        from assim.case import build as case_module

        since, start = compile_cache.snapshot(), time.perf_counter()
        exp = case_module.build(case)
        outcome = case_module.run(exp)
        timings = {**exp.timings, "total_s": time.perf_counter() - start, **compile_cache.timings(since)}
        return {
            **outcome.metrics,
            **{f"time_{k}": v for k, v in timings.items()},
            "compilations": compile_cache.counts(since)["compilations"],
        }


COMMANDS: dict[str, SweepCommand] = {"run": RunSweep()}


def load_variant(case_text: str, overrides: Sequence[str], source: str = "case") -> Case:
    """Validated case of one variant: the case text with the base and variant overrides applied."""
    return validate(apply_overrides(parse_case_text(case_text, source), list(overrides)))


def run_variant(
    command: SweepCommand, case_text: str, overrides: list[str], cache: str | None = None
) -> dict[str, Any]:
    """One variant on a worker (compiled programs in `cache`): its metrics, or {"error": message} (never raises)."""
    try:
        compile_cache.configure(cache)
        return command.metrics(load_variant(case_text, overrides))
    except AssimError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001  (recorded, reported; the other variants go on)
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return {"error": f"{type(exc).__name__}: {exc} (at {Path(last.filename).name}:{last.lineno})"}


# ---------------------------------------------------------------- gathering
def _scalar(value: Any) -> float | str | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    return None  # lists, tables: not a sweep metric


def to_dataset(varies: Sequence[Vary], results: Sequence[dict[str, Any]]) -> xr.Dataset:
    """Metrics of every variant on the grid of varied keys (NaN / "" where a variant failed or lacks a metric)."""
    shape = tuple(len(v.values) for v in varies)
    dims = tuple(v.key for v in varies)
    names: dict[str, type] = {}
    for result in results:
        for k, v in result.items():
            s = _scalar(v)
            if s is not None and k != "error":
                names.setdefault(k, type(s))
    data = {}
    for k, kind in names.items():
        if kind is float:
            values = np.full(len(results), np.nan)
            for i, r in enumerate(results):
                s = _scalar(r.get(k))
                values[i] = s if isinstance(s, float) else np.nan
        else:
            values = np.asarray([str(r.get(k, "")) for r in results], dtype=object)
        data[k] = (dims, values.reshape(shape), {"long_name": f"{k} of each variant"})
    errors = np.asarray([r.get("error", "") for r in results], dtype=object).reshape(shape)
    data["error"] = (dims, errors, {"long_name": "error of a failed variant (empty when it ran)"})
    coords = {v.key: (v.key, v.coordinate(), {"long_name": f"varied case entry {v.key}"}) for v in varies}
    return xr.Dataset(data, coords=coords)


# ---------------------------------------------------------------- running
@dataclass(frozen=True)
class Cluster:
    """Where variants run: a scheduler address, or a LocalCluster of `workers` processes (or threads)."""

    address: str | None = None
    workers: int = 2
    processes: bool = True


def _client(cluster: Cluster):
    from dask.distributed import Client, LocalCluster

    if cluster.address is not None:
        try:
            return Client(cluster.address, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise AssimError(f"cannot reach the Dask scheduler at {cluster.address!r} ({exc}); "
                             "check --scheduler or leave it out for a local cluster") from None  # fmt: skip
    options: dict[str, Any] = {"dashboard_address": None}  # Dask: None = no dashboard (its stubs want a string)
    local = LocalCluster(n_workers=cluster.workers, threads_per_worker=1, processes=cluster.processes, **options)
    return Client(local), local


def _print_progress(bar: Bar, done: int, total: int, label: str, result: dict, elapsed: float) -> None:
    """One line on stderr per finished variant (above the bar on a terminal); the bar moves on."""
    if "error" in result:
        status = f"FAILED: {result['error']}"
    else:
        status = ", ".join(f"{k} {result[k]:.4g}" for k in ("background_rmse", "analysis_rmse")
                           if isinstance(result.get(k), float))  # fmt: skip
    bar.note(f"[{done}/{total}] {elapsed:6.1f}s  {label}: {status}")
    bar.update(done, last=label)


def execute(command: SweepCommand, case_text: str, jobs: list[list[str]], cluster: Cluster,
            progress: Callable[[int, int, int, dict, float], None] | None = None) -> list[dict]:  # fmt: skip
    """Run every job (a list of overrides) on the cluster; results in job order; progress(done, n, job, result, s)."""
    from dask.distributed import as_completed

    cache = str(path) if (path := compile_cache.directory()) else None  # every worker shares the compiled programs
    client, local = _client(cluster)
    start = time.perf_counter()
    nanny_log = logging.getLogger("distributed.nanny")
    level = nanny_log.level
    try:
        futures = [client.submit(run_variant, command, case_text, job, cache, pure=False) for job in jobs]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[dict] = [{} for _ in jobs]  # every slot filled: as_completed yields each future once
        for done, future in enumerate(as_completed(futures), 1):
            i = index[future.key]
            try:
                results[i] = future.result()
            except Exception as exc:  # noqa: BLE001  (a worker died: the variant failed, the sweep goes on)
                results[i] = {"error": f"{type(exc).__name__}: {exc}"}
            if progress is not None:
                progress(done, len(jobs), i, results[i], time.perf_counter() - start)
        return results
    finally:
        client.close()
        if local is not None:
            nanny_log.setLevel(logging.ERROR)  # workers busy in JAX threads are killed on close: expected, not news
            local.close()
            nanny_log.setLevel(level)


def prepare(command: SweepCommand, case_path: str | Path, overrides: Sequence[str],
            varies: Sequence[Vary]) -> tuple[str, list[list[str]], Case]:  # fmt: skip
    """Case text, every variant's overrides (base ones first) and the first variant's case; every variant checked."""
    text = read_case_text(case_path)
    jobs = [[*overrides, *job] for job in variants(varies)]
    for job in jobs:
        try:
            command.check(preflight(load_variant(text, job, str(case_path))))  # memory first: refused before any build
        except AssimError as exc:
            raise ConfigError(f"variant {_label(job[len(overrides) :])}: {exc}") from None
    return text, jobs, load_variant(text, jobs[0], str(case_path))


def sweep(
    case_path: str | Path,
    vary: Sequence[str],
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
    cluster: Cluster = Cluster(),
    command: SweepCommand = RunSweep(),
    quiet: bool = False,
) -> xr.Dataset:
    """Run a sweep and write sweep.nc, sweep.json and sweep.png atomically; the gathered Dataset."""
    from assim.io.netcdf import AtomicOutputs, package_versions, write_dataset
    from assim.io.outputs import check_directory

    if not vary:
        raise ConfigError(
            "sweep: nothing to vary; add --vary KEY.SUB=V1,V2,..., e.g. --vary observations.noise=0.01,0.05"
        )
    varies = [parse_vary(v) for v in vary]
    overrides = list(overrides)
    text, jobs, base = prepare(command, case_path, overrides, varies)
    directory = Path(out_dir) if out_dir is not None else Path(base.outputs.directory)
    check_directory(directory)  # a file, an unwritable or a busy --out: refused before the variants run
    if not quiet:
        kind = "processes" if cluster.processes else "threads"
        where = cluster.address or f"local cluster of {cluster.workers} {kind}"
        print(f"{case_path}: {len(jobs)} variants of `{command.name}` on {where}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    labels = [_label(job[len(overrides) :]) for job in jobs]
    variants_bar = progress_bar("variants", len(jobs), False if quiet else None)

    def progress(done: int, total: int, i: int, result: dict, elapsed: float) -> None:
        _print_progress(variants_bar, done, total, labels[i], result, elapsed)

    with variants_bar:
        results = execute(command, text, jobs, cluster, None if quiet else progress)
    failed = [(job, r["error"]) for job, r in zip(jobs, results) if "error" in r]
    if len(failed) == len(jobs):
        raise AssimError(f"sweep: all {len(jobs)} variants failed; first: {_label(failed[0][0][len(overrides):])}: "
                         f"{failed[0][1]}")  # fmt: skip
    ds = to_dataset(varies, results)
    ds.attrs.update({
        "title": f"assim sweep: {base.name} ({command.name})",
        "command": command.name,
        "case_file": text,
        "case_overrides": json.dumps(overrides),
        "vary": json.dumps({v.key: list(v.texts) for v in varies}),
        "n_variants": len(jobs),
        "n_failed": len(failed),
        "wall_time_s": time.perf_counter() - start,
        "package_versions": json.dumps(package_versions()),
    })  # fmt: skip
    with AtomicOutputs(directory) as outputs:
        write_dataset(ds, outputs.path("sweep.nc"))
        summary = {
            "command": command.name,
            "case": base.name,
            "overrides": overrides,
            "vary": {v.key: list(v.values) for v in varies},
            "variants": [
                {"overrides": job[len(overrides) :], **{k: _json_safe(v) for k, v in r.items()}}
                for job, r in zip(jobs, results)
            ],  # fmt: skip
            "n_failed": len(failed),
            "wall_time_s": ds.attrs["wall_time_s"],
        }
        outputs.write_text("sweep.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
        if "analysis_rmse" in ds:
            sweep_figure(ds, outputs.path("sweep.png"))
    if not quiet:
        print(f"wrote {directory}/: sweep.nc, sweep.json" + (", sweep.png" if "analysis_rmse" in ds else ""))
        for job, err in failed:
            print(f"failed: {_label(job[len(overrides) :])}: {err}", file=sys.stderr)
    return ds


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _json_safe(v.item())
    return v


def sweep_figure(ds: xr.Dataset, path: Path) -> None:
    """Analysis (solid) and background (dashed) RMSE against the first varied key, one line per other combination."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    an = ds["analysis_rmse"]
    first, others = an.dims[0], an.dims[1:]
    x = ds[first].values
    numeric = np.issubdtype(x.dtype, np.number)
    pos = x if numeric else np.arange(len(x))
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    combos = list(itertools.product(*(range(ds.sizes[d]) for d in others)))
    for j, combo in enumerate(combos):
        sel = dict(zip(others, combo))
        label = "analysis" + "".join(f", {d}={ds[d].values[i]}" for d, i in sel.items())
        line = ax.plot(pos, an.isel(sel).values, "o-", label=label)[0]
        if "background_rmse" in ds:
            ax.plot(pos, ds["background_rmse"].isel(sel).values, "--", color=line.get_color(), alpha=0.6,
                    label="background (dashed)" if j == 0 else None)  # fmt: skip
    if numeric and np.all(x > 0) and x.max() / x.min() >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(pos, [str(v) for v in x], rotation=20)
    ax.set_xlabel(str(first))
    ax.set_ylabel("RMSE against the truth")
    ax.set_title(ds.attrs.get("title", "sweep"))
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
