"""`assim run`: validate a case, build the twin, solve, and write analysis.nc, metrics.json, figures and summary.md."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from assim.case.config import load_case_for_outputs
from assim.case.memory import preflight
from assim.io.outputs import AtomicOutputs

NOT_CONVERGED = 3  # exit status of a run whose outputs are written but whose solver did not converge


def run_case(
    path: str | Path, overrides: Sequence[str] = (), out_dir: str | Path | None = None, quiet: bool = False
) -> int:
    """Run a case file; every output appears (renamed from a temporary name) only if the whole run succeeds."""
    case, text, overrides = load_case_for_outputs(path, overrides, out_dir)
    preflight(case)  # a case too big for the machine (or --max-memory): one line, before anything is allocated
    directory = Path(case.outputs.directory)
    with AtomicOutputs(directory) as outputs:  # refuses a file, an unwritable or a busy --out before JAX loads
        from assim import compile_cache
        from assim.case import build as case_module
        from assim.io.netcdf import (
            json_text,
            package_versions,
            summary_markdown,
            to_dataset,
            write_dataset,
        )
        from assim.progress import console, outer_iterations, status

        shown = console(False if quiet else None)  # a terminal and not --quiet: a spinner, then the iterations
        compile_cache.configure()  # before the first compilation: a repeated run loads its programs
        since = compile_cache.snapshot()
        start = time.perf_counter()
        with status(f"{case.name}: building", shown):
            exp = case_module.build(case)
        with status(f"{case.name}: solving", shown):
            outcome = case_module.run(exp)
        if case.cycling is None:
            outer_iterations(case.name, outcome.diagnostics, shown)
        write_start = time.perf_counter()
        ds = to_dataset(exp, outcome, text)
        ds.attrs["case_overrides"] = json.dumps(overrides)
        if case.weak_constraint is not None:
            ds.attrs["source"] = ds.attrs["source"].replace("strong-constraint", "weak-constraint")
        write_dataset(ds, outputs.path("analysis.nc"))
        for name, extra in exp.files.items():  # e.g. the observations a real-fields case assimilated (CF table)
            write_dataset(extra, outputs.path(name))
        figures = []
        if case.outputs.figures:
            from assim.io.figures import write_figures

            figures = write_figures(exp, outcome, outputs.path)
        exp.timings["write_s"] = time.perf_counter() - write_start
        exp.timings["total_s"] = time.perf_counter() - start
        exp.timings.update(compile_cache.timings(since))  # of which tracing, lowering, compiling (or cache loads)
        metrics = {**outcome.metrics, "timings_s": exp.timings, "compilations": compile_cache.counts(since),
                   "case": case.name, "figures": figures,
                   "package_versions": package_versions()}  # fmt: skip
        outputs.write_text("metrics.json", json_text(metrics))
        outputs.write_text("summary.md", summary_markdown(exp, outcome))
    if not quiet:
        m = outcome.metrics
        if "analysis_rmse" not in m:  # observations from a file: no truth, departures only
            print(f"{case.name}: {m['mode']}, {m['n_observations']} observations ({m['n_observations_masked']} "
                  f"masked), innovation RMS {m['innovation_rms']:.4g}, analysis residual RMS "
                  f"{m['analysis_residual_rms']:.4g}, 2J/p {m['analysis_chi2']:.3g}; {m['reason']}")  # fmt: skip
        else:
            print(f"{case.name}: {m['mode']}, background RMSE {m['background_rmse']:.4g}, analysis RMSE "
                  f"{m['analysis_rmse']:.4g} (σ_obs = {m['observation_noise']:g}); {m['reason']}")  # fmt: skip
        if "strong_analysis_trajectory_rmse" in m:
            print(f"weak constraint: analysis trajectory RMSE {m['analysis_trajectory_rmse']:.4g} against "
                  f"{m['strong_analysis_trajectory_rmse']:.4g} for strong constraint")  # fmt: skip
        names = ["analysis.nc", *exp.files, "metrics.json", "summary.md", *figures]
        print(f"wrote {directory}/: {', '.join(names)}")
    fixed_budget = getattr(case.solver, "kind", "") == "unrolled"  # trained layers: no convergence test to fail
    return 0 if outcome.metrics["converged"] or fixed_budget else not_converged(case.name, outcome.metrics, directory)


def not_converged(name: str, metrics: dict, directory: Path) -> int:
    """Say on stderr, in one line, that a run's outputs are written but its solver did not converge; status 3."""
    if "converged_fraction" in metrics:  # cycling: some windows did not converge
        what = f"{1 - metrics['converged_fraction']:.0%} of the {metrics['n_windows']} windows"
    else:
        what = metrics["reason"].removeprefix("not converged: ")
    print(f"assim: warning: {name}: not converged ({what}); outputs written to {directory}/ with "
          f'"converged": false; exit status {NOT_CONVERGED}', file=sys.stderr)  # fmt: skip
    return NOT_CONVERGED
