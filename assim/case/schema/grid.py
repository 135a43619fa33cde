"""Case-file [grid], [time], [cycling] and [outputs] tables: where and when a case runs, where it writes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from assim.case.schema.base import Strict as _Strict


class GridConfig(_Strict):
    """Cartesian grid of n cells per axis over [0, length)^ndim (lorenz96: n variables, ndim = 1).

    `file`: a netCDF file whose x (and y) coordinates are the cell centres (assim.io.grid_file);
    n and length then come from the file (length default 1 otherwise).
    """

    n: int | None = Field(None, ge=4)
    ndim: Literal[1, 2] = 2
    length: float | None = Field(None, gt=0)
    boundary: Literal["periodic", "neumann"] = "periodic"
    file: str | None = Field(None, min_length=1)


class TimeConfig(_Strict):
    """Length of the experiment (model steps) and the model time step."""

    n_steps: int = Field(ge=1)
    dt: float = Field(gt=0)


class CyclingConfig(_Strict):
    """Cycled 4D-Var: windows of `window` steps starting every `shift` steps.

    `observation_use`: how overlapping windows share observations: "all" (every window uses every observation it
    holds), "once" (only the first window holding an observation uses it) or "mda" (every window, its error variance
    multiplied by the number of windows holding it)."""

    window: int = Field(ge=1)
    shift: int = Field(ge=1)
    n_windows: int = Field(ge=1)
    observation_use: Literal["all", "once", "mda"] = "all"

    def build(self):
        """The observation-use scheme (`assim.solvers.observation_use`)."""
        from assim.solvers.observation_use import AllObservations, MultipleDataAssimilation, UseOnce

        return {"all": AllObservations, "once": UseOnce, "mda": MultipleDataAssimilation}[self.observation_use]()

    def check(self, path: str, case, fail) -> None:
        """Windows inside the data, without gaps, starting at observation times."""
        t, every = case.time, case.observations.every
        if self.window > t.n_steps:
            fail(f"{path}.window", f"must be ≤ time.n_steps = {t.n_steps} (got {self.window}); shorten the window")
        if self.shift > self.window:
            fail(f"{path}.shift", f"must be ≤ cycling.window = {self.window} (got {self.shift}); "
                 "windows may not leave gaps")  # fmt: skip
        span = (self.n_windows - 1) * self.shift + self.window
        if span > t.n_steps:
            fail(f"{path}.n_windows", f"{self.n_windows} windows span {span} steps, longer than the data "
                 f"(time.n_steps = {t.n_steps}); use fewer windows or raise time.n_steps")  # fmt: skip
        if self.shift % every:
            fail(f"{path}.shift", f"must be a multiple of observations.every = {every} (got {self.shift})")


class OutputsConfig(_Strict):
    """Where results go and whether figures are drawn."""

    directory: str = "out"
    figures: bool = True
