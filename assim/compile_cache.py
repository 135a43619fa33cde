"""JAX's persistent compilation cache, on by default for every assim command, and the compile-time counters.

`select` (the command line: --cache-dir, --no-cache; no JAX import) records the choice; `configure`, called by
`assim run`, `train`, `discover` and `sweep` (and each Dask worker) just before they build, points JAX at the
directory: `--cache-dir`, else $ASSIM_CACHE_DIR, else $XDG_CACHE_HOME/assim/jax (default ~/.cache/assim/jax).
A repeated run of a case, or the same case with other values (noise, seed, observation values), then loads
its compiled programs instead of compiling them. `timings` reads the tracing, lowering and compile time that
JAX's monitoring events reported, and `compilations` how many programs XLA compiled (cache hits excluded).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from assim.errors import ConfigError

ENV = "ASSIM_CACHE_DIR"
DISABLED = "ASSIM_NO_CACHE"  # "1": no persistent cache
_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
           "/jax/core/compile/backend_compile_duration": "compile_s"}  # fmt: skip
_totals: dict[str, float] = {}
_configured: list[str | None] = []  # the directory JAX was pointed at (None: disabled), once configured
_selected: list[Path | None] = []  # the command line's choice (--cache-dir DIR; None: --no-cache), if any


def default_directory() -> Path:
    """$ASSIM_CACHE_DIR, else $XDG_CACHE_HOME/assim/jax, else ~/.cache/assim/jax."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "assim" / "jax"


def select(directory: str | Path | None = None, disabled: bool = False) -> None:
    """Record one command's choice (no JAX import): --no-cache, --cache-dir DIR, or neither (the default)."""
    _selected[:] = [None] if disabled else [Path(directory).expanduser().resolve()] if directory is not None else []


def directory() -> Path | None:
    """The cache directory that `configure` uses: the command line's, else $ASSIM_NO_CACHE=1: None, else the default."""
    if _selected:
        return _selected[0]
    return None if os.environ.get(DISABLED) == "1" else default_directory()


def configure(path: str | Path | None | bool = True) -> Path | None:
    """Point JAX's persistent cache at `path` (True: `directory()`; None/False: disabled) before the first build.

    Every program is cached, however small or quick to compile (min compile time and entry size 0)."""
    import jax

    _listen()
    target = directory() if path is True else (Path(path).expanduser() if path else None)
    if target is not None:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if path is True and not _selected and not os.environ.get(ENV):  # the default: run without a cache
                target = None
            else:
                raise ConfigError(
                    f"compilation cache directory {str(target)!r}: {err.strerror or err}; "
                    "use --cache-dir DIR or --no-cache"
                ) from None
    value = None if target is None else str(target)
    if _configured and _configured[0] == value:
        return target
    jax.config.update("jax_compilation_cache_dir", value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_enable_compilation_cache", value is not None)
    try:  # a process that compiled before (the Python API, a test) reads the new setting from its next compile
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
    except (ImportError, AttributeError):  # a JAX without it: the setting applies from the first compile
        pass
    _configured[:] = [value]
    return target


def _listen() -> None:
    """Install the monitoring listeners once per process."""
    if _totals:
        return
    import jax

    names = (*_EVENTS.values(), "backend_compiles", "cache_hits", "cache_writes", "uncacheable")
    _totals.update({name: 0.0 for name in names})

    def on_duration(event: str, duration_secs: float, **kwargs: str | int) -> None:  # jax.monitoring's protocol
        if event in _EVENTS:
            _totals[_EVENTS[event]] += duration_secs
            if event == "/jax/core/compile/backend_compile_duration":
                _totals["backend_compiles"] += 1

    def on_event(event: str, **kwargs: str | int) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            _totals["cache_hits"] += 1
        elif event == "/jax/compilation_cache/cache_misses":  # recorded as an entry is written
            _totals["cache_writes"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    compiler = logging.getLogger("jax._src.compiler")  # the one place JAX says a program is not cacheable
    compiler.addFilter(_Uncacheable(compiler.getEffectiveLevel()))
    compiler.setLevel(logging.DEBUG)


class _Uncacheable(logging.Filter):
    """Count the programs JAX will not cache (host callbacks, e.g. `eqx.error_if`); pass on what was shown before."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if "because it uses host" in str(record.msg):
            _totals["uncacheable"] += 1
        return record.levelno >= self.level


def snapshot() -> dict[str, float]:
    """The counters so far in this process (installs the listeners if `configure` has not)."""
    _listen()
    return dict(_totals)


def timings(since: dict[str, float] | None = None) -> dict[str, float]:
    """Tracing, lowering and compile seconds since `since` (a `snapshot`); compile_s includes cache loads."""
    now, before = snapshot(), since or {}
    return {name: now[name] - before.get(name, 0.0) for name in _EVENTS.values()}


def counts(since: dict[str, float] | None = None) -> dict:
    """Programs compiled by XLA (not loaded), cache hits, entries written and uncacheable programs since `since`."""
    now, before = snapshot(), since or {}
    names = ("backend_compiles", "cache_hits", "cache_writes", "uncacheable")
    d = {name: int(now[name] - before.get(name, 0.0)) for name in names}
    return {"compilations": d["backend_compiles"] - d["cache_hits"], "cache_hits": d["cache_hits"],
            "cache_writes": d["cache_writes"], "uncacheable": d["uncacheable"],
            "cache_dir": _configured[0] if _configured else None}  # fmt: skip


__all__ = ["configure", "counts", "default_directory", "directory", "select", "snapshot", "timings"]
