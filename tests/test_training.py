"""Training: the masking loss of held-out windows falls, a resumed run ends bit-identical to an uninterrupted one,
non-finite steps are skipped, counted and never touch the parameters, validation stops early, bad input raises."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from l96_window import window

from assim.errors import InputError
from assim.learned.losses import (
    MaskedMisfit,
    RandomSplit,
    SupervisedStateError,
    WeightedSum,
)
from assim.learned.training import Trainer, adam, stack_windows, train, validation_loss
from assim.learned.unrolled import UnrolledGaussNewton

# a deliberately weak solver (2 layers, 3 CG iterations, short steps) leaves room to learn
SOLVER = UnrolledGaussNewton(2, 3, step=0.5, weight=1.0)
# the supervised term has weight 0: it only turns a NaN truth into a NaN loss (the non-finite test)
LOSS = WeightedSum([(1.0, MaskedMisfit()), (0.0, SupervisedStateError())])
TRAINER = Trainer(LOSS, adam(0.1, 12, clip_norm=10.0), RandomSplit(0.25), batch_size=2, validate_every=3,
                  patience=1, checkpoint_every=3)  # fmt: skip
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def data():
    train_w, train_t = zip(*[window(seed) for seed in range(1, 5)])
    val_w, val_t = zip(*[window(seed) for seed in range(5, 7)])
    return stack_windows(train_w), jnp.stack(train_t), stack_windows(val_w), jnp.stack(val_t)


def run(data, n_steps, **kw):
    windows, truths, val, val_truths = data
    return train(TRAINER, SOLVER, windows, n_steps, KEY, val, truths, val_truths, log=None, **kw)


def test_training_lowers_the_validation_loss_and_resumes_bit_identically(data, tmp_path):
    windows, truths, val, val_truths = data
    before = float(validation_loss(TRAINER, SOLVER, val, val_truths, jax.random.fold_in(KEY, 2**31 - 1)))
    full = run(data, 6, checkpoint=str(tmp_path / "full.eqx"))
    assert [s for s, _ in full.validation] == [3, 6]
    assert full.validation[-1][1] < full.validation[0][1] < before  # learning, judged on held-out windows
    assert int(full.state.n_skipped) == 0 and not bool(full.state.stopped)
    # interrupted after 3 steps, then resumed from the checkpoint to step 6
    part = run(data, 3, checkpoint=str(tmp_path / "part.eqx"))
    resumed = run(data, 6, checkpoint=str(tmp_path / "part.eqx"), resume=True)
    assert len(part.losses) == 3 and len(resumed.losses) == 3
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state), jax.tree_util.tree_leaves(full.state)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(resumed.solver.raw_step, full.solver.raw_step)
    assert resumed.losses == full.losses[3:]


def test_non_finite_steps_are_skipped_and_counted(data):
    windows, truths, val, val_truths = data
    poisoned = truths.at[:, 0].set(jnp.nan)  # every window's loss is NaN
    result = train(TRAINER, SOLVER, windows, 9, KEY, val, poisoned, val_truths, log=None)
    assert int(result.state.n_skipped) == int(result.state.step) and all(np.isnan(result.losses))
    initial = eqx.filter(SOLVER, eqx.is_inexact_array)
    for a, b in zip(jax.tree_util.tree_leaves(result.state.params), jax.tree_util.tree_leaves(initial)):
        np.testing.assert_array_equal(a, b)  # bit for bit untouched
    # constant validation loss: no improvement after the first validation, so patience 1 stops the run at step 6
    assert bool(result.state.stopped) and int(result.state.step) == 6
    # one bad window of four: only the minibatches that contain it are skipped
    mixed = train(TRAINER, SOLVER, windows, 6, KEY, None, truths.at[3, 0].set(jnp.nan), None, log=None)
    skipped = int(mixed.state.n_skipped)
    assert 0 < skipped < 6 and skipped == int(np.sum(np.isnan(mixed.losses)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(mixed.state.params))
    assert not np.array_equal(mixed.solver.raw_step, SOLVER.raw_step)


def test_bad_training_settings_raise(data, tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        run(data, 2, checkpoint=str(tmp_path / "missing.eqx"), resume=True)
    with pytest.raises(InputError, match="batch_size"):
        Trainer(LOSS, adam(0.1, 10), batch_size=0)
    with pytest.raises(InputError, match="warmup_steps"):
        adam(0.1, 10, warmup_steps=10)
    with pytest.raises(InputError, match="at least one window"):
        stack_windows([])


def test_progress_bar_and_log_show_loss_and_validation(data, capsys):
    windows, truths, val, val_truths = data
    lines = []
    result = train(TRAINER, SOLVER, windows, 3, KEY, val, truths, val_truths, log=lines.append, progress=True)
    err = capsys.readouterr().err
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err)  # rich's terminal codes left out
    bar = text.split("\r")[-1]  # the line as last drawn
    assert bar.startswith("train") and " 3/3 " in bar and text.endswith("\n")
    assert f"loss {result.losses[-1]:.4g}" in bar and f"validation {result.validation[-1][1]:.4g}" in bar
    assert len(lines) == 3 and "validation" in lines[2] and "validation" not in lines[0]
    train(TRAINER, SOLVER, windows, 1, KEY, None, truths, log=None, progress=False)
    assert capsys.readouterr().err == ""  # refused: nothing on stderr


def test_validating_the_initial_parameters_returns_them_when_training_only_makes_things_worse(data):
    windows, truths, val, val_truths = data

    # a learning rate that wrecks the solver: no trained state validates better than the classical start
    def wild(validate_initial):
        return Trainer(LOSS, adam(50.0, 12, clip_norm=1e3), RandomSplit(0.25), batch_size=2, validate_every=3,
                       patience=1, checkpoint_every=3, validate_initial=validate_initial)  # fmt: skip

    result = train(wild(True), SOLVER, windows, 3, KEY, val, truths, val_truths, log=None)
    assert [s for s, _ in result.validation] == [0, 3] and result.validation[1][1] > result.validation[0][1]
    np.testing.assert_array_equal(result.solver.raw_step, SOLVER.raw_step)
    assert float(result.state.best_validation) == result.validation[0][1]
    plain = train(wild(False), SOLVER, windows, 3, KEY, val, truths, val_truths, log=None)  # the wrecked state only
    assert not np.array_equal(plain.solver.raw_step, SOLVER.raw_step)


def test_a_non_finite_validation_keeps_the_best_parameters(data, monkeypatch):
    """Validation finite at step 3, NaN at step 6: the step-3 parameters come back, and the best loss stays finite."""
    import assim.learned.training as training

    real, calls = training.validation_loss, []

    def finite_then_nan(*args):
        calls.append(1)
        value = real(*args)
        return value if len(calls) == 1 else jnp.asarray(jnp.nan)

    three = run(data, 3)
    monkeypatch.setattr(training, "validation_loss", finite_then_nan)
    six = run(data, 6)
    assert [s for s, _ in six.validation] == [3, 6] and np.isnan(six.validation[1][1])
    assert float(six.state.best_validation) == three.validation[0][1]
    np.testing.assert_array_equal(six.solver.raw_step, three.solver.raw_step)
