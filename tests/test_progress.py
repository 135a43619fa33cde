"""Progress (rich): drawn with the figures on a terminal, nothing on a stream that is not one or with --quiet."""

import io
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from rich.console import Console

from assim import progress
from assim.progress import Bar, outer_iterations, reading, status

ROOT = Path(__file__).parents[1]
CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120), out


def last_line(out: io.StringIO) -> str:
    return CODES.sub("", out.getvalue()).rstrip("\n").split("\r")[-1].split("\n")[-1]


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


class ATerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_forced_terminal_shows_the_training_step_and_figures():
    shown, out = terminal()
    with Bar("train", 5, shown) as bar:
        bar.update(2, loss=0.5, validation=None, skipped=0)
        bar.update(5, loss=0.125, validation=0.25, skipped=1)
    line = last_line(out)
    assert line.startswith("train") and " 5/5 " in line
    assert line.endswith("loss 0.125  validation 0.25  skipped 1")
    assert "2/5" in CODES.sub("", out.getvalue())  # the earlier step was drawn too


def test_notes_go_above_the_bar_on_a_terminal():
    shown, out = terminal()
    with Bar("variants", 2, shown) as bar:
        bar.note("[1/2] a=1: FAILED: boom")
        bar.update(1, last="a=1")
    text = CODES.sub("", out.getvalue())
    assert "[1/2] a=1: FAILED: boom\n" in text and last_line(out).endswith("1/2 0:00:00 a=1")


def test_nothing_is_drawn_on_a_stream_that_is_not_a_terminal(monkeypatch):
    stream = NotATerminal()
    assert progress.console(None, stream) is None and progress.console(False, ATerminal()) is None
    assert progress.console(None, ATerminal()) is not None and progress.console(True, stream) is not None
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress.bar("train", 3)  # progress=None: stderr decides
    assert not bar.drawn
    bar.update(3, loss=1.0)
    bar.close()
    with status("solving", progress.console(None)):
        pass
    outer_iterations("case", {"cost": np.ones(2), "gradient_norm": np.ones(2)}, progress.console(None))
    assert stream.getvalue() == ""
    progress.bar("variants", 1).note("a=1: done")  # a sweep's news still reaches a log file ...
    assert stream.getvalue() == "a=1: done\n"
    progress.bar("variants", 1, progress=False).note("a=1: done")  # ... but not past --quiet
    assert stream.getvalue() == "a=1: done\n"


def test_outer_iterations_lists_cost_and_gradient_norm_per_iteration():
    shown, out = terminal()
    diagnostics = {"cost": np.array([12.5, 3.25, 3.0]), "gradient_norm": np.array([4.0, 0.5, 1e-3]),
                   "cg_iterations": np.array([0, 7, 9]), "accepted": np.array([True, True, False])}  # fmt: skip
    outer_iterations("quickstart", diagnostics, shown)
    rows = [r for r in CODES.sub("", out.getvalue()).splitlines() if r.startswith("│")]
    cells = [[c.strip() for c in r.strip("│").split("│")] for r in rows]
    assert cells == [["0", "12.5", "4", "0", "yes"], ["1", "3.25", "0.5", "7", "yes"], ["2", "3", "0.001", "9", "no"]]


def _data_file(tmp_path) -> Path:
    import xarray as xr

    path = tmp_path / "sst.nc"
    field = xr.DataArray(np.zeros((2, 6, 8)), dims=("time", "lat", "lon"), attrs={"units": "K"},
                         coords={"lat": np.linspace(-10, 10, 6), "lon": np.linspace(0, 21, 8)})  # fmt: skip
    xr.Dataset({"sst": field}).to_netcdf(path)
    return path


def test_the_spinner_names_each_file_while_it_is_read(tmp_path):
    from assim.io.sources import FieldSource, open_source

    path = _data_file(tmp_path)
    shown, out = terminal()
    with status("case: building", shown):
        with reading(tmp_path / "absent.nc"):  # no size to give: the name alone
            pass
        open_source(FieldSource(path=str(path), variable="sst"))
    frames = [f.split(" ", 1)[-1] for f in CODES.sub("", out.getvalue()).replace("\n", "\r").split("\r") if f]
    size = path.stat().st_size / 1000
    assert "case: building: reading absent.nc" in frames  # no size to give: the name alone
    shown_at = frames.index(f"case: building: reading sst.nc ({size:.1f} kB)")
    assert frames[shown_at + 1] == "case: building" and frames[-1] == "case: building"  # the plain text after each


def test_reading_without_a_spinner_draws_nothing(tmp_path, capsys):
    from assim.io.sources import FieldSource, open_source

    open_source(FieldSource(path=str(_data_file(tmp_path)), variable="sst"))
    with status("quiet", None), reading(tmp_path):  # --quiet: no console, so no spinner to update
        pass
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def _drain(fd: int, into: bytearray) -> None:
    """Read a pty until its other end closes."""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            return
        if not chunk:
            return
        into.extend(chunk)


def test_assim_train_quiet_writes_nothing_to_stderr(tmp_path):
    tiny = ["grid.n=8", "time.n_steps=2", "observations.every=1", "observations.network.fraction=0.5",
            "training.layers=1", "training.cg_steps=1", "training.train_windows=2", "training.validation_windows=1",
            "training.test_windows=1", "training.batch_size=2", "training.steps=1", "training.validate_every=1"]  # fmt: skip
    sets = [a for o in tiny for a in ("--set", o)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "120"}
    master, child = pty.openpty()  # stderr a terminal: without -q the bar would be drawn there
    err = bytearray()
    reader = threading.Thread(target=_drain, args=(master, err))
    reader.start()
    try:
        done = subprocess.run([sys.executable, "-m", "assim.cli", "train", str(ROOT / "cases" / "training.toml"),
                               "--out", str(tmp_path / "out"), "-q", *sets], stdout=subprocess.PIPE, stderr=child,
                              text=True, env=env, timeout=600)  # fmt: skip
    finally:
        os.close(child)
        reader.join(timeout=10)
        os.close(master)
    assert done.returncode == 0, err.decode(errors="replace")
    assert err == b"" and done.stdout == ""
    assert (tmp_path / "out" / "training.json").exists()
