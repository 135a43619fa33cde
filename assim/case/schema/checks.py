"""Cross-field checks of a validated case that per-field constraints cannot express; errors name the key and fix."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from assim.case.schema.grid import GridConfig
from assim.errors import ConfigError

if TYPE_CHECKING:
    from assim.case.config import Case


def checked(case: Case) -> Case:
    """Cross-field checks pydantic's per-field constraints cannot express."""
    g, t, o, m = case.grid, case.time, case.observations, case.model

    def fail(path: str, text: str) -> None:
        raise ConfigError(f"{path}: {text}")

    if _check_files(case, fail):
        return case
    if _check_data(case, fail):
        _check_discovery(case, fail)
        _check_training(case, fail)
        return case

    if m.kind == "lorenz96":
        if g.ndim != 1 or g.boundary != "periodic":
            fail("grid.ndim", "lorenz96 is a 1-D periodic ring; set grid.ndim = 1 and grid.boundary = 'periodic'")
    if m.kind == "shallow_water" and (g.ndim != 2 or g.boundary != "periodic"):
        fail("grid.ndim", "the shallow_water case runs on a doubly periodic 2-D grid; "
             "set grid.ndim = 2 and grid.boundary = 'periodic'")  # fmt: skip
    if m.kind != "shallow_water" and case.background.velocity_variance is not None:
        fail("background.velocity_variance", f"applies to shallow_water only (model.kind is {m.kind!r}); remove it")
    if m.kind == "python" and (m.module is None) == (m.file is None):
        fail("model.module", "give exactly one of model.module (an importable module) or model.file (a .py file)")
    if m.kind == "burgers" and g.ndim != 1:
        fail("grid.ndim", f"the burgers case is 1-D (got {g.ndim}); set grid.ndim = 1")
    if m.kind != "lorenz96":
        if len(m.initial.centre) != g.ndim:
            fail("model.initial.centre", f"needs {g.ndim} coordinates (got {len(m.initial.centre)})")
    if case.background.kind == "spectral_gaussian" and g.boundary != "periodic":
        fail("background.kind", "spectral_gaussian needs grid.boundary = 'periodic'; use kind = 'diffusion'")
    if o.every > t.n_steps:
        fail("observations.every", f"must be ≤ time.n_steps = {t.n_steps} (got {o.every}); observe more often")
    net = o.network
    if net.kind == "stations" and net.points is not None:
        for i, p in enumerate(net.points):
            if g.file is None and (len(p) != g.ndim or not all(0 <= c <= grid_length(g) and math.isfinite(c)
                                                                 for c in p)):  # fmt: skip
                fail(f"observations.network.points.{i}",
                     f"a station needs {g.ndim} coordinates inside [0, {grid_length(g)}] (got {p})")  # fmt: skip
    if g.file is None and net.kind == "random_fraction" and int(net.fraction * g.n**g.ndim) < 1:
        fail("observations.network.fraction", f"observes no cell of the {g.n}^{g.ndim} grid; raise it")
    if g.file is None and net.kind == "regular" and net.spacing > g.n:
        fail("observations.network.spacing", f"must be ≤ grid.n = {g.n} (got {net.spacing})")
    c = case.cycling
    if c is not None:
        if c.window > t.n_steps:
            fail("cycling.window", f"must be ≤ time.n_steps = {t.n_steps} (got {c.window}); shorten the window")
        if c.shift > c.window:
            fail("cycling.shift", f"must be ≤ cycling.window = {c.window} (got {c.shift}); "
                 "windows may not leave gaps")  # fmt: skip
        span = (c.n_windows - 1) * c.shift + c.window
        if span > t.n_steps:
            fail("cycling.n_windows", f"{c.n_windows} windows span {span} steps, longer than the data "
                 f"(time.n_steps = {t.n_steps}); use fewer windows or raise time.n_steps")  # fmt: skip
        if c.shift % o.every:
            fail("cycling.shift", f"must be a multiple of observations.every = {o.every} (got {c.shift})")
    _check_discovery(case, fail)
    _check_training(case, fail)
    return case


def grid_length(g: GridConfig) -> float:
    """Domain length of a [grid] table without a file (default 1)."""
    return g.length if g.length is not None else 1.0


def _check_files(case: Case, fail) -> bool:
    """Checks of grid.file, observations.file and background.file; True for a case that reads its observations."""
    g, o, b = case.grid, case.observations, case.background
    if g is not None and g.file is None and g.n is None:
        fail("grid.n", "required key is missing; add it to the case file (or take the grid from grid.file)")
    if g is not None and g.file is not None:
        for key in ("n", "length"):
            if getattr(g, key) is not None:
                fail(f"grid.{key}", f"comes from the coordinates of grid.file; remove grid.{key} or grid.file")
    q = case.weak_constraint.q if case.weak_constraint is not None else None
    if q is not None and getattr(q, "file", None) is not None:
        fail("weak_constraint.q.file", "Q has no state to read; remove it")
    if o.file is None:
        if o.network is None:
            fail("observations.network", "required table is missing; add a network (kind = ...) or "
                 "read observations from a netCDF file with observations.file")  # fmt: skip
        if o.noise is None:
            fail("observations.noise", "required key is missing; give the σ of the synthetic network's noise")
        if getattr(b, "file", None) is not None:
            fail("background.file", "a twin experiment draws its background from B around the truth; "
                 "remove background.file or give observations.file")  # fmt: skip
        return False
    if o.network is not None:
        fail("observations.network", "observations come from observations.file; remove the network or the file")
    if case.data is not None:  # real observations on a [data] grid: checked by _check_data
        return False
    if case.model.kind == "shallow_water":
        fail("observations.file", f"is for the single-field Cartesian models (diffusion, advection_diffusion, "
             f"burgers, lorenz96), not {case.model.kind!r}; remove it")  # fmt: skip
    if g is None:
        fail("grid", "required table is missing; add [grid] with n (or file)")
    for path, table, why in (("cycling", case.cycling, "assimilates one window"),
                             ("weak_constraint", case.weak_constraint, "is strong-constraint"),
                             ("training", case.training, "gives one window, too few to train on"),
                             ("discover", case.discover, "has no truth to compare discovered parameters with"),
                             ("truth", case.truth, "has no truth run")):  # fmt: skip
        if table is not None:
            fail(path, f"a case with observations.file {why}; remove [{path}]")
    if case.solver.kind == "unrolled":
        fail("solver.kind", "the trained solver runs on twin windows; use gauss_newton or levenberg_marquardt")
    if case.model.kind == "lorenz96" and (g.ndim != 1 or g.boundary != "periodic"):
        fail("grid.ndim", "lorenz96 is a 1-D periodic ring; set grid.ndim = 1 and grid.boundary = 'periodic'")
    if case.model.kind == "burgers" and g.ndim != 1:
        fail("grid.ndim", f"the burgers case is 1-D (got {g.ndim}); set grid.ndim = 1")
    if b.kind == "climatology":
        fail("background.kind", "climatology needs [data] samples; use spectral_gaussian, diffusion or diagonal")
    if b.velocity_variance is not None:
        fail("background.velocity_variance", f"applies to shallow_water only (model.kind is {case.model.kind!r})")
    if b.kind == "spectral_gaussian" and g.boundary != "periodic":
        fail("background.kind", "spectral_gaussian needs grid.boundary = 'periodic'; use kind = 'diffusion'")
    if case.model.kind != "lorenz96" and len(case.model.initial.centre) != g.ndim:
        fail("model.initial.centre", f"needs {g.ndim} coordinates (got {len(case.model.initial.centre)})")
    return True


def _check_data(case: Case, fail) -> bool:
    """Checks that tie a [data] case to its grid, models, network and B; True for a case with [data]."""
    m, o, b, d = case.model, case.observations, case.background, case.data
    q = case.weak_constraint.q if case.weak_constraint is not None else None
    if d is None:
        if case.grid is None:
            fail("grid", "required table is missing; add [grid] with n (and ndim, length, boundary), "
                 "or take the grid from a dataset with [data]")  # fmt: skip
        for path, table in (("background", b), ("weak_constraint.q", q)):
            if table is not None and table.kind == "climatology":
                fail(f"{path}.kind", "climatology needs a [data] table whose samples give the mean and spread; "
                     "add [data] or use spectral_gaussian, diffusion or diagonal")  # fmt: skip
        if m.kind == "advection_diffusion" and m.inflow is not None:
            fail("model.inflow", "needs open boundaries on a grid from [data]; remove it")
        return False
    if case.grid is not None:
        fail("grid", "the grid comes from the [data] field's coordinates; remove [grid] "
             "(thin it with data.field.coarsen, cut it with data.field.subset)")  # fmt: skip
    if m.kind not in ("diffusion", "advection_diffusion"):
        fail("model.kind", f"a [data] case runs the tracer models diffusion or advection_diffusion (got {m.kind!r})")
    if o.file is not None:  # real observations on the data grid: no truth to train, discover or cycle against
        for path, table in (("training", case.training), ("discover", case.discover), ("truth", case.truth)):
            if table is not None:
                fail(path, f"a [data] case with observations.file has no truth; remove [{path}]")
        if case.solver.kind == "unrolled":
            fail("solver.kind", "the trained solver runs on twin windows; use gauss_newton or levenberg_marquardt")
    elif o.network is None:
        fail("observations.network", "a [data] case draws its observations of the truth sample; add a network "
             "(or read real observations with observations.file)")  # fmt: skip
    elif o.noise is None:
        fail("observations.noise", "required key is missing; give the σ of the synthetic observations' noise")
    if b.kind != "climatology":
        fail("background.kind", "the background of a [data] case is its climatology; set kind = 'climatology'")
    if q is not None:
        fail("weak_constraint", "a [data] case is strong-constraint; remove [weak_constraint]")
    if case.cycling is not None:
        fail("cycling", "a [data] case assimilates one window of its sample; remove [cycling]")
    if o.every > case.time.n_steps:
        fail("observations.every", f"must be ≤ time.n_steps = {case.time.n_steps} (got {o.every}); observe more often")
    if m.kind == "advection_diffusion" and m.wind is None:
        fail("model.wind", "a [data] case takes its winds from files; add wind = { u = {...}, v = {...} }")
    return True


def _check_discovery(case: Case, fail) -> None:
    """Cross-field checks of [discover], [truth] and [weak_constraint] (names are checked against the built model)."""
    w = case.weak_constraint
    if w is not None:
        if case.cycling is not None:
            fail("weak_constraint",
                 "weak-constraint 4D-Var runs one window here; remove [cycling] or [weak_constraint]")  # fmt: skip
        if w.q.velocity_variance is not None and case.model.kind != "shallow_water":
            fail("weak_constraint.q.velocity_variance", "applies to shallow_water only; remove it")
        if w.q.kind == "spectral_gaussian" and case.grid is not None and case.grid.boundary != "periodic":
            fail("weak_constraint.q.kind", "spectral_gaussian needs grid.boundary = 'periodic'; use kind = 'diffusion'")
        if w.timing.kind == "subwindows" and w.timing.length > case.time.n_steps:
            fail("weak_constraint.timing.length", f"must be ≤ time.n_steps = {case.time.n_steps} "
                 f"(got {w.timing.length})")  # fmt: skip
    d = case.discover
    if d is not None:
        for name, prior in d.parameters.items():
            if not name.isidentifier():
                fail(f"discover.parameters.{name}",
                     "is not a model field name; use e.g. kappa, wind_scale, nu, forcing")  # fmt: skip
            if not all(math.isfinite(v) for v in prior.model_dump().values() if isinstance(v, float)):
                fail(f"discover.parameters.{name}", "prior values must be finite numbers")
    t = case.truth
    if t is not None:
        for name, value in t.parameters.items():
            if not math.isfinite(value):
                fail(f"truth.parameters.{name}", f"must be a finite number (got {value})")


def _check_training(case: Case, fail) -> None:
    """Cross-field checks of [training] and of the unrolled solver kind (single windows only)."""
    if case.solver.kind == "unrolled" and case.cycling is not None:
        fail("solver.kind", "the unrolled solver is trained on single windows; remove [cycling] or use gauss_newton")
    if case.solver.kind == "unrolled" and case.weak_constraint is not None:
        fail("solver.kind", "the unrolled solver is strong-constraint; remove [weak_constraint] or use gauss_newton")
    tr = case.training
    if tr is None:
        return
    if case.cycling is not None:
        fail("training", "training uses single windows of time.n_steps; remove [cycling] from the training case")
    if case.weak_constraint is not None:
        fail("training", "the unrolled solver is strong-constraint; remove [weak_constraint] from the training case")
    if case.solver.kind == "unrolled":
        fail("solver.kind", "in a training case [solver] is the classical comparison; use gauss_newton or "
             "levenberg_marquardt (the trained solver runs from a case with kind = 'unrolled')")  # fmt: skip
    if tr.masking_weight == 0 and tr.kkt_weight == 0:
        fail("training.masking_weight", "masking_weight and kkt_weight are both 0: nothing to learn; make one > 0")
    if tr.batch_size > tr.train_windows:
        fail("training.batch_size", f"must be ≤ training.train_windows = {tr.train_windows} (got {tr.batch_size})")
    h = tr.hypergradient
    if h.kind == "truncated" and h.layers > tr.layers:
        fail("training.hypergradient.layers", f"must be ≤ training.layers = {tr.layers} (got {h.layers})")
    if h.kind == "implicit":
        fail("training.hypergradient.kind", "implicit hypergradients give the solver's own layer parameters "
             "zero gradient (they serve outer parameters, see assim discover); "
             "use 'unrolled', 'truncated' or 'one_step'")  # fmt: skip


__all__ = ["checked", "grid_length"]
