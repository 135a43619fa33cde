"""Progress on stderr for the long commands, drawn by rich; the one module that uses rich.

`bar(description, total, progress)` gives a `Bar` for a counted Python loop (training steps, sweep variants): drawn in
place on a terminal, with the latest figures (loss, validation, skipped …). `outer_iterations(...)` shows a finished
Gauss-Newton solve (one compiled program) as a table of its outer iterations: cost, gradient norm, CG iterations.
`status(text, console)` is a spinner while such a program compiles and runs; `reading(path)`, around a file read
anywhere below it, makes that spinner name the file and its size while it loads. Everything is quiet when refused
(`--quiet`: progress=False) and, unless asked for (progress=True), when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TextIO

import numpy as np
from rich.console import Console
from rich.filesize import decimal
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.spinner import Spinner
from rich.table import Table

Figure = float | int | str | None  # a figure shown after the bar: a number with its name, or a text


def wanted(progress: bool | None, stream: TextIO | None = None) -> bool:
    """Show progress when asked (True), never when refused (False), else only when the stream (stderr) is a terminal."""
    if progress is None:
        stream = sys.stderr if stream is None else stream
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(progress)


def console(progress: bool | None = None, file: TextIO | None = None) -> Console | None:
    """A console drawing on `file` (stderr) when progress is wanted, else None: nothing is drawn."""
    stream = sys.stderr if file is None else file
    return Console(file=stream, force_terminal=True, highlight=False) if wanted(progress, stream) else None


def _figures(figures: Mapping[str, Figure]) -> str:
    """`loss 0.1234  validation 0.1  skipped 0`: numbers with their names, texts alone, None left out."""
    parts = []
    for name, v in figures.items():
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, bool | int | np.integer):
            parts.append(f"{name.replace('_', ' ')} {int(v)}")
        elif v is not None:
            parts.append(f"{name.replace('_', ' ')} {float(v):.4g}")
    return "  ".join(parts)


class Bar:
    """A counted loop's progress line (description, bar, done/total, elapsed, figures); notes go above it."""

    def __init__(self, description: str, total: int, console: Console | None, notes: TextIO | None = None):
        self.total = total
        self._notes = notes  # where notes go when no bar is drawn (None: nowhere)
        self._progress: Progress | None = None
        if console is not None:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[figures]}"), console=console, redirect_stdout=False, redirect_stderr=False,
            )  # fmt: skip
            self._task = self._progress.add_task(description, total=total, figures="")
            self._progress.start()

    @property
    def drawn(self) -> bool:
        """Whether the bar is drawn (a terminal, progress not refused)."""
        return self._progress is not None

    def update(self, completed: int, **figures: Figure) -> None:
        """Show `completed` of the total done, with the latest figures."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, figures=_figures(figures))
            self._progress.refresh()

    def note(self, text: str) -> None:
        """One line of news (a finished variant, a failure): above the bar, else plain on the notes stream."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        elif self._notes is not None:
            print(text, file=self._notes, flush=True)

    def close(self) -> None:
        """Stop drawing; the last state of the bar stays visible above what follows."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(description: str, total: int, progress: bool | None = None) -> Bar:
    """A `Bar` on stderr: drawn when progress is wanted; notes plain on stderr unless refused (`--quiet`)."""
    return Bar(description, total, console(progress), None if progress is False else sys.stderr)


def outer_iterations(name: str, diagnostics: Mapping[str, np.ndarray], console: Console | None) -> None:
    """After a Gauss-Newton solve: one row per outer iteration (cost, gradient norm, CG iterations, accepted)."""
    if console is None or "cost" not in diagnostics or "gradient_norm" not in diagnostics:
        return
    table = Table(title=f"{name}: Gauss-Newton outer iterations", title_justify="left")
    for column in ("outer", "cost", "gradient norm", "CG iterations", "accepted"):
        table.add_column(column, justify="right")
    cost, gradient = np.asarray(diagnostics["cost"]), np.asarray(diagnostics["gradient_norm"])
    cg = np.asarray(diagnostics.get("cg_iterations", np.zeros(len(cost), int)))
    accepted = np.asarray(diagnostics.get("accepted", np.ones(len(cost), bool)))
    for k in range(len(cost)):
        table.add_row(str(k), f"{cost[k]:.6g}", f"{gradient[k]:.3g}", str(int(cg[k])), "yes" if accepted[k] else "no")
    console.print(table)


_SPINNER: ContextVar[tuple[Live, Spinner, str] | None] = ContextVar("assim_spinner", default=None)  # the running one


@contextlib.contextmanager
def status(text: str, console: Console | None) -> Iterator[None]:
    """A spinner with `text` while one compiled program (a solve) runs; nothing when console is None."""
    if console is None:
        yield
        return
    spinner = Spinner("dots", text=text)
    with Live(spinner, console=console, refresh_per_second=12.5, transient=True) as live:
        token = _SPINNER.set((live, spinner, text))
        try:
            yield
        finally:
            _SPINNER.reset(token)


def _size(path: str | os.PathLike) -> str:
    """`12.3 MB`: a file's size (rich's decimal units); "" for a directory (a Zarr store) or an unreadable path."""
    try:
        return "" if os.path.isdir(path) else decimal(os.path.getsize(path))
    except OSError:
        return ""


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """While a file loads: the running command's spinner names it and its size; nothing without a spinner."""
    active = _SPINNER.get()
    if active is None:
        yield
        return
    live, spinner, text = active
    size = _size(path)
    spinner.update(text=f"{text}: reading {os.path.basename(os.path.normpath(path))}" + (f" ({size})" if size else ""))
    live.refresh()
    try:
        yield
    finally:
        spinner.update(text=text)
        live.refresh()
