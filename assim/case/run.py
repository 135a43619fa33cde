"""`assim run`: validate a case, build the twin, solve, and write analysis.nc, metrics.json, figures and summary.md."""

from __future__ import annotations

import json
import time
from pathlib import Path

from assim.case import build as case_module
from assim.case.config import load_case_for_outputs
from assim.io.netcdf import (
    AtomicOutputs,
    json_text,
    package_versions,
    summary_markdown,
    to_dataset,
    write_dataset,
)


def run_case(
    path: str | Path, overrides: list[str] = (), out_dir: str | Path | None = None, quiet: bool = False
) -> int:
    """Run a case file; every output appears (renamed from a temporary name) only if the whole run succeeds."""
    case, text, overrides = load_case_for_outputs(path, overrides, out_dir)
    start = time.perf_counter()
    exp = case_module.build(case)
    outcome = case_module.run(exp)
    directory = Path(case.outputs.directory)
    with AtomicOutputs(directory) as outputs:
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
        metrics = {**outcome.metrics, "timings_s": exp.timings, "case": case.name, "figures": figures,
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
    return 0
