"""Cross-field checks of a validated case that per-field constraints cannot express; errors name the key and fix.

Each table checks itself against the whole case (`Strict.check(path, case, fail)`: a model its grid, a
network its points, B its boundary, …); what is checked here is only the case's form — which tables a twin,
a case with observations.file and a [data] case need or refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from assim.case.schema.base import Strict
from assim.case.schema.grid import GridConfig
from assim.errors import ConfigError

if TYPE_CHECKING:
    from assim.case.config import Case


def checked(case: Case) -> Case:
    """The case's form, then every table's own checks against the case; the first failure raises ConfigError."""

    def fail(path: str, text: str) -> NoReturn:
        raise ConfigError(f"{path}: {text}")

    _check_grid(case, fail)
    if case.data is not None:
        _check_data(case, fail)
    elif case.observations.file is not None:
        _check_files(case, fail)
    else:
        _check_twin(case, fail)
    for name in type(case).model_fields:
        section = getattr(case, name)
        if isinstance(section, Strict):
            section.check(name, case, fail)
    return case


def grid_length(g: GridConfig) -> float:
    """Domain length of a [grid] table without a file (default 1)."""
    return g.length if g.length is not None else 1.0


def _check_grid(case: Case, fail: Callable[[str, str], NoReturn]) -> None:
    """[grid] is given with n (or a file) unless the grid comes from [data]."""
    g = case.grid
    if case.data is not None:
        if g is not None:
            fail("grid", "the grid comes from the [data] field's coordinates; remove [grid] "
                 "(thin it with data.field.coarsen, cut it with data.field.subset)")  # fmt: skip
        return
    if g is None:
        fail("grid", "required table is missing; add [grid] with n (and ndim, length, boundary), "
             "or take the grid from a dataset with [data]")  # fmt: skip
    if g.file is None and g.n is None:
        fail("grid.n", "required key is missing; add it to the case file (or take the grid from grid.file)")
    if g.file is not None:
        for key in ("n", "length"):
            if getattr(g, key) is not None:
                fail(f"grid.{key}", f"comes from the coordinates of grid.file; remove grid.{key} or grid.file")


def _check_twin(case: Case, fail) -> None:
    """A twin experiment draws synthetic observations of its truth and a background from B."""
    o = case.observations
    if o.network is None:
        fail("observations.network", "required table is missing; add a network (kind = ...) or "
             "read observations from a netCDF file with observations.file")  # fmt: skip
    if o.noise is None:
        fail("observations.noise", "required key is missing; give the σ of the synthetic network's noise")
    if getattr(case.background, "file", None) is not None:
        fail("background.file", "a twin experiment draws its background from B around the truth; "
             "remove background.file or give observations.file")  # fmt: skip
    _check_q(case, fail)


def _check_files(case: Case, fail) -> None:
    """A case with observations.file assimilates one window of real observations: no truth, no samples."""
    if case.observations.network is not None:
        fail("observations.network", "observations come from observations.file; remove the network or the file")
    _check_q(case, fail)
    for path, table, why in (("cycling", case.cycling, "assimilates one window"),
                             ("weak_constraint", case.weak_constraint, "is strong-constraint"),
                             ("training", case.training, "gives one window, too few to train on"),
                             ("discover", case.discover, "has no truth to compare discovered parameters with"),
                             ("truth", case.truth, "has no truth run")):  # fmt: skip
        if table is not None:
            fail(path, f"a case with observations.file {why}; remove [{path}]")


def _check_q(case: Case, fail) -> None:
    """Q has no state to read a background from."""
    q = case.weak_constraint.q if case.weak_constraint is not None else None
    if q is not None and getattr(q, "file", None) is not None:
        fail("weak_constraint.q.file", "Q has no state to read; remove it")


def _check_data(case: Case, fail) -> None:
    """A [data] case: one strong-constraint window of a sample, its background the climatology."""
    o = case.observations
    if o.file is not None:  # real observations on the data grid: no truth to train, discover or cycle against
        if o.network is not None:
            fail("observations.network", "observations come from observations.file; remove the network or the file")
        for path, table in (("training", case.training), ("discover", case.discover), ("truth", case.truth)):
            if table is not None:
                fail(path, f"a [data] case with observations.file has no truth; remove [{path}]")
    elif o.network is None:
        fail("observations.network", "a [data] case draws its observations of the truth sample; add a network "
             "(or read real observations with observations.file)")  # fmt: skip
    elif o.noise is None:
        fail("observations.noise", "required key is missing; give the σ of the synthetic observations' noise")
    if case.background.kind != "climatology":
        fail("background.kind", "the background of a [data] case is its climatology; set kind = 'climatology'")
    if case.weak_constraint is not None:
        fail("weak_constraint", "a [data] case is strong-constraint; remove [weak_constraint]")
    if case.cycling is not None:
        fail("cycling", "a [data] case assimilates one window of its sample; remove [cycling]")


__all__ = ["checked", "grid_length"]
