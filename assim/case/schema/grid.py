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
    """Cycled 4D-Var: windows of `window` steps starting every `shift` steps."""

    window: int = Field(ge=1)
    shift: int = Field(ge=1)
    n_windows: int = Field(ge=1)



class OutputsConfig(_Strict):
    """Where results go and whether figures are drawn."""

    directory: str = "out"
    figures: bool = True
