"""Shared helpers for benchmark scripts: machine description, timing, results JSON (DESIGN.md convention)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import jax

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ["jax", "jaxlib", "equinox", "lineax", "optimistix", "diffrax", "optax", "numpy", "scipy"]


def machine() -> dict:
    """CPU model, cores, JAX device, load average and package versions of this run."""
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),  # 1, 5 and 15 minutes, when the results are written
        "packages": versions,
    }


def commit() -> str:
    """Git commit of the measured code ('+dirty' when the tree has uncommitted changes)."""
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
        dirty = subprocess.check_output(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"], text=True
        ).strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def best_time(fn, repeats: int = 5, min_total: float = 0.2) -> float:
    """Best wall time of fn() over repeats (fn must block until its result is ready)."""
    best = float("inf")
    start = time.perf_counter()
    count = 0
    while count < repeats or (time.perf_counter() - start < min_total and count < 50):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        count += 1
    return best


def target(name: str, value: float, op: str, threshold: float) -> dict:
    """One entry of the results file's targets list."""
    import operator

    ops = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
    return {
        "name": name,
        "value": float(value),
        "op": op,
        "target": float(threshold),
        "met": bool(ops[op](value, threshold)),
    }


def write_results(name: str, cases: dict, targets: list[dict], extra: dict | None = None) -> Path:
    """Write benchmarks/results/NAME.json with machine, commit, cases and targets."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine(), "commit": commit(), "cases": cases, "targets": targets}
    if extra:
        payload.update(extra)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def print_targets(targets: list[dict], path: Path) -> None:
    """One MET/MISS line per target, then where the JSON went."""
    for t in targets:
        print(("MET  " if t["met"] else "MISS ") + f"{t['name']}: {t['value']:.3g} {t['op']} {t['target']}")
    print("wrote", path)
