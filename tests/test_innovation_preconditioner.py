"""`InnovationSpectral`: the Hessian's symbol from the background gradient's power spectrum (consistent B and R),
fewer CG iterations with no Hessian application spent on it, and the same Gauss-Newton analysis."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from l96_window import N, window

from assim.covariances.covariance import SpectralGaussianCovariance
from assim.errors import InputError
from assim.learned.preconditioner import SpectralScaling, _radial_wavenumber
from assim.observations.operators import GriddedObservation
from assim.problems.cost import StrongConstraint4DVar
from assim.problems.twin import ObservationNetwork, twin_experiment
from assim.solvers.gauss_newton import (
    Affine,
    GaussNewton,
    LevenbergMarquardt,
    NoDamping,
)
from assim.solvers.innovation_preconditioner import InnovationSpectral
from assim.solvers.krylov import ZeroStartCG
from assim.solvers.limited_memory_preconditioner import LimitedMemory
from assim.solvers.preconditioner import AbstractInnerPreconditioner
from models import CartesianGrid, Periodic
from models.advection_diffusion import IMEX, AdvectionDiffusion

SHAPE = (64, 64)
NODES = SpectralScaling(SHAPE, 6).nodes()
MOMENT = np.array([1600.0, 120.0, 8.0, 0.5, 0.05, 0.0])  # s(1 + s) at the nodes: linear in between


def _observation_symbol():
    """s(|k|) of a stationary observation term GᵀG whose s(1 + s) is piecewise linear between the nodes."""
    q = np.interp(_radial_wavenumber(SHAPE), NODES, MOMENT)
    return 0.5 * (np.sqrt(1.0 + 4.0 * q) - 1.0)


def _background_gradients(count: int):
    """`count` draws of Gᵀd with d ~ N(0, I + GGᵀ) (consistent B and R), G = F⁻¹ diag(√s) F."""
    s = jnp.asarray(_observation_symbol())
    xi = jax.random.normal(jax.random.PRNGKey(0), (count, *SHAPE))
    return jnp.fft.irfftn(jnp.fft.rfftn(xi, axes=(1, 2)) * jnp.sqrt(s * (1.0 + s)), s=SHAPE, axes=(1, 2))


def test_symbol_from_consistent_innovations():
    """s(1 + s) linear between the nodes is recovered to sampling error (8 fields as leading axis, or as leaves)."""
    expected = 1.0 + 0.5 * (np.sqrt(1.0 + 4.0 * MOMENT) - 1.0)
    pre = InnovationSpectral(SHAPE, 6, 1.0)
    g = _background_gradients(8)
    fit = np.asarray(pre.symbol(g))
    np.testing.assert_allclose(fit, expected, rtol=0.05)
    np.testing.assert_allclose(pre.symbol(list(g)), fit, rtol=1e-12)  # the same fields as separate leaves
    np.testing.assert_allclose(pre.symbol(jnp.zeros(SHAPE)), 1.0)  # no innovation signal: P = I
    np.testing.assert_allclose(jnp.exp(pre.scaling(g, 0.5).log_gain), 1.0 / (fit + 0.5), rtol=1e-12)  # damping μ
    with pytest.raises(InputError):
        pre.symbol(jnp.zeros((32, 32)))
    with pytest.raises(InputError):
        pre.build(lambda x: x, jnp.zeros(SHAPE))  # no background gradient given
    with pytest.raises(InputError):
        InnovationSpectral((4,), 8, 1.0)  # bins with no wavenumber


def test_cuts_cg_iterations_on_a_stationary_hessian():
    s = jnp.asarray(_observation_symbol())
    hessian = lambda x: jnp.fft.irfftn(jnp.fft.rfftn(x) * (1.0 + s), s=SHAPE)  # noqa: E731
    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
    op = lx.FunctionLinearOperator(hessian, jax.ShapeDtypeStruct(SHAPE, jnp.float64), tags=tags)
    b = _background_gradients(1)[0]
    exact = jnp.fft.irfftn(jnp.fft.rfftn(b) / (1.0 + s), s=SHAPE)
    cg = ZeroStartCG(atol=1e-8, max_steps=500)
    plain = lx.linear_solve(op, b, cg)
    pre = InnovationSpectral(SHAPE, 6, 1.0).build(hessian, b, background_gradient=b)
    preconditioned = lx.linear_solve(op, b, cg, options={"preconditioner": pre})
    for sol in (plain, preconditioned):
        np.testing.assert_allclose(sol.value, exact, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(exact))))
    assert int(preconditioned.stats["num_steps"]) <= 0.5 * int(plain.stats["num_steps"])


def _advection_diffusion_window(n: int = 32, n_steps: int = 4):
    """A linear periodic 4D-Var twin (B and R consistent with its innovations): 20% of cells observed at 2 times."""
    grid = CartesianGrid((n, n), (1.0, 1.0), Periodic())
    h = 1.0 / n
    wind = (0.5 * jnp.ones((n, n)), jnp.ones((n, n)))
    model = AdvectionDiffusion(grid, wind, h**2 / (0.5 * h), 0.5 * h, IMEX())
    cov = SpectralGaussianCovariance(grid, 0.2**2, 0.1)
    truth = SpectralGaussianCovariance(grid, 1.0, 0.15).sqrt(jax.random.normal(jax.random.PRNGKey(1), grid.shape))
    cells = np.sort(np.random.default_rng(2).choice(grid.size, grid.size // 5, replace=False))
    net = ObservationNetwork(GriddedObservation(grid, cells), (2, n_steps), 0.1)
    twin = twin_experiment(jax.random.PRNGKey(3), model, truth, n_steps, net, cov)
    return StrongConstraint4DVar(model, twin.background, cov, twin.observations, n_steps=n_steps)


def test_gauss_newton_same_analysis_fewer_cg_no_probes():
    """Affine GN reaches the plain-CG analysis with at most half the CG iterations; every TL run is a CG step."""
    problem = _advection_diffusion_window()
    kw = dict(damping=NoDamping(), linearity=Affine(), max_outer=3, cg_max_steps=400, cg_tol=1e-9, gtol=1e-8)
    plain = GaussNewton(**kw).solve(problem)
    fast = GaussNewton(**kw, preconditioner=InnovationSpectral((32, 32), 8)).solve(problem)
    reused = GaussNewton(**kw, preconditioner=LimitedMemory(InnovationSpectral((32, 32), 8), 4)).solve(problem)
    scale = float(jnp.max(jnp.abs(plain.v)))
    for result in (fast, reused):
        assert bool(result.converged)
        np.testing.assert_allclose(result.v, plain.v, rtol=0, atol=1e-6 * scale)
        d = result.diagnostics
        k = int(d.n_outer)
        assert int(d.tangent_linear_evaluations[k]) == int(jnp.sum(d.cg_iterations))  # no probe runs
    first = lambda r: int(r.diagnostics.cg_iterations[1])  # noqa: E731
    assert first(fast) <= 0.5 * first(plain), (first(fast), first(plain))


class _Calls:
    def __init__(self):
        self.items = []


class _Recorder(AbstractInnerPreconditioner):
    """Plain CG that records the background gradient and damping Gauss-Newton hands to every inner loop."""

    log: _Calls
    n_probes: int = eqx.field(static=True)

    def uses_background_gradient(self) -> bool:
        return True

    def build(self, hessian, like, pairs=None, *, background_gradient=None, damping=0.0):
        jax.debug.callback(
            lambda g, mu: self.log.items.append((np.asarray(g), float(mu))), background_gradient, damping
        )
        return None


def test_gauss_newton_keeps_the_first_iterates_observation_gradient():
    """Levenberg-Marquardt from v_0 ≠ 0: every inner loop gets ∇J(v_0) − v_0 (not the current gradient) and its μ."""
    problem = window()[0].prepared()
    v0 = 0.3 * jax.random.normal(jax.random.PRNGKey(7), (N,))
    recorder = _Recorder(log=_Calls(), n_probes=0)
    kw = dict(damping=LevenbergMarquardt(), max_outer=6, cg_max_steps=20, cg_tol=1e-8, gtol=1e-10, ftol=1e-14)
    result = GaussNewton(**kw, preconditioner=recorder).solve(problem, v0)
    jax.effects_barrier()
    expected = jax.grad(problem.cost)(v0) - v0
    assert len(recorder.log.items) >= 3
    for g, _ in recorder.log.items:
        np.testing.assert_allclose(g, expected, rtol=1e-10, atol=1e-12)
    mus = [mu for _, mu in recorder.log.items]
    assert mus[0] == pytest.approx(LevenbergMarquardt().initial) and len(set(mus)) > 1  # μ adapts and is passed on
    d = result.diagnostics
    np.testing.assert_allclose(
        sorted(set(mus)), sorted(set(np.asarray(d.damping[: int(d.n_outer)]).tolist())), rtol=1e-12
    )
