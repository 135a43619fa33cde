"""4D-Var cost and Gauss-Newton: cost and gradient Taylor tests, exact BLUE on a linear model, nonlinear convergence,
non-convergence reporting, masking invariance, vmap over windows, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from assim.covariances.covariance import DiagonalCovariance, SpectralGaussianCovariance
from assim.covariances.diffusion import DiffusionCovariance
from assim.errors import (
    ConvergenceError,
    GridMismatchError,
    InputError,
    ObservationError,
)
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import GriddedObservation, StationObservation
from assim.problems.cost import StrongConstraint4DVar
from assim.solvers.gauss_newton import (
    MAX_OUTER,
    NONFINITE,
    Affine,
    EisenstatWalker,
    GaussNewton,
    LevenbergMarquardt,
)
from assim.solvers.inner_model import InnerModel
from models import CartesianGrid, Neumann, Periodic
from models.base import AbstractModel
from models.diffusion import Diffusion
from models.operators import diffusion, gradient
from models.rollout import rollout
from models.verification import taylor_orders, taylor_remainders, tree_norm

TIGHT = lx.CG(rtol=1e-14, atol=1e-14, max_steps=200)
EPSILONS = 0.1 * 2.0 ** -np.arange(0, 14, 1.5)  # ε from 0.1 down to ~4e-5: 3.4 decades


class ToyBurgers(AbstractModel):
    """Test-only nonlinear model: explicit viscous Burgers step u + Δt(ν∇²u − u ∂u/∂x) on any 1-D grid."""

    grid: CartesianGrid = eqx.field(static=True)
    nu: float
    dt: float = eqx.field(static=True)

    def step(self, u, t=0.0):
        return u + self.dt * (diffusion(self.grid, u, self.nu) - u * gradient(self.grid, u)[0])

    def state_shape(self):
        return jax.ShapeDtypeStruct(self.grid.shape, jnp.float64)


LINE = CartesianGrid((16,), (1.0,), Neumann())
TOY = ToyBurgers(grid=LINE, nu=0.02, dt=0.01)
TOY_STEPS = (10, 20)
X = LINE.coords()["x"]
TOY_TRUTH = jnp.asarray(np.sin(2 * np.pi * X) + 0.5)
TOY_BACKGROUND = jnp.asarray(0.5 + 0.3 * np.cos(np.pi * X))
TOY_B = DiffusionCovariance(LINE, 1.0, 0.15, 4, solver=TIGHT)
DIAGONAL_B = DiagonalCovariance(LINE, 1.0)  # cheaper to compile: for the tests of the solver's logic
TOY_H = GriddedObservation(LINE, np.arange(0, 16, 2))
LM = GaussNewton(damping=LevenbergMarquardt(), max_outer=20, cg_max_steps=40, cg_tol=1e-11, gtol=1e-7)
COST = eqx.filter_jit(lambda problem, v: problem.cost(v))
GRAD = eqx.filter_jit(lambda problem, v: jax.grad(problem.cost)(v))


def toy_observations(truth, noise_seed=0):
    traj = rollout(TOY, truth, max(TOY_STEPS))
    clean = jnp.stack([TOY_H.apply(traj[s]) for s in TOY_STEPS])
    return clean + 0.02 * jax.random.normal(jax.random.PRNGKey(noise_seed), clean.shape)


def toy_problem(background=TOY_BACKGROUND, values=None, cov=TOY_B):
    obs = ObservationSet(TOY_H, TOY_STEPS, toy_observations(TOY_TRUTH) if values is None else values, 0.02)
    return StrongConstraint4DVar(TOY, background, cov, obs)


@pytest.fixture(scope="module")
def toy():
    return toy_problem().prepared()


@pytest.fixture(scope="module")
def toy_result(toy):
    return LM.solve(toy)


def test_cost_gradient_taylor_test(toy):
    """|J(v+εδ) − J(v) − ε⟨∇J(v), δ⟩| falls as ε², with ∇J from the adjoint (reverse mode)."""
    v = 0.3 * jax.random.normal(jax.random.PRNGKey(1), LINE.shape)
    dv = jax.random.normal(jax.random.PRNGKey(2), LINE.shape)
    j0, slope = COST(toy, v), float(jnp.vdot(GRAD(toy, v), dv))
    remainders = np.array([abs(float(COST(toy, v + e * dv) - j0) - e * slope) for e in EPSILONS])
    np.testing.assert_allclose(taylor_orders(remainders, EPSILONS), 2.0, atol=0.2)


def test_gradient_map_taylor_test(toy):
    """The gradient map v ↦ ∇J(v) is smooth too: its Taylor remainder is O(ε²) (the residual map's Taylor and
    adjoint tests run over tests/registry.py)."""
    v = 0.3 * jax.random.normal(jax.random.PRNGKey(3), LINE.shape)
    dv = jax.random.normal(jax.random.PRNGKey(4), LINE.shape)
    grad = lambda x: GRAD(toy, x)  # noqa: E731
    np.testing.assert_allclose(taylor_orders(taylor_remainders(grad, v, dv, EPSILONS), EPSILONS), 2.0, atol=0.2)


def test_gauss_newton_converges_on_a_nonlinear_model(toy, toy_result):
    d = toy_result.diagnostics
    n = int(d.n_outer)
    assert bool(toy_result.converged), toy_result.message()
    assert 2 <= n < LM.max_outer  # nonlinear: more than one outer iteration, fewer than the budget
    costs = np.asarray(d.cost[: n + 1])
    assert np.all(np.diff(costs) <= 1e-12 * costs[0])  # monotone (rejected LM steps keep the cost)
    assert costs[-1] < 1e-2 * costs[0]
    assert float(d.gradient_norm[n]) <= LM.gtol * float(d.gradient_norm[0])
    np.testing.assert_allclose(d.cost[: n + 1], d.cost_background[: n + 1] + d.cost_observation[: n + 1], rtol=1e-12)
    assert np.all(np.isnan(np.asarray(d.cost[n + 1 :])))
    # the analysis is a stationary point of J, and fits the truth better than the background
    assert float(tree_norm(GRAD(toy, toy_result.v))) <= LM.gtol * float(d.gradient_norm[0])
    assert float(jnp.linalg.norm(toy_result.x0 - TOY_TRUTH)) < 0.3 * float(jnp.linalg.norm(TOY_BACKGROUND - TOY_TRUTH))
    # model-run counts: one forward per linearisation (the trial's, reused once accepted; a rejected trial costs a
    # second one at v), one adjoint per gradient, exactly one TL + one adjoint per CG step (none for δ₀ = 0, none
    # for the predicted reduction)
    cg = int(jnp.sum(d.cg_iterations))
    rejected = int(np.sum(~np.asarray(d.accepted[1 : n + 1])))
    assert 0 < rejected < n  # the run exercises both branches of the gain-ratio test
    # gradients: at v_0, at each accepted trial, and at v again after each rejected one (the run ends accepted)
    assert int(d.adjoint_evaluations[n]) == cg + n + 1
    assert int(d.tangent_linear_evaluations[n]) == cg
    assert int(d.forward_evaluations[n]) == 1 + n + rejected


class CountingToyBurgers(ToyBurgers):
    """ToyBurgers that counts its nonlinear steps on the host (tangent-linear and adjoint runs do not call back)."""

    counter: list = eqx.field(static=True)

    def step(self, u, t=0.0):
        jax.debug.callback(lambda _: self.counter.append(1), u)
        return super().step(u, t)


def test_accepted_levenberg_marquardt_steps_reuse_the_trial_linearisation():
    """An accepted step costs one nonlinear model run (its trial's linearisation), counted by a host callback."""
    counter = []
    model = CountingToyBurgers(grid=LINE, nu=0.02, dt=0.01, counter=counter)
    obs = ObservationSet(TOY_H, TOY_STEPS, toy_observations(TOY_TRUTH), 0.02)
    problem = StrongConstraint4DVar(model, TOY_BACKGROUND, DIAGONAL_B, obs)
    result = LM.solve(problem)
    jax.effects_barrier()
    d = result.diagnostics
    n = int(d.n_outer)
    accepted = np.asarray(d.accepted[1 : n + 1])
    assert bool(result.converged), result.message()
    assert accepted.sum() >= 3 and not accepted.all()  # both branches of the gain-ratio test
    runs = len(counter) / max(TOY_STEPS)  # nonlinear window runs actually executed
    assert runs == int(d.forward_evaluations[n]) == 1 + n + int(np.sum(~accepted))
    forward = np.asarray(d.forward_evaluations[: n + 1])
    # each outer iteration runs the model once, at its trial point; only after a rejected trial is v run again
    after_rejection = ~np.concatenate([[True], accepted[:-1]])
    np.testing.assert_array_equal(np.diff(forward), 1 + after_rejection)


def test_inner_model_changes_the_path_not_the_analysis(toy, toy_result):
    """An inner-loop model with 1% more viscosity reaches the analysis of the exact one (the gradient is the
    problem's own); solving the problem with that model instead lands elsewhere."""
    other = ToyBurgers(grid=LINE, nu=0.0202, dt=0.01)
    result = eqx.tree_at(lambda s: s.inner_model, LM, InnerModel(other)).solve(toy)
    d, n = result.diagnostics, int(result.diagnostics.n_outer)
    assert bool(result.converged), result.message()
    m = int(toy_result.diagnostics.n_outer)  # the inner loops ran the other model: another path
    assert n != m or not np.allclose(d.cost[: n + 1], toy_result.diagnostics.cost[: m + 1], rtol=1e-6)
    # a stationary point of the problem's cost, like the exact-model analysis (to the gradient tolerance) ...
    g0 = float(d.gradient_norm[0])
    assert float(tree_norm(GRAD(toy, result.v))) <= LM.gtol * g0
    np.testing.assert_allclose(result.v, toy_result.v, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(toy_result.v))))
    assert float(COST(toy, result.v)) == pytest.approx(float(COST(toy, toy_result.v)), rel=1e-9)
    # ... which the analysis of the problem posed with the inner model is not
    wrong = LM.solve(eqx.tree_at(lambda q: q.model, toy, other))
    assert float(tree_norm(GRAD(toy, wrong.v))) > 1e3 * LM.gtol * g0
    # every inner loop costs one run of the inner model, counted as a forward run
    inner_loops = int(np.sum(np.asarray(d.cg_iterations[1 : n + 1]) > 0))
    rejected = int(np.sum(~np.asarray(d.accepted[1 : n + 1])))
    assert int(d.forward_evaluations[n]) == 1 + n + rejected + inner_loops


def test_inner_model_that_is_the_problem_model_gives_the_same_iterates(toy):
    kw = dict(max_outer=4, cg_max_steps=3, cg_tol=0.0, gtol=0.0, ftol=0.0, damping=LevenbergMarquardt())
    plain = GaussNewton(**kw).solve(toy)
    same = GaussNewton(**kw, inner_model=InnerModel(TOY)).solve(toy)
    np.testing.assert_allclose(same.v, plain.v, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(same.diagnostics.cost, plain.diagnostics.cost, rtol=1e-12)


def test_inner_model_bad_input():
    with pytest.raises(InputError, match="Affine"):
        GaussNewton(linearity=Affine(), inner_model=InnerModel(TOY))
    with pytest.raises(InputError, match="AbstractModel"):
        InnerModel(object())
    problem = toy_problem(cov=DIAGONAL_B)
    coarse = ToyBurgers(grid=CartesianGrid((8,), (1.0,), Neumann()), nu=0.02, dt=0.01)
    with pytest.raises(GridMismatchError, match="same grid"):
        GaussNewton(inner_model=InnerModel(coarse)).solve(problem)
    with pytest.raises(InputError, match="dt"):
        GaussNewton(inner_model=InnerModel(ToyBurgers(grid=LINE, nu=0.02, dt=0.02))).solve(problem)
    three_dvar = StrongConstraint4DVar(
        None, TOY_BACKGROUND, DIAGONAL_B, ObservationSet(TOY_H, (0,), jnp.zeros((1, 8)), 0.1)
    )
    with pytest.raises(InputError, match="3D-Var"):
        GaussNewton(inner_model=InnerModel(TOY)).solve(three_dvar)


def test_eisenstat_walker_forcing_terms():
    ew = EisenstatWalker(initial=0.1, gamma=0.9, exponent=2.0, maximum=0.5)

    def eta(gnorm, gnorm_prev, eta_prev, first=False, floor=1e-8):
        return float(ew.tolerance(floor, jnp.asarray(first), jnp.asarray(gnorm), jnp.asarray(gnorm_prev), eta_prev))

    assert eta(5.0, 0.0, 0.0, first=True) == 0.1
    np.testing.assert_allclose(eta(1.0, 10.0, 0.1), 0.9 * 0.1**2)  # γ (‖g_k‖/‖g_k−1‖)^α
    assert eta(0.95, 1.0, 0.1) == 0.5  # slow progress: capped
    assert eta(1.0, 1.0, 0.03) == 0.03  # same iterate after a rejected trial: η kept
    np.testing.assert_allclose(eta(1.0, 10.0, 0.5), 0.9 * 0.5**2)  # safeguard γ η_k−1^α > 0.1 is a lower bound
    assert eta(1e-6, 1.0, 0.01, floor=1e-4) == 1e-4  # cg_tol is the floor
    with pytest.raises(InputError, match="EisenstatWalker"):
        EisenstatWalker(initial=0.9, maximum=0.5)


def test_forcing_terms_reach_the_same_analysis_with_looser_early_solves(toy, toy_result):
    solver = GaussNewton(damping=LevenbergMarquardt(), max_outer=20, cg_max_steps=40, cg_tol=1e-11, gtol=1e-7,
                         forcing=EisenstatWalker())  # fmt: skip
    result = solver.solve(toy)
    assert bool(result.converged), result.message()
    # the same stationary point, to the precision gtol = 1e-7 leaves (cost to 1e-9, state to 1e-4)
    n, m = int(result.diagnostics.n_outer), int(toy_result.diagnostics.n_outer)
    np.testing.assert_allclose(result.diagnostics.cost[n], toy_result.diagnostics.cost[m], rtol=1e-9)
    np.testing.assert_allclose(result.x0, toy_result.x0, rtol=0, atol=1e-4 * float(jnp.abs(toy_result.x0).max()))
    assert int(result.diagnostics.cg_iterations[1]) < int(toy_result.diagnostics.cg_iterations[1])


def test_non_converging_settings_say_so():
    toy = toy_problem(cov=DIAGONAL_B)
    # plain Gauss-Newton overshoots on this problem: the trajectory blows up, and the run says so
    diverged = GaussNewton(max_outer=1).solve(toy)
    assert not bool(diverged.converged) and int(diverged.reason) == NONFINITE
    assert "non-finite" in diverged.message()
    # a budget too small for tight tolerances
    solver = GaussNewton(damping=LevenbergMarquardt(), max_outer=1, gtol=1e-14, ftol=0.0)
    result = solver.solve(toy)
    assert not bool(result.converged)
    assert int(result.reason) == MAX_OUTER and "max_outer" in result.message()
    assert int(result.diagnostics.n_outer) == 1
    with pytest.raises(ConvergenceError, match="raise max_outer"):
        result.check()
    with pytest.raises(ConvergenceError, match="not converged"):
        solver.solve(toy, throw=True)


def test_masked_observations_change_only_the_counts():
    values = np.asarray(toy_observations(jnp.asarray(0.5 * np.sin(2 * np.pi * X) + 0.5)))
    errors = np.full(values.shape, 0.02)
    bad_values = values.copy()
    bad_values[0, 1], bad_values[1, 4] = np.nan, np.inf
    errors[1, 0], errors[0, 6] = -1.0, 0.0
    polluted = ObservationSet(TOY_H, TOY_STEPS, bad_values, errors)
    assert polluted.report.as_dict() == {
        "n_total": 16, "n_valid": 12, "n_outside": 0, "n_nonfinite": 2, "n_bad_error": 2, "n_masked": 0,
    }  # fmt: skip
    # stations beyond the walls are masked and counted too
    outside = ObservationSet(StationObservation(LINE, [[-0.3], [0.51], [1.2]]), (20,), [[1.0, 0.7, 2.0]], 0.02)
    assert outside.report.as_dict()["n_outside"] == 2 and outside.report.as_dict()["n_valid"] == 1
    # the same data with every bad observation removed
    keep = np.isfinite(bad_values) & (errors > 0)
    clean = tuple(
        ObservationSet(StationObservation(LINE, np.c_[X[::2][keep[t]]]), (s,), bad_values[t][keep[t]][None], 0.02)
        for t, s in enumerate(TOY_STEPS)
    ) + (ObservationSet(StationObservation(LINE, [[0.51]]), (20,), [[0.7]], 0.02),)
    a = LM.solve(StrongConstraint4DVar(TOY, TOY_BACKGROUND, DIAGONAL_B, (polluted, outside)))
    b = LM.solve(StrongConstraint4DVar(TOY, TOY_BACKGROUND, DIAGONAL_B, clean))
    assert bool(a.converged) and bool(b.converged)
    np.testing.assert_allclose(a.x0, b.x0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.diagnostics.cost, b.diagnostics.cost, rtol=1e-10)


def test_vmap_over_windows_matches_separate_solves():
    backgrounds = [TOY_BACKGROUND, TOY_BACKGROUND + 0.2 * jnp.asarray(np.sin(3 * X))]
    values = [toy_observations(TOY_TRUTH), toy_observations(0.5 * TOY_TRUTH + 0.25, noise_seed=1)]
    problems = [toy_problem(b, y, cov=DIAGONAL_B) for b, y in zip(backgrounds, values)]
    batched = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *problems)
    results = eqx.filter_vmap(LM.solve)(batched)
    for i, problem in enumerate(problems):
        single = LM.solve(problem)
        np.testing.assert_allclose(results.x0[i], single.x0, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(results.diagnostics.n_outer[i], single.diagnostics.n_outer)
    np.testing.assert_array_equal(results.converged, [True, True])
    assert int(results.diagnostics.n_outer[0]) != int(results.diagnostics.n_outer[1])  # windows stop independently


def dense(f, n):
    """Matrix of a linear map on flat vectors (tiny problems, tests only)."""
    return np.asarray(jax.vmap(f)(jnp.eye(n)).T)


def linear_window():
    """A diffusion window (linear model) observed at grid points and stations: (grid, model, B, x_b, obs, problem)."""
    grid = CartesianGrid((8, 8), (1.0, 1.0), Periodic())
    model = Diffusion(grid, 0.02, 0.05, solver=TIGHT)
    rng = np.random.default_rng(0)
    variance = 0.5 + rng.uniform(size=grid.shape)
    cov = SpectralGaussianCovariance(grid, variance, 0.15)
    background = jnp.asarray(rng.standard_normal(grid.shape))
    gridded = GriddedObservation(grid, rng.choice(grid.size, 20, replace=False))
    stations = StationObservation(grid, rng.uniform(0, 1, size=(10, 2)))
    sets = (
        ObservationSet(gridded, (1,), rng.standard_normal((1, 20)), 0.1),
        ObservationSet(stations, (2, 3), rng.standard_normal((2, 10)), rng.uniform(0.1, 0.3, (2, 10))),
    )
    return grid, model, cov, background, sets, StrongConstraint4DVar(model, background, cov, sets)


def test_affine_linearity_matches_relinearising_without_model_runs():
    """`Affine()`: the iterates of plain Gauss-Newton; later costs and gradients exact, from no model run."""
    problem = linear_window()[-1]
    kw = dict(max_outer=6, cg_max_steps=3, cg_tol=0.0, gtol=0.0, ftol=0.0)  # truncated CG: several outer iterations
    plain = GaussNewton(**kw).solve(problem)
    once = GaussNewton(**kw, linearity=Affine()).solve(problem)
    np.testing.assert_allclose(once.v, plain.v, rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(plain.v))))
    p, a = plain.diagnostics, once.diagnostics
    for field in ("cost", "cost_background", "cost_observation", "gradient_norm"):
        np.testing.assert_allclose(getattr(a, field), getattr(p, field), rtol=1e-9)
    assert float(a.cost[6]) == pytest.approx(float(problem.cost(once.v)), rel=1e-12)
    np.testing.assert_array_equal(a.tangent_linear_evaluations, p.tangent_linear_evaluations)
    assert int(a.forward_evaluations[6]) == 1 and int(p.forward_evaluations[6]) == 7
    assert int(a.adjoint_evaluations[6]) == 1 + 18 and int(p.adjoint_evaluations[6]) == 7 + 18
    with pytest.raises(InputError):
        GaussNewton(damping=LevenbergMarquardt(), linearity=Affine())


def test_gauss_newton_reaches_the_blue_on_a_linear_model():
    grid, model, cov, background, sets, problem = linear_window()
    result = GaussNewton(cg_max_steps=64, cg_tol=1e-13, gtol=1e-9, save_trajectory=True).solve(problem)
    assert bool(result.converged) and int(result.diagnostics.n_outer) == 1
    assert result.trajectory.shape == (4,) + grid.shape
    np.testing.assert_allclose(result.trajectory[0], result.x0)

    # closed-form BLUE x_a = x_b + B Gᵀ (G B Gᵀ + R)⁻¹ (y − G x_b), G = H∘M stacked over all obs times
    n = grid.size

    def g(x):
        traj = rollout(model, x.reshape(grid.shape), 3)
        return jnp.concatenate([o.predict(traj).reshape(-1) for o in sets])

    gmat = dense(g, n)
    s = dense(lambda v: cov.sqrt(v.reshape(grid.shape)).reshape(-1), n)
    b = s @ s.T
    y = np.concatenate([np.asarray(o.values).reshape(-1) for o in sets])
    r = np.diag(np.concatenate([np.asarray(o.error.sigma).reshape(-1) for o in sets]) ** 2)
    xb = np.asarray(background).reshape(-1)
    xa = xb + b @ gmat.T @ np.linalg.solve(gmat @ b @ gmat.T + r, y - gmat @ xb)
    np.testing.assert_allclose(np.asarray(result.x0).reshape(-1), xa, rtol=0, atol=1e-8 * np.abs(xa).max())
    # the reported gradient at the analysis vanishes to CG accuracy
    assert float(result.diagnostics.gradient_norm[1]) <= 1e-9 * float(result.diagnostics.gradient_norm[0])


def test_three_dvar_is_the_zero_length_window():
    grid = CartesianGrid((6, 6), (1.0, 1.0), Neumann())
    rng = np.random.default_rng(1)
    cov = DiagonalCovariance(grid, 2.0)
    op = StationObservation(grid, rng.uniform(0, 1, size=(8, 2)))
    obs = ObservationSet(op, (0,), rng.standard_normal((1, 8)), 0.5)
    result = GaussNewton().solve(StrongConstraint4DVar(None, jnp.zeros(grid.shape), cov, obs))
    h = dense(lambda x: op.apply(x.reshape(grid.shape)), grid.size)
    xa = 2.0 * h.T @ np.linalg.solve(2.0 * h @ h.T + 0.25 * np.eye(8), np.asarray(obs.values[0]))
    np.testing.assert_allclose(np.asarray(result.x0).reshape(-1), xa, atol=1e-9)
    assert bool(result.converged) and int(result.diagnostics.n_outer) == 1


def test_problems_built_on_the_wrong_grid_raise():
    other = CartesianGrid((12,), (1.0,), Neumann())
    obs = ObservationSet(GriddedObservation(other, [0, 3]), (2,), [[1.0, 2.0]], 0.1)
    with pytest.raises(GridMismatchError, match="rebuild the observation operator on the model's grid"):
        StrongConstraint4DVar(TOY, TOY_BACKGROUND, TOY_B, obs)
    late = ObservationSet(TOY_H, (30,), np.zeros((1, 8)), 0.1)
    with pytest.raises(ObservationError, match="after the end of the 25-step window"):
        StrongConstraint4DVar(TOY, TOY_BACKGROUND, TOY_B, late, n_steps=25)
    with pytest.raises(ObservationError, match="only 3D-Var"):
        StrongConstraint4DVar(None, TOY_BACKGROUND, TOY_B, late)
