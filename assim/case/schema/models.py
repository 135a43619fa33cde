"""Case-file [model] sections: each physics kind with its parameters, and the model and truth it builds.

Every member of `ModelConfig` has `build(grid, dt, spin_up)` → (model, true initial state) and the hooks
the case builder calls instead of branching on `kind`: `grid_for` (the grid of a [grid] table),
`covariance` (B of its state from one field's covariance), `component` (the field observations see),
`resample` (a training sample's truth), `units` (for outputs). Physics imports are lazy, so validating a
case never imports JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

from pydantic import Field

from assim.case.schema.base import Strict as _Strict
from assim.case.schema.data import FieldSourceConfig, WindConfig

if TYPE_CHECKING:
    import numpy as np

Scheme = Literal["backward_euler", "crank_nicolson"]


def _scheme(name: Scheme):
    from models.time_schemes import BackwardEuler, CrankNicolson

    return BackwardEuler() if name == "backward_euler" else CrankNicolson()


Tolerance = Annotated[float, Field(gt=0, lt=1)]  # rtol = atol of the implicit step's Krylov solve


def _krylov(solver_class, tolerance: float, **options):
    """The lineax Krylov solver the model defaults to, at rtol = atol = `tolerance`."""
    return solver_class(rtol=tolerance, atol=tolerance, **options)


class Bump(_Strict):
    """Initial truth: a Gaussian bump plus a sin² wave along x (Cartesian models)."""

    centre: list[float] = [0.3, 0.6]
    width: float = Field(default=0.1, gt=0)  # `default=` by keyword: the default type checkers see
    amplitude: float = 1.0
    wave: float = 0.5

    def field(self, grid):
        """The bump on the grid's cell centres (None on a grid without lengths: a [data] grid's truth is a sample)."""
        import numpy as np

        if not hasattr(grid, "lengths"):
            return None
        axes = _mesh(grid)
        r2 = sum((a - c) ** 2 for a, c in zip(axes, self.centre))
        x = axes[-1]
        return (
            self.amplitude * np.exp(-r2 / (2 * self.width**2))
            + self.wave * np.sin(2 * np.pi * x / grid.lengths[-1]) ** 2
        )


def _mesh(grid) -> tuple[np.ndarray, ...]:
    """The cell-centre coordinates of every axis on the whole grid (`np.meshgrid`, "ij")."""
    import numpy as np

    return np.meshgrid(*grid.coords().values(), indexing="ij")


def _array(values):
    import jax.numpy as jnp

    return None if values is None else jnp.asarray(values)


def _parameter(value, grid, what: str, units: str | None, provenance: dict | None):
    """A number as it is, or a field source's values on the grid: converted to `units`, > 0 on active cells."""
    if not isinstance(value, FieldSourceConfig):
        return value
    from assim.io.fields import parameter_field

    return parameter_field(value, grid, f"model.{what}", units=units, provenance=provenance, key=what)


def _diffusivity_units(grid) -> str | None:
    """m2 s-1 on a latitude-longitude grid (lengths in metres); a Cartesian grid's own units otherwise."""
    return "m2 s-1" if tuple(grid.dims) == ("lat", "lon") else None


class _FieldModel(_Strict):
    """A model of one field on a Cartesian [grid]: the defaults of every hook."""

    if TYPE_CHECKING:
        kind: str  # each kind's Literal tag (a field of every subclass, none of this base)

    def grid_for(self, g):
        """The case's Cartesian grid of a [grid] table without a file."""
        from models import CartesianGrid, Neumann, Periodic

        length = g.length if g.length is not None else 1.0
        return CartesianGrid((g.n,) * g.ndim, (length,) * g.ndim, Periodic() if g.boundary == "periodic" else Neumann())

    def covariance(self, background, grid):
        """B of the model's state from the [background] table."""
        return background.build(grid, background.variance)

    component: ClassVar[str | None] = None  # observations see the whole (single-field) state
    on_data_grids: ClassVar[bool] = False  # runs on the grid of a [data] field (tracer models)
    fields: ClassVar[tuple[str, ...]] = ()  # the components of a multi-field state (B gets velocity_variance)

    def check(self, path: str, case, fail) -> None:
        """The model's own demands on the case: its grid, the initial bump's centre, B of its fields."""
        if case.data is not None and not self.on_data_grids:
            fail(f"{path}.kind", f"a [data] case runs the tracer models diffusion or advection_diffusion "
                 f"(got {self.kind!r})")  # fmt: skip
        initial = getattr(self, "initial", None)
        if case.grid is not None and initial is not None and len(initial.centre) != case.grid.ndim:
            fail(f"{path}.initial.centre", f"needs {case.grid.ndim} coordinates (got {len(initial.centre)})")
        q = case.weak_constraint.q if case.weak_constraint is not None else None
        for where, table in (("background", case.background), ("weak_constraint.q", q)):
            if getattr(table, "velocity_variance", None) is not None and "u" not in self.fields:
                fail(f"{where}.velocity_variance", f"applies to shallow_water only (model.kind is {self.kind!r}); "
                     "remove it")  # fmt: skip

    def resample(self, model, truth0):
        """A training sample's true initial state from its drawn perturbation (nothing more to do)."""
        return truth0

    def units(self) -> dict[str, str]:
        """Units of lengths, times and the state in the outputs (nondimensional)."""
        return {"length": "1", "time": "1", "state": "1"}


class DiffusionModel(_FieldModel):
    """Heat equation ∂u/∂t = ∇·(κ∇u); κ a number or a field source (m2 s-1 on a latitude-longitude grid)."""

    kind: Literal["diffusion"]
    kappa: Annotated[float, Field(gt=0)] | FieldSourceConfig
    on_data_grids: ClassVar[bool] = True
    scheme: Scheme = "crank_nicolson"
    tolerance: Tolerance = 1e-10
    initial: Bump = Bump()

    def build(self, grid, dt: float, spin_up: bool = True, inflow=None, provenance=None, start=None, length=None):
        """The model and the truth's initial state (`inflow`: unused; how a κ source reached the grid into `provenance`)."""
        import lineax as lx

        from models.diffusion import Diffusion

        kappa = _parameter(self.kappa, grid, "kappa", _diffusivity_units(grid), provenance)
        model = Diffusion(grid, kappa, dt, _scheme(self.scheme), solver=_krylov(lx.CG, self.tolerance))
        return model, _array(self.initial.field(grid))


class AdvectionDiffusionModel(_FieldModel):
    """Tracer advected by a wind: ∂c/∂t + ∇·(vc) = ∇·(κ∇c).

    The wind is a steady cellular flow, or `wind` (u, v from files, interpolated onto the grid); `speed` scales it
    (the model's `wind_scale`); κ is a number or a field source (m2 s-1 on a latitude-longitude grid, > 0).
    `inflow = "background"`: open boundaries bring the background field in; or a field source: they bring its
    values in (interpolated onto the grid like any source; missing values, e.g. on land, never enter).
    `nondivergent` projects the face fluxes onto discretely non-divergent ones.
    """

    kind: Literal["advection_diffusion"]
    kappa: Annotated[float, Field(ge=0)] | FieldSourceConfig
    speed: float = 1.0
    scheme: Scheme = "crank_nicolson"
    tolerance: Tolerance = 1e-10
    advection: Literal["upwind", "centred"] = "centred"
    initial: Bump = Bump()
    wind: WindConfig | None = None
    inflow: Literal["background"] | FieldSourceConfig | None = None
    nondivergent: bool = False
    on_data_grids: ClassVar[bool] = True

    def check(self, path: str, case, fail) -> None:
        """Winds from files on a [data] grid; inflow only through the open sides of a [data] grid."""
        super().check(path, case, fail)
        if case.data is None and self.inflow is not None:
            fail(f"{path}.inflow", "needs open boundaries on a grid from [data]; remove it")
        if case.data is not None and self.wind is None:
            fail(f"{path}.wind", "a [data] case takes its winds from files; add wind = { u = {...}, v = {...} }")
        if self.wind is not None:
            self.wind.check(f"{path}.wind", case, fail)

    def velocity(self, grid, provenance: dict | None = None, start=None, length: float | None = None):
        """(wind components per grid axis, their sample times or None): from the files of `wind` (how they reached
        the grid into `provenance`; time-varying winds must cover the window [0, `length`] after `start`), or the
        steady cellular flow u = sin(kx)cos(ky), v = −cos(kx)sin(ky)."""
        import numpy as np

        if self.wind is not None:
            return self.wind.build(grid, provenance, start, length)
        if grid.ndim == 1:
            return (np.ones(grid.shape),), None
        y, x = _mesh(grid)
        k = 2 * np.pi / grid.lengths[-1]
        return (-np.cos(k * x) * np.sin(k * y), np.sin(k * x) * np.cos(k * y)), None

    def inflow_field(self, grid, background=None, provenance: dict | None = None):
        """What open boundaries bring in: None, the `background` field, or the values of the `inflow` source."""
        import jax.numpy as jnp
        import numpy as np

        if self.inflow is None or (self.inflow == "background" and background is None):
            return None
        if self.inflow == "background":
            return jnp.asarray(background)
        from assim.io.sources import field_on_grid

        values, how = field_on_grid(self.inflow, grid, None, "model.inflow")
        if provenance is not None:
            provenance["inflow"] = how
        return jnp.asarray(np.nan_to_num(values))  # missing (land) cells: closed faces carry no inflow

    def build(self, grid, dt: float, spin_up: bool = True, inflow=None, provenance=None, start=None, length=None):
        """The model (`inflow`: the field open boundaries bring in; `start`, `length`: the window's date, if any, and
        model-time length that time-varying winds must cover) and the truth's initial state."""
        import jax.numpy as jnp
        import lineax as lx
        import numpy as np

        from models.advection_diffusion import AdvectionDiffusion
        from models.nondivergent import NoFluxCorrection, NonDivergentProjection
        from models.operators import Centred, Upwind

        wind, times = self.velocity(grid, provenance, start, length)
        wind = tuple(jnp.asarray(np.nan_to_num(w)) for w in wind)  # missing winds: calm
        kappa = _parameter(self.kappa, grid, "kappa", _diffusivity_units(grid), provenance)
        model = AdvectionDiffusion(grid, wind, kappa, dt, _scheme(self.scheme), times=times, wind_scale=self.speed,
                                   solver=_krylov(lx.GMRES, self.tolerance, restart=20),
                                   advection_scheme=Centred() if self.advection == "centred" else Upwind(),
                                   inflow=self.inflow_field(grid, inflow, provenance),
                                   flux_correction=NonDivergentProjection() if self.nondivergent else NoFluxCorrection())  # fmt: skip
        return model, _array(self.initial.field(grid))


class BurgersModel(_FieldModel):
    """Viscous Burgers ∂u/∂t + (u·∇)u = ∇·(ν∇u), 1-D."""

    kind: Literal["burgers"]
    nu: float = Field(gt=0)
    scheme: Scheme = "crank_nicolson"
    tolerance: Tolerance = 1e-10
    initial: Bump = Bump(centre=[0.5], width=0.1, amplitude=0.5, wave=0.0)

    def check(self, path: str, case, fail) -> None:
        """A 1-D grid."""
        if case.grid is not None and case.grid.ndim != 1:
            fail("grid.ndim", f"the burgers case is 1-D (got {case.grid.ndim}); set grid.ndim = 1")
        super().check(path, case, fail)

    def build(self, grid, dt: float, spin_up: bool = True, inflow=None, provenance=None, start=None, length=None):
        """The model and the truth's initial state (`inflow`, `provenance`: unused, ν is a number)."""
        import jax.numpy as jnp
        import lineax as lx

        from models.burgers import Burgers

        t = self.tolerance  # the Krylov solves and the Newton iteration of each implicit step
        model = Burgers(grid, self.nu, dt, _scheme(self.scheme), _krylov(lx.GMRES, t, restart=20, max_steps=50), t, t)
        return model, jnp.asarray(self.initial.field(grid))


class Lorenz96Model(_FieldModel):
    """Lorenz-96 ring; the truth starts from F plus a perturbation spun up for `spin_up` steps.

    `forcing` F is a number or a 1-D source of length n (F per variable, taken by index).
    """

    kind: Literal["lorenz96"]
    forcing: float | FieldSourceConfig = 8.0
    spin_up: int = Field(200, ge=0)

    def check(self, path: str, case, fail) -> None:
        """A 1-D periodic ring."""
        if case.grid is not None and (case.grid.ndim != 1 or case.grid.boundary != "periodic"):
            fail("grid.ndim", "lorenz96 is a 1-D periodic ring; set grid.ndim = 1 and grid.boundary = 'periodic'")
        super().check(path, case, fail)

    def grid_for(self, g):
        """A periodic ring of unit-spaced variables (centres at 0 … n−1)."""
        from models import CartesianGrid, Periodic

        return CartesianGrid((g.n,), (float(g.n),), Periodic(), origin=(-0.5,))

    def build(self, grid, dt: float, spin_up: bool = True, inflow=None, provenance=None, start=None, length=None):
        """The model and the truth's initial state (spun up unless `spin_up` is False; `inflow`: unused)."""
        import jax.numpy as jnp

        from models.lorenz96 import Lorenz96

        forcing = self.forcing
        if isinstance(forcing, FieldSourceConfig):
            from assim.io.fields import parameter_vector

            forcing = parameter_vector(forcing, grid.shape[0], "model.forcing", provenance=provenance, key="forcing")
        model = Lorenz96(grid.shape[0], forcing, dt)
        x0 = jnp.broadcast_to(jnp.asarray(forcing, dtype=float), grid.shape).at[0].add(0.01)
        return model, self.resample(model, x0) if spin_up else x0

    def resample(self, model, truth0):
        """Back onto the attractor: spin the perturbed state up again."""
        if not self.spin_up:
            return truth0
        import equinox as eqx

        from models.rollout import integrate

        return model.check_result(eqx.filter_jit(integrate)(model, truth0, self.spin_up), "the spin-up")


class ShallowWaterModel(_FieldModel):
    """Rotating shallow water on an f-plane (doubly periodic); the truth starts at rest with a bump in η.

    `depth` H is a number or a field source (metres, > 0 everywhere).
    """

    kind: Literal["shallow_water"]
    depth: Annotated[float, Field(gt=0)] | FieldSourceConfig
    g: float = Field(9.81, gt=0)
    f0: float = 0.0
    tolerance: Tolerance = 1e-10
    initial: Bump = Bump(centre=[0.5, 0.5], width=0.1, amplitude=0.1, wave=0.0)

    component: ClassVar[str | None] = "eta"
    fields: ClassVar[tuple[str, ...]] = ("eta", "u", "v")

    def check(self, path: str, case, fail) -> None:
        """A doubly periodic 2-D grid."""
        if case.grid is not None and (case.grid.ndim != 2 or case.grid.boundary != "periodic"):
            fail("grid.ndim", "the shallow_water case runs on a doubly periodic 2-D grid; "
                 "set grid.ndim = 2 and grid.boundary = 'periodic'")  # fmt: skip
        super().check(path, case, fail)

    def build(self, grid, dt: float, spin_up: bool = True, inflow=None, provenance=None, start=None, length=None):
        """The model and the truth's initial state: at rest, with a bump in the free surface (`inflow`: unused)."""
        import jax.numpy as jnp
        import lineax as lx

        from models.shallow_water import FPlane, ShallowWater, SWState

        zero = jnp.zeros(grid.shape)
        state = SWState(jnp.asarray(self.initial.field(grid)), zero, zero)
        depth = _parameter(self.depth, grid, "depth", "m", provenance)
        return ShallowWater(grid, depth, dt, self.g, FPlane(self.f0), solver=_krylov(lx.CG, self.tolerance)), state

    def covariance(self, background, grid):
        """Block B of (η, u, v): σ² of η is `variance`, of u and v `velocity_variance` (default: `variance`)."""
        from assim.covariances.covariance import BlockCovariance
        from models.shallow_water import SWState

        velocity = background.velocity_variance if background.velocity_variance is not None else background.variance
        eta = background.build(grid, background.variance)
        return BlockCovariance(SWState(eta, background.build(grid, velocity), background.build(grid, velocity)))

    def units(self) -> dict[str, str]:
        """SI units (g in m s-2)."""
        return {"length": "m", "time": "s", "state": "m", "u": "m s-1", "v": "m s-1"}


class PythonModel(_FieldModel):
    """Your own model: `attribute` of a Python `module` (or a .py `file`), a factory or a step function.

    `form = "factory"`: `attribute(grid, dt, **parameters)` returns a `models.base.AbstractModel` (an equinox
    module). `form = "step"`: `attribute(state, t, parameters) -> state` is a pure JAX step function of a state
    on the grid, wrapped in `models.function_model.FunctionModel`. The truth starts from `initial` (a bump).
    """

    kind: Literal["python"]
    module: str | None = Field(None, min_length=1)
    file: str | None = Field(None, min_length=1)
    attribute: str = Field(min_length=1)
    form: Literal["factory", "step"] = "factory"
    parameters: dict[str, float] = {}
    initial: Bump = Bump()

    def check(self, path: str, case, fail) -> None:
        """Exactly one of `module` and `file`."""
        super().check(path, case, fail)
        if (self.module is None) == (self.file is None):
            fail(f"{path}.module", "give exactly one of model.module (an importable module) or model.file (a .py file)")

    def build(self, grid, dt: float, spin_up: bool = True, inflow=None, provenance=None, start=None, length=None):
        """The user's model and the truth's initial state (`inflow`, `provenance`: unused, parameters are numbers)."""
        import jax.numpy as jnp

        from assim.case.user_model import load_model

        truth0 = jnp.asarray(self.initial.field(grid))
        return load_model(self, grid, dt, truth0), truth0


ModelConfig = Annotated[
    Union[DiffusionModel, AdvectionDiffusionModel, BurgersModel, Lorenz96Model, ShallowWaterModel, PythonModel],
    Field(discriminator="kind"),
]
