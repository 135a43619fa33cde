"""`assim train` end to end on a tiny grid: checkpoint + reports written atomically, the learned solver reported next
to classical Gauss-Newton on unseen test windows, the checkpoint reloads bit-identically, `assim run` solves with
it; bad input exits non-zero with one line and leaves no file; window samples differ but share the network. The
solver carries a learned prior: train reports the classical solver with the same learned B, `assim run` certifies
the analysis ([solver.certificate]), and a checkpoint trained with a prior refuses a case without one."""

import io
import json
import re
import tomllib
from pathlib import Path

import equinox as eqx
import netCDF4
import numpy as np
import pytest

import assim.case.train
from assim.case.build import build
from assim.case.config import apply_overrides, load_case, validate
from assim.cli import main
from assim.errors import ConfigError
from assim.learned.trained_solver import load_solver
from models import CartesianGrid, Periodic

ROOT = Path(__file__).parents[1]
TRAINING = ROOT / "cases" / "training.toml"
TRAINED_RUN = ROOT / "cases" / "trained_run.toml"
K, CG = 2, 2
TINY = ["grid.n=8", "time.n_steps=2", "observations.every=1", "observations.network.fraction=0.5"]
PRIOR = "prior={spectral_nodes=4, variance='scalar', mean=true}"  # a learned B: trained, saved, reloaded and run with the rest
SKELETON = [f"layers={K}", f"cg_steps={CG}", "weight_schedule=true", "correction=false", "first_guess=false", PRIOR]
# validation only at the last step: one compilation of the training step and one of the validation loss
TRAIN = TINY + [f"training.{s}" for s in SKELETON] + [
    "training.train_windows=4", "training.validation_windows=2", "training.test_windows=2", "training.batch_size=2",
    "training.steps=3", "training.validate_every=3", "training.learning_rate=0.05"]  # fmt: skip


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "out"
    assert main(["train", str(TRAINING), "--out", str(out), "-q", *sets(TRAIN)]) == 0
    return out, json.loads((out / "training.json").read_text())


def test_train_writes_checkpoint_and_reports_learned_next_to_classical(trained):
    out, report = trained
    assert sorted(p.name for p in out.iterdir()) == ["losses.png", "solver.eqx", "summary.md", "training.json"]
    assert report["steps_run"] == 3 and len(report["losses"]) == 3 and report["skipped_steps"] == 0
    assert [s for s, _ in report["validation"]] == [0, 3]  # the classical start is validated too (validate_initial)
    assert report["samples"] == {"train": [1, 2, 3, 4], "validation": [5, 6], "test": [7, 8]}
    p = report["parameters"]
    assert len(p["damping_mu"]) == len(p["step_alpha"]) == len(p["weight_lambda"]) == K
    assert p["step_alpha"] != report["initial_parameters"]["step_alpha"]  # the optimiser moved the layers
    assert all(0 < a < 2 for a in p["step_alpha"]) and all(m >= 0 for m in p["damping_mu"])
    test = report["test"]
    assert len(test["windows"]) == 2
    for w in test["windows"]:
        learned, conv, budget = w["learned"], w["classical_converged"], w["classical_same_budget"]
        assert learned["analysis_rmse"] < w["background_rmse"]  # the learned solver assimilates the observations
        assert conv["converged"] and conv["final_gradient_norm"] < budget["final_gradient_norm"]
        # same budget: K linearisations of CG iterations from zero: exactly the learned solver's model runs
        e = learned["evaluations"]
        assert e == {"forward": K + 1, "tangent_linear": K * CG, "adjoint": K * CG + K + 1,
                     "total": 2 * K * CG + 2 * (K + 1), "outer_iterations": K}  # fmt: skip
        assert budget["evaluations"] == e
        assert conv["evaluations"]["total"] > e["total"]
    summary = (out / "summary.md").read_text()
    for row in ("learned (unrolled)", "classical GN, converged", "classical GN, same budget"):
        assert row in summary


def test_checkpoint_reloads_bit_identically(trained):
    out, report = trained
    case, _ = load_case(TRAINED_RUN, [f"solver.{s}" for s in SKELETON] + TINY)
    control = np.zeros((8, 8))
    grid = CartesianGrid((8, 8), (1 / 8, 1 / 8), Periodic())  # the TINY case's grid (the prior's shape, no mask)
    solver = load_solver(out / "solver.eqx", case.solver, control, grid=grid)
    # the JSON floats are the exact float64 values: the reloaded parameters match bit for bit
    assert np.asarray(solver.damping).tolist() == report["parameters"]["damping_mu"]
    assert np.asarray(solver.step).tolist() == report["parameters"]["step_alpha"]
    assert np.asarray(solver.weight).tolist() == report["parameters"]["weight_lambda"]
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, solver)
    raw = (out / "solver.eqx").read_bytes()
    assert raw[raw.index(b"\n") + 1 :] == buffer.getvalue()
    with pytest.raises(ConfigError, match=r"^solver\.cg_steps: the checkpoint was trained with cg_steps = 2"):
        load_solver(out / "solver.eqx", case.solver.model_copy(update={"cg_steps": 5}), control, grid=grid)
    with pytest.raises(
        ConfigError, match=r'^solver\.preconditioner: the checkpoint was trained with preconditioner = "none"'
    ):
        load_solver(
            out / "solver.eqx", case.solver.model_copy(update={"preconditioner": "spectral"}), control, grid=grid
        )


def test_run_with_the_trained_solver(trained, tmp_path):
    out, report = trained
    run_out = tmp_path / "run"
    checkpoint = f"solver.checkpoint={json.dumps(str(out / 'solver.eqx'))}"
    args = ["run", str(TRAINED_RUN), "--out", str(run_out), "-q",
            *sets(TINY + [f"solver.{s}" for s in SKELETON] + [checkpoint])]  # fmt: skip
    assert main(args) == 0
    assert {"analysis.nc", "metrics.json", "summary.md", "states.png", "convergence.png"} <= {
        p.name for p in run_out.iterdir()
    }
    m = json.loads((run_out / "metrics.json").read_text())
    assert m["outer_iterations"] == K and "trained layers" in m["reason"]
    assert m["analysis_rmse"] < m["background_rmse"]
    with netCDF4.Dataset(run_out / "analysis.nc") as nc:
        assert "trained unrolled Gauss-Newton" in nc.getncattr("source")


@pytest.mark.parametrize("command, extra, pattern", [
    ("train", ["--set", "training.batch_size=99"], r"training\.batch_size: must be ≤ training\.train_windows"),
    ("train", ["--set", "training.hypergradient={kind='implicit'}"], r"training\.hypergradient\.kind: implicit"),
    ("run", ["--set", "solver.checkpoint='nowhere/solver.eqx'"], r"run `assim train CASE` first"),
    ("run", ["--set", "solver.certificate={threshold=2}"], r"solver\.certificate\.threshold: "),
], ids=["batch", "implicit", "missing-checkpoint", "certificate-threshold"])  # fmt: skip
def test_bad_input_one_line_and_no_files(command, extra, pattern, tmp_path, capsys):
    case = TRAINING if command == "train" else TRAINED_RUN
    out = tmp_path / "out"
    assert main([command, str(case), "--out", str(out), *sets(TINY), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("assim: error: ")
    assert re.search(pattern, err)
    assert not out.exists() or not list(out.iterdir())


def test_train_needs_a_training_table(tmp_path, capsys):
    assert main(["train", str(ROOT / "cases" / "quickstart.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "training: the case has no [training] table" in capsys.readouterr().err


def test_failure_while_writing_leaves_no_checkpoint(tmp_path, monkeypatch):
    """The checkpoint is already written (under a temporary name) when the figure fails: nothing may remain."""
    from assim.learned.training import TrainResult

    def no_training(trainer, solver, windows, n_steps, key, **kwargs):  # this test is about the outputs
        return TrainResult(solver=solver, state=trainer.init(solver, key), losses=[], validation=[])

    written = []

    def fail(losses, validation, path, title):
        written.extend(p.name for p in path.parent.iterdir())
        raise RuntimeError("disk full (forced by the test)")

    monkeypatch.setattr(assim.case.train, "train", no_training)
    monkeypatch.setattr(assim.case.train, "evaluate", lambda *args: {"mean": {}})
    monkeypatch.setattr(assim.case.train, "losses_figure", fail)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="forced by the test"):
        main(["train", str(TRAINING), "--out", str(out), "-q", *sets(TRAIN)])
    assert any(n.startswith(".solver.eqx.") for n in written)  # the temporary checkpoint existed mid-run
    assert not out.exists()  # nor the directory the run created


def test_window_samples_differ_but_share_the_network():
    case = validate({**_raw(), "training": None})
    exps = [build(case, i) for i in (0, 1, 2)]
    cells = [np.asarray(e.twin.observations[0].operator.indices) for e in exps]
    assert all(np.array_equal(cells[0], c) for c in cells[1:])
    truths = [np.asarray(e.twin.truth[0]) for e in exps]
    backgrounds = [np.asarray(e.twin.background) for e in exps]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(truths[i], truths[j]) and not np.allclose(backgrounds[i], backgrounds[j])
    # sample 0 is the case's own window: the same as before samples existed (bump initial state, base keys)
    np.testing.assert_array_equal(exps[0].twin.truth, build(case).twin.truth)
    np.testing.assert_allclose(truths[0], case.model.initial.field(exps[0].grid))
    with pytest.raises(ConfigError, match="sample"):
        build(case, -1)


def _raw() -> dict:
    return apply_overrides(tomllib.loads(TRAINING.read_text()), TINY)


@pytest.mark.parametrize("override, pattern", [
    ("training.hypergradient={kind='truncated', layers=9}", r"^training\.hypergradient\.layers: must be ≤"),
    ("training.kkt_weight=0", None),
    ("training.masking_weight=0", None),
    ("cycling={window=2, shift=2, n_windows=1}", r"^training: training uses single windows"),
    ("solver={kind='unrolled', checkpoint='x.eqx'}", r"^solver\.kind: in a training case"),
    ("training.heldout_fraction=1.0", r"^training\.heldout_fraction: must be < 1"),
    ("training.preconditioner='fancy'", r"^training\.preconditioner: input should be 'none', 'diagonal' or 'spectral'"),
    ("training.prior={spectral_nodes=1}", r"^training\.prior\.spectral_nodes: "),
    ("training.prior={variance='big'}", r"^training\.prior\.variance: "),
    ("training.prior={nodes=4}", r"^training\.prior\.nodes: "),
], ids=["truncated", "kkt-only-off", "masking-off", "cycling", "unrolled-solver", "heldout", "preconditioner",
        "prior-nodes", "prior-variance", "prior-unknown-key"])  # fmt: skip
def test_training_schema(override, pattern):
    data = apply_overrides(_raw(), [override])
    if pattern is None:
        assert validate(data).training is not None  # one loss switched off is valid
        return
    with pytest.raises(ConfigError, match=pattern):
        validate(data)


def test_both_losses_off_is_rejected():
    with pytest.raises(ConfigError, match=r"^training\.masking_weight: masking_weight and kkt_weight are both 0"):
        validate(apply_overrides(_raw(), ["training.kkt_weight=0", "training.masking_weight=0"]))


def test_unrolled_solver_accepts_cycling():
    data = apply_overrides(tomllib.loads(TRAINED_RUN.read_text()), ["cycling={window=2, shift=2, n_windows=1}"])
    assert validate(data).cycling.window == 2  # the trained solver cycles (tests/test_cycling_case.py)


def test_train_learns_the_prior_and_reports_classical_with_the_same_learned_b(trained):
    _, report = trained
    assert report["settings"]["prior"] == {"spectral_nodes": 4, "variance": "scalar", "mean": True}
    mean = report["test"]["mean"]
    assert {"learned", "classical_converged", "classical_learned_b_converged"} <= set(mean)
    assert all(r["classical_learned_b_converged"]["converged"] for r in report["test"]["windows"])


def test_run_with_the_learned_prior_is_certified(trained, tmp_path):
    out, _ = trained
    checkpoint = f"solver.checkpoint={json.dumps(str(out / 'solver.eqx'))}"
    base = TINY + [f"solver.{s}" for s in SKELETON] + [checkpoint]
    run_out = tmp_path / "run"
    args = ["run", str(TRAINED_RUN), "--out", str(run_out), "-q",
            *sets(base + ["solver.certificate={threshold=1e-6}"])]  # fmt: skip
    assert main(args) == 0
    m = json.loads((run_out / "metrics.json").read_text())
    assert m["certificate_learned_kkt_residual"] > 1e-6 and m["certificate_fallback_outer"] >= 1
    assert m["certificate_fallback_cg"] > 0 and m["certificate_fallback_tl_adjoint_runs"] > 0
    assert m["certificate_met"] and m["certificate_kkt_residual"] <= 1e-6 and m["converged"]
    assert "classical Gauss-Newton continued" in m["reason"]
    assert m["analysis_rmse"] < m["background_rmse"]


def test_a_checkpoint_trained_with_a_prior_refuses_a_case_without_one(trained, tmp_path, capsys):
    out, _ = trained
    checkpoint = f"solver.checkpoint={json.dumps(str(out / 'solver.eqx'))}"
    without = TINY + [f"solver.{s}" for s in SKELETON[:-1]] + [checkpoint]
    code = main(["run", str(TRAINED_RUN), "--out", str(tmp_path / "r"), "-q", *sets(without)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "solver.prior: the checkpoint was trained with prior" in err[0]
    assert not (tmp_path / "r").exists()
