"""Forward-model benchmark: step time, gradient/forward ratio, solver iterations, gradient memory, peers.

Run: python benchmarks/models.py [--sizes 64 128 256] [--quick]
Writes benchmarks/results/models.json (DESIGN.md convention). Peers, in the same process:
diffrax's default implicit Euler (dense root-finder Jacobian) and a SciPy sparse-CG step
with single-threaded BLAS, on the same backward-Euler diffusion problem: unpreconditioned, and with
assim's FFT preconditioner as a scipy LinearOperator (so the ratio measures the implementation).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# This file is named like the `models` package: import from the repository root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

import models  # noqa: E402,F401
from benchmarks.common import best_time, target, write_results  # noqa: E402
from models import CartesianGrid, Periodic  # noqa: E402
from models.diffusion import Diffusion  # noqa: E402
from models.operators import diffusion  # noqa: E402
from models.rollout import NestedCheckpointing, NoCheckpointing, integrate  # noqa: E402

KAPPA_DT_OVER_DX2 = 13.0  # the stiffness measured in DESIGN.md's pitfalls (κΔt/Δx² ≈ 13)
GRAD_STEPS = 20


def smooth_field(grid, seed, lo, hi):
    """A smooth random field in [lo, hi] (a few low Fourier modes)."""
    rng = np.random.default_rng(seed)
    coords = np.meshgrid(*grid.coords().values(), indexing="ij")
    field = np.zeros(grid.shape)
    for _ in range(4):
        k = rng.integers(1, 4, size=len(coords))
        phase = rng.uniform(0, 2 * np.pi)
        field += np.cos(sum(2 * np.pi * ki * c / L for ki, c, L in zip(k, coords, grid.lengths)) + phase)
    field = (field - field.min()) / (field.max() - field.min())
    return jnp.asarray(lo + (hi - lo) * field)


def make_diffusion(n):
    grid = CartesianGrid((n, n), (1.0, 1.0), Periodic())
    kappa = smooth_field(grid, 0, 0.5, 1.5)
    dt = KAPPA_DT_OVER_DX2 / n**2
    state = jax.random.normal(jax.random.PRNGKey(1), grid.shape)  # white noise: every mode present
    return Diffusion(grid, kappa, dt, solver=lx.CG(rtol=1e-10, atol=1e-10)), state


def model_factories() -> dict:
    out = {"diffusion": make_diffusion}
    try:
        from benchmarks import model_factories as extra

        out.update(extra.FACTORIES)
    except ImportError:
        pass
    return out


def loss_of(model, state, steps, checkpointing):
    final = integrate(model, state, steps, checkpointing=checkpointing)
    return sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(final))


def measure_model(model, state, steps=GRAD_STEPS):
    """Forward time per step, gradient/forward ratio and iterations per step for one model."""
    forward = eqx.filter_jit(lambda m, s: integrate(m, s, steps))
    grad = eqx.filter_jit(eqx.filter_grad(lambda ms: loss_of(ms[0], ms[1], steps, NoCheckpointing())))
    jax.block_until_ready(forward(model, state))
    jax.block_until_ready(grad((model, state)))
    t_fwd = best_time(lambda: jax.block_until_ready(forward(model, state)), repeats=3)
    t_grad = best_time(lambda: jax.block_until_ready(grad((model, state))), repeats=3)
    out = {"forward_ms_per_step": 1e3 * t_fwd / steps, "gradient_over_forward": t_grad / t_fwd}
    if hasattr(model, "step_with_stats"):
        stats = eqx.filter_jit(lambda m, s: m.step_with_stats(s))(model, state)[1]
        out["solver_iterations_per_step"] = jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), stats)
    return out


def gradient_memory(model, state, steps_list=(10, 100, 1000), levels=3):
    """XLA's temp memory of the compiled gradient through n steps (nested checkpointing)."""
    out = {}
    for steps in steps_list:
        grad = eqx.filter_grad(lambda s: loss_of(model, s, steps, NestedCheckpointing(levels=levels)))
        fn = jax.jit(lambda s: grad(s))
        analysis = fn.lower(state).compile().memory_analysis()
        out[str(steps)] = {
            "temp_bytes": int(analysis.temp_size_in_bytes),
            "total_bytes": int(
                analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            ),
        }
    return out


def scipy_operator(n, kappa, dt):
    """The backward-Euler matrix I − Δt ∇·(κ∇) (5-point, periodic, unit square) as a scipy.sparse CSR matrix."""
    h = 1.0 / n
    k = np.asarray(kappa)
    kx = 0.5 * (k + np.roll(k, -1, axis=1))  # east faces
    ky = 0.5 * (k + np.roll(k, -1, axis=0))  # north faces
    idx = np.arange(n * n).reshape(n, n)
    east, north = np.roll(idx, -1, axis=1), np.roll(idx, -1, axis=0)
    rows, cols, vals = [], [], []
    for nb, w in ((east, kx), (north, ky)):
        c = (dt / h**2) * w.ravel()
        rows += [idx.ravel(), nb.ravel(), idx.ravel(), nb.ravel()]
        cols += [nb.ravel(), idx.ravel(), idx.ravel(), nb.ravel()]
        vals += [-c, -c, c, c]
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n * n, n * n))
    return (A + sp.identity(n * n, format="csr")).tocsr()


def scipy_spectral_preconditioner(n, kappa, dt) -> spla.LinearOperator:
    """assim's SpectralPreconditioner for SciPy: the exact FFT inverse of the operator with κ → mean κ."""
    import scipy.fft

    lam_y = (4.0 * n**2) * np.sin(np.pi * np.arange(n) / n) ** 2
    lam_x = (4.0 * n**2) * np.sin(np.pi * np.arange(n // 2 + 1) / n) ** 2
    inv_eig = 1.0 / (1.0 + dt * float(np.mean(kappa)) * (lam_y[:, None] + lam_x[None, :]))

    def apply(r):
        spectrum = scipy.fft.rfft2(np.reshape(r, (n, n)), workers=1)
        return scipy.fft.irfft2(spectrum * inv_eig, s=(n, n), workers=1).ravel()

    return spla.LinearOperator((n * n, n * n), matvec=apply, rmatvec=apply, dtype=float)


def scipy_step(n, kappa, dt, u0, rtol, preconditioned=False):
    """Backward-Euler step (I − Δt ∇·(κ∇)) u' = u with scipy.sparse CG (5-point, periodic), optionally FFT-preconditioned."""
    A = scipy_operator(n, kappa, dt)
    M = scipy_spectral_preconditioner(n, kappa, dt) if preconditioned else None
    b = np.asarray(u0).ravel()
    count = [0]

    def solve():
        count[0] = 0

        def cb(_):
            count[0] += 1

        x, info = spla.cg(A, b, rtol=rtol, atol=0.0, M=M, callback=cb)
        return x, info

    x, info = solve()
    t = best_time(lambda: solve(), repeats=3)
    rel_res = np.linalg.norm(b - A @ x) / np.linalg.norm(b)
    return {"ms_per_step": 1e3 * t, "iterations": count[0], "ms_per_iteration": 1e3 * t / max(count[0], 1),
            "relative_residual": float(rel_res), "info": int(info)}, x  # fmt: skip


def diffrax_step(grid, kappa, dt, u0, linear_solver=None):
    """One implicit-Euler step with diffrax (default root finder unless a linear solver is given)."""
    import diffrax
    import optimistix as optx

    term = diffrax.ODETerm(lambda t, y, args: diffusion(grid, y, kappa))
    if linear_solver is None:  # the default linear solver (AutoLinearSolver: dense LU)
        root_finder = diffrax.VeryChord(rtol=1e-10, atol=1e-10, norm=optx.max_norm)
    else:
        root_finder = optx.Newton(rtol=1e-10, atol=1e-10, linear_solver=linear_solver)
    solver = diffrax.ImplicitEuler(root_finder=root_finder)

    @jax.jit
    def step(y):
        sol = diffrax.diffeqsolve(term, solver, 0.0, dt, dt, y, stepsize_controller=diffrax.ConstantStepSize())
        return sol.ys[-1]

    y = jax.block_until_ready(step(u0))
    return 1e3 * best_time(lambda: jax.block_until_ready(step(u0)), repeats=3), y


def peers(n, quick):
    model, u0 = make_diffusion(n)
    ours_uniform = Diffusion(model.grid, 1.0, model.dt, solver=model.solver)
    result = {}
    for label, m in (("variable_kappa", model), ("uniform_kappa", ours_uniform)):
        step = eqx.filter_jit(lambda mm, s: mm.step_with_stats(s))
        y, iters = jax.block_until_ready(step(m, u0))
        t = best_time(lambda: jax.block_until_ready(step(m, u0)), repeats=5)
        kappa = np.broadcast_to(np.asarray(m.kappa), (n, n))
        sc, x = scipy_step(n, kappa, m.dt, u0, rtol=1e-10)
        pc, x_pc = scipy_step(n, kappa, m.dt, u0, rtol=1e-10, preconditioned=True)
        rel_diff = float(np.linalg.norm(np.asarray(y).ravel() - x) / np.linalg.norm(x))
        entry = {
            "assim_ms_per_step": 1e3 * t,
            "assim_cg_iterations": int(iters),
            "assim_ms_per_iteration": 1e3 * t / max(int(iters), 1),
            "scipy_cg": sc,
            "scipy_fft_preconditioned_cg": pc,
            "assim_vs_scipy_relative_difference": rel_diff,
            "assim_vs_scipy_preconditioned_relative_difference": float(
                np.linalg.norm(np.asarray(y).ravel() - x_pc) / np.linalg.norm(x_pc)
            ),
            "scipy_over_assim": sc["ms_per_step"] / (1e3 * t),
            "scipy_preconditioned_over_assim": pc["ms_per_step"] / (1e3 * t),
        }
        dense_bytes = (n * n) ** 2 * 8
        entry["diffrax_default_dense_jacobian_bytes"] = dense_bytes
        if n <= 64 and not quick:
            t_dx, y_dx = diffrax_step(m.grid, m.kappa, m.dt, u0)
            entry["diffrax_default_ms_per_step"] = t_dx
            entry["diffrax_default_over_assim"] = t_dx / (1e3 * t)
        else:
            entry["diffrax_default_ms_per_step"] = None
            entry["diffrax_default_note"] = (
                f"not run: the default root finder materialises a dense {n * n}x{n * n} Jacobian "
                f"({dense_bytes / 2**30:.1f} GiB) and LU-factorises it (O(N^3) = {(n * n) ** 3:.1e} flops)"
            )
        t_cg, y_cg = diffrax_step(m.grid, m.kappa, m.dt, u0, linear_solver=lx.GMRES(rtol=1e-10, atol=1e-10, restart=50))
        entry["diffrax_matrix_free_gmres_ms_per_step"] = t_cg
        entry["diffrax_matrix_free_gmres_over_assim"] = t_cg / (1e3 * t)
        result[label] = entry
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--memory-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="skip the slow dense diffrax peer")
    args = parser.parse_args()

    cases = {"models": {}, "peers_diffusion_step": {}, "gradient_memory": {}}
    for name, factory in model_factories().items():
        sizes = [None] if getattr(factory, "fixed_size", False) else args.sizes
        for n in sizes:
            try:
                model, state = factory(n)
                r = measure_model(model, state)
            except Exception as err:  # a size that does not fit is recorded, not hidden
                r = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            cases["models"].setdefault(name, {})[str(n)] = r
            print(name, n, r, flush=True)
    for n in args.sizes:
        cases["peers_diffusion_step"][str(n)] = peers(n, args.quick)
        print("peers", n, cases["peers_diffusion_step"][str(n)], flush=True)
    for name, factory in model_factories().items():
        n = None if getattr(factory, "fixed_size", False) else args.memory_size
        model, state = factory(n)
        cases["gradient_memory"][name] = gradient_memory(model, state)
        print("memory", name, cases["gradient_memory"][name], flush=True)

    targets = []
    ref = str(args.memory_size)
    for name, per_size in cases["models"].items():
        key, label = (ref, f"{ref}²") if ref in per_size else ("None", "its literature size")
        r = per_size.get(key)
        if r and "gradient_over_forward" in r:
            targets.append(
                target(
                    f"{name} gradient/forward time, {GRAD_STEPS} steps at {label}",
                    r["gradient_over_forward"],
                    "<=",
                    3.0,
                )
            )
    for name, mem in cases["gradient_memory"].items():
        ratio = mem["1000"]["temp_bytes"] / max(mem["10"]["temp_bytes"], 1)
        targets.append(target(f"{name} gradient memory 1000 steps / 10 steps", ratio, "<=", 10.0))
    big = str(max(args.sizes))
    if big in cases["peers_diffusion_step"]:
        for label, entry in cases["peers_diffusion_step"][big].items():
            targets.append(
                target(
                    f"SciPy CG time / assim time, diffusion step {big}² ({label})", entry["scipy_over_assim"], ">", 1.0
                )
            )
            targets.append(
                target(
                    f"SciPy CG with assim's FFT preconditioner time / assim time, diffusion step {big}² ({label})",
                    entry["scipy_preconditioned_over_assim"],
                    ">",
                    1.0,
                )
            )
            targets.append(
                target(
                    f"diffrax implicit Euler (matrix-free GMRES) time / assim time, {big}² ({label})",
                    entry["diffrax_matrix_free_gmres_over_assim"],
                    ">",
                    1.0,
                )
            )
    ran_dense = [
        n for n, p in cases["peers_diffusion_step"].items() if p["variable_kappa"].get("diffrax_default_over_assim")
    ]
    if ran_dense:
        n = max(ran_dense, key=int)
        for label, entry in cases["peers_diffusion_step"][n].items():
            targets.append(
                target(
                    f"diffrax default (dense) implicit Euler time / assim time, {n}² ({label}; the largest size it runs at)",
                    entry["diffrax_default_over_assim"],
                    ">",
                    1.0,
                )
            )
    notes = [
        "diffrax's default implicit Euler forms a dense (n²)×(n²) Jacobian and LU-factorises it: at 256² that is "
        "32 GiB, more than this 24 GiB machine, so it is measured only where it runs (64²) and reported as not "
        "fitting above; the matrix-free diffrax variant (optimistix Newton + lineax GMRES) runs at every size.",
        "Timings are best-of-3 wall times in one process; compile time excluded.",
    ]
    path = write_results("models", cases, targets, extra={"settings": vars(args), "notes": notes})
    print("wrote", path)


if __name__ == "__main__":
    main()
