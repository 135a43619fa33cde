"""Joint state–parameter 4D-Var (parameter discovery): the control holds the initial state and physical parameters.

    x_0 = x_b + B^{1/2} v,   θ = θ(p) from a prior strategy,   model_θ = model with θ put where `where` points,
    r(v, p) = [ v ; p ; R_t^{-1/2} (y_t − H_t(M_θ,0→t(x_0))) ],   J = ½‖r‖².

Priors: `GaussianPrior(mean, std)` gives θ = mean + std·p; `LogNormalPrior(median, log_std)`
gives θ = median·exp(log_std·p) for positive parameters (diffusivities, wind scales). The
problem plugs into `assim.solvers.gauss_newton.GaussNewton`. `parameter_posterior` returns the
Laplace (Gauss-Newton) posterior of a few scalar parameters: the parameter block of H⁻¹,
H = J_rᵀJ_r at the analysis, from one matrix-free CG solve H z = e_i per parameter
component (H is never formed), mapped to θ by the transform's derivative.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.errors import InputError
from assim.observations.observation_set import ObservationSet
from assim.problems.problem import AbstractVariationalProblem
from assim.problems.window import check_window
from models.base import AbstractModel, as_field, check_positive
from models.rollout import AbstractCheckpointing, NoCheckpointing, rollout

Selector = Callable[[AbstractModel], PyTree[Array]]


class AbstractParameterPrior(eqx.Module):
    """Prior of one physical parameter (scalar or field) and its control transform θ(p), p ~ N(0, I)."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Shape of the parameter (and of its control p)."""

    @abc.abstractmethod
    def parameter(self, p: Float[Array, "..."]) -> Float[Array, "..."]:
        """Parameter value θ(p) from its control p (p = 0: the prior's central value)."""

    @abc.abstractmethod
    def control(self, theta: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """Control p with θ(p) = θ (the inverse transform)."""


def _prior_fields(centre, spread, names: tuple[str, str]) -> tuple[Array, Array]:
    centre, spread = as_field(centre), as_field(spread)
    try:
        shape = jnp.broadcast_shapes(centre.shape, spread.shape)
    except ValueError:
        raise InputError(
            f"the prior's {names[0]} (shape {centre.shape}) and {names[1]} (shape {spread.shape}) do not broadcast."
        ) from None
    check_positive(spread, f"prior {names[1]}", "Give a positive spread; fix a parameter by leaving it out of `where`.")
    return jnp.broadcast_to(centre, shape), jnp.broadcast_to(spread, shape)


class GaussianPrior(AbstractParameterPrior):
    """θ ~ N(mean, std²) elementwise: θ = mean + std·p."""

    mean: Float[Array, "..."]
    std: Float[Array, "..."]

    def __init__(self, mean: Float[ArrayLike, "..."], std: Float[ArrayLike, "..."]):
        self.mean, self.std = _prior_fields(mean, std, ("mean", "std"))

    @property
    def shape(self):
        return tuple(self.mean.shape)

    def parameter(self, p):
        return self.mean + self.std * p

    def control(self, theta):
        return (jnp.asarray(theta, dtype=float) - self.mean) / self.std


class LogNormalPrior(AbstractParameterPrior):
    """log θ ~ N(log median, log_std²) elementwise: θ = median·exp(log_std·p), always positive."""

    median: Float[Array, "..."]
    log_std: Float[Array, "..."]

    def __init__(self, median: Float[ArrayLike, "..."], log_std: Float[ArrayLike, "..."]):
        check_positive(median, "prior median", "A log-normal prior is for positive parameters.")
        self.median, self.log_std = _prior_fields(median, log_std, ("median", "log_std"))

    @property
    def shape(self):
        return tuple(self.median.shape)

    def parameter(self, p):
        return self.median * jnp.exp(self.log_std * p)

    def control(self, theta):
        return jnp.log(jnp.asarray(theta, dtype=float) / self.median) / self.log_std


class JointControl(eqx.Module):
    """Control vector of joint state–parameter estimation: initial-state control v and parameter controls p."""

    v: PyTree[Array]
    p: tuple[Float[Array, "..."], ...]


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class ParameterControl4DVar(AbstractVariationalProblem):
    """4D-Var over one window with the initial state and the model fields selected by `where` as the control.

    `where(model)` returns the controlled field, or a tuple of fields, in the way of
    `eqx.tree_at` (e.g. `lambda m: m.kappa`, `lambda m: (m.kappa, m.wind_scale)`);
    `priors` gives one prior per selected field, in the same order. Define `where` once and
    reuse it: jit caches on its identity.
    """

    model: AbstractModel
    where: Selector = eqx.field(static=True)
    priors: tuple[AbstractParameterPrior, ...]
    background: PyTree[Array]
    covariance: AbstractBackgroundCovariance
    observations: tuple[ObservationSet, ...]
    n_steps: int = eqx.field(static=True)
    t0: Float[Array, ""]
    checkpointing: AbstractCheckpointing = eqx.field(static=True)

    def __init__(
        self,
        model: AbstractModel,
        where: Selector,
        priors: AbstractParameterPrior | Sequence[AbstractParameterPrior],
        background: PyTree[ArrayLike],
        covariance: AbstractBackgroundCovariance,
        observations: ObservationSet | Sequence[ObservationSet],
        n_steps: int | None = None,
        t0: float = 0.0,
        checkpointing: AbstractCheckpointing = NoCheckpointing(),
    ):
        if model is None:
            raise InputError("parameter estimation needs a model whose fields `where` selects.")
        priors = _as_tuple(priors)
        if not all(isinstance(p, AbstractParameterPrior) for p in priors):
            raise InputError("priors must be GaussianPrior(mean, std) or LogNormalPrior(median, log_std) strategies.")
        try:
            selected = _as_tuple(where(model))
        except AttributeError as err:
            raise InputError(f"`where` does not select a field of {type(model).__name__}: {err}.") from None
        if len(selected) != len(priors):
            raise InputError(
                f"`where` selects {len(selected)} field(s) but {len(priors)} prior(s) were given; "
                "give one prior per field."
            )
        for i, (field, prior) in enumerate(zip(selected, priors)):
            if not isinstance(field, (jax.Array, np.ndarray)):
                raise InputError(
                    f"selected field {i} is a {type(field).__name__}, not an array: `where` must point at "
                    "array fields (physical parameters) of the model."
                )
            if tuple(np.shape(field)) != prior.shape:
                raise InputError(
                    f"selected field {i} has shape {tuple(np.shape(field))} but its prior has shape {prior.shape}; "
                    "give the prior's mean/median and spread that shape (or a scalar for a scalar parameter)."
                )
        background, observations, n_steps = check_window(model, background, observations, n_steps)
        self.model = model
        self.where = where
        self.priors = priors
        self.background = background
        self.covariance = covariance
        self.observations = observations
        self.n_steps = n_steps
        self.t0 = jnp.asarray(t0, dtype=float)
        self.checkpointing = checkpointing

    @property
    def n_parameters(self) -> int:
        """Number of scalar parameter controls (total size of p)."""
        return int(sum(np.prod(p.shape, dtype=int) for p in self.priors))

    def prepared(self) -> ParameterControl4DVar:
        """The same problem with the covariance's loop-invariant factors precomputed."""
        return eqx.tree_at(lambda c: c.covariance, self, self.covariance.prepare())

    def zero_control(self) -> JointControl:
        """v = 0 (the covariance's zero control: active cells only on a masked grid), p = 0: x0 = x_b, θ central."""
        v = self.covariance.zero_control(self.background)
        return JointControl(v, tuple(jnp.zeros(p.shape) for p in self.priors))

    def control_from(self, theta: Float[ArrayLike, "..."] | Sequence[Float[ArrayLike, "..."]]) -> JointControl:
        """Control with x0 = x_b and the parameters set to θ (one value per selected field)."""
        theta = _as_tuple(theta)
        return JointControl(self.zero_control().v, tuple(pr.control(t) for pr, t in zip(self.priors, theta)))

    def initial_state(self, control: JointControl) -> PyTree[Array]:
        """Initial state x0 = x_b + B^{1/2} v of the window."""
        return jax.tree_util.tree_map(jnp.add, self.background, self.covariance.sqrt(control.v))

    def parameters(self, control: JointControl) -> tuple[Float[Array, "..."], ...]:
        """Parameter values θ(p), one per selected field."""
        return tuple(pr.parameter(p) for pr, p in zip(self.priors, control.p))

    def model_at(self, control: JointControl) -> AbstractModel:
        """The model with the selected fields set to θ(p)."""
        theta = self.parameters(control)
        single = not isinstance(self.where(self.model), (tuple, list))
        return eqx.tree_at(self.where, self.model, theta[0] if single else theta)

    def trajectory(self, control: JointControl) -> PyTree[Array]:
        """States x_0 … x_N of the window under the controlled parameters, stacked along time."""
        return rollout(self.model_at(control), self.initial_state(control), self.n_steps, self.t0, self.checkpointing)

    def departures(self, control: JointControl) -> tuple[Float[Array, "time obs"], ...]:
        """Normalised departures R^{-1/2}(y − H(M_θ(x0))) of every observation set."""
        traj = self.trajectory(control)
        return tuple(o.normalised_departures(traj) for o in self.observations)


class ParameterPosterior(eqx.Module):
    """Gauss-Newton (Laplace) posterior of the parameters at an analysis: values, standard deviations, covariances.

    `covariance` and `control_covariance` are over the flattened parameter components (fields
    concatenated in `where` order); `std` has one array per selected field.
    """

    value: tuple[Float[Array, "..."], ...]
    std: tuple[Float[Array, "..."], ...]
    covariance: Float[Array, "k k"]
    control_covariance: Float[Array, "k k"]
    cg_iterations: Int[Array, " k"]
    state_covariance: PyTree[Array]  # [H⁻¹]_vp: cov(v, p_i) in control space, stacked on a leading k axis
    precision_block: Float[Array, "k k"]  # H_pp, the parameter block of H itself (k Hessian-vector products)


MAX_POSTERIOR_PARAMETERS = 64


def parameter_posterior(
    problem: ParameterControl4DVar,
    control: JointControl,
    solver: lx.AbstractLinearSolver = lx.CG(rtol=1e-10, atol=1e-10, max_steps=500),
) -> ParameterPosterior:
    """Posterior of the parameters at `control`: the parameter block of H⁻¹ (H = J_rᵀJ_r), one CG solve per component.

    Matrix-free: H z = e_i is solved for each of the k parameter components in the full
    control space (state and parameters), so the state–parameter correlations are accounted
    for. θ's covariance is D [H⁻¹]_pp D with D = dθ/dp (the delta method for log-normal priors).
    """
    if not isinstance(problem, ParameterControl4DVar):
        raise InputError("parameter_posterior needs a ParameterControl4DVar problem.")
    if problem.n_parameters > MAX_POSTERIOR_PARAMETERS:
        raise InputError(
            f"the problem controls {problem.n_parameters} parameter components; parameter_posterior solves one CG "
            f"system per component and is meant for a few scalars (≤ {MAX_POSTERIOR_PARAMETERS}). "
            "Control fewer components, or estimate the posterior by randomised methods."
        )
    return _posterior(problem, control, solver)


@eqx.filter_jit
def _posterior(problem: ParameterControl4DVar, control: JointControl, solver) -> ParameterPosterior:
    problem = problem.prepared()
    _, jvp = jax.linearize(problem.residual, control)
    vjp = jax.linear_transpose(jvp, control)

    def hessian(d):
        return vjp(jvp(d))[0]

    operator = lx.FunctionLinearOperator(
        hessian, jax.eval_shape(lambda: control), tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
    )
    sizes = [int(np.prod(pr.shape, dtype=int)) for pr in problem.priors]
    k = sum(sizes)
    splits = np.cumsum(sizes)[:-1]

    def unit(i):
        flat = jnp.zeros(k).at[i].set(1.0)
        parts = jnp.split(flat, splits)
        p = tuple(part.reshape(pr.shape) for part, pr in zip(parts, problem.priors))
        return JointControl(jax.tree_util.tree_map(jnp.zeros_like, control.v), p)

    def flat_p(c):
        return jnp.concatenate([x.reshape(-1) for x in c.p])

    def solve(i):
        sol = lx.linear_solve(operator, unit(i), solver=solver, throw=False)
        return flat_p(sol.value), sol.value.v, jnp.asarray(sol.stats.get("num_steps", 0))

    # lax.map, not vmap: under vmap a solve that has converged exactly (a parameter the data do not see, H e_i = e_i)
    # keeps iterating beside the others, its CG step turns 0/0 and the model's NaN guard fires
    block, cross, iterations = jax.lax.map(solve, jnp.arange(k))
    precision = jax.vmap(lambda i: flat_p(hessian(unit(i))))(jnp.arange(k))
    block = 0.5 * (block + block.T)  # symmetric up to the CG tolerance
    theta = problem.parameters(control)
    # dθ/dp: the priors' transforms are elementwise, so one forward-mode pass gives the diagonal
    _, slope = jax.jvp(problem.parameters, (control,), (JointControl(
        jax.tree_util.tree_map(jnp.zeros_like, control.v), tuple(jnp.ones(pr.shape) for pr in problem.priors)
    ),))  # fmt: skip
    d = jnp.concatenate([s.reshape(-1) for s in slope])
    cov = d[:, None] * block * d[None, :]
    var = jnp.split(jnp.diag(cov), splits)
    std = tuple(jnp.sqrt(v).reshape(pr.shape) for v, pr in zip(var, problem.priors))
    return ParameterPosterior(value=theta, std=std, covariance=cov, control_covariance=block, cg_iterations=iterations,
                              state_covariance=cross, precision_block=0.5 * (precision + precision.T))  # fmt: skip
