"""Training the unrolled solver's parameters on windows of observations (no ground truth needed).

One step: draw a minibatch of windows and a fresh key per window (observation split) from the state's PRNG key,
evaluate the loss of every window with `vmap`, average, and take an optax step (Adam with a schedule and
global-norm clipping, see `adam`). A step whose loss or gradient is not finite is skipped: parameters and optimiser
state are kept bit for bit and the skip is counted. Checkpoints (`eqx.tree_serialise_leaves` of the whole
`TrainState`: parameters, optimiser state, key, step, validation record) are written atomically; a run resumed from
its checkpoint ends bit-identical to an uninterrupted one. Validation on held-out windows every `validate_every`
steps keeps the best parameters and stops after `patience` validations without improvement.

Training is data-parallel (`assim.learned.parallel`): each minibatch of windows, with their truths and split keys, is
sharded over a device mesh ('windows' axis) while parameters and optimiser state are replicated, so the jitted step
runs SPMD on every device JAX sees; `SingleDevice()` keeps everything on one. A progress bar (stderr) shows the
step, loss and validation loss when stderr is a terminal or when asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from assim.errors import InputError
from assim.learned.hypergradients import AbstractHypergradient, Unrolled
from assim.learned.losses import AbstractLoss, AbstractSplit, NoSplit, window_loss
from assim.learned.parallel import AbstractParallelism, DataParallel
from assim.learned.unrolled import UnrolledGaussNewton
from assim.problems.cost import StrongConstraint4DVar
from assim.progress import bar as progress_bar


def adam(
    learning_rate: float, total_steps: int, warmup_steps: int = 0, clip_norm: float = 1.0
) -> optax.GradientTransformation:
    """Adam with linear warm-up then cosine decay of the learning rate, after global-norm gradient clipping."""
    if not (learning_rate >= 0 and total_steps >= 1 and 0 <= warmup_steps < total_steps and clip_norm > 0):
        raise InputError(
            "adam needs learning_rate ≥ 0, total_steps ≥ 1, 0 ≤ warmup_steps < total_steps and clip_norm > 0."
        )
    schedule = optax.warmup_cosine_decay_schedule(
        0.0 if warmup_steps else learning_rate, learning_rate, warmup_steps, total_steps
    )
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(schedule))


def stack_windows(problems: Sequence[StrongConstraint4DVar]) -> StrongConstraint4DVar:
    """Windows of the same shapes stacked along a leading window axis (for vmap and minibatches)."""
    if not problems:
        raise InputError("give at least one window.")
    try:
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs) if eqx.is_array(xs[0]) else xs[0], *problems)
    except ValueError as err:
        raise InputError(f"windows must share model, grid and observation layout to be stacked: {err}") from None


def _take(tree, index):
    return jax.tree_util.tree_map(lambda x: x[index] if eqx.is_array(x) else x, tree)


class TrainState(eqx.Module):
    """Everything a resumed run needs: parameters, optimiser state, key, step, skips and the validation record."""

    params: PyTree[Array]
    opt_state: PyTree
    key: PRNGKeyArray
    step: Int[Array, ""]
    n_skipped: Int[Array, ""]
    best_params: PyTree[Array]
    best_validation: Float[Array, ""]
    bad_validations: Int[Array, ""]
    stopped: Bool[Array, ""]


class Trainer(eqx.Module):
    """What to minimise and how: loss, split, hypergradient, optimiser, minibatch size, devices (data-parallel).

    `validate_initial`: also score the initial (classical) parameters on the validation windows before the first
    step, so that early stopping returns them when no trained state validates better (never worse than the
    start on held-out windows)."""

    loss: AbstractLoss
    optimizer: optax.GradientTransformation = eqx.field(static=True)
    split: AbstractSplit = NoSplit()
    hypergradient: AbstractHypergradient = Unrolled()
    batch_size: int = eqx.field(static=True, default=4)
    validate_every: int = eqx.field(static=True, default=10)
    patience: int = eqx.field(static=True, default=5)
    checkpoint_every: int = eqx.field(static=True, default=10)
    parallel: AbstractParallelism = DataParallel()
    validate_initial: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if min(self.batch_size, self.validate_every, self.patience, self.checkpoint_every) < 1:
            raise InputError("batch_size, validate_every, patience and checkpoint_every must be ≥ 1.")

    def init(self, solver: UnrolledGaussNewton, key: PRNGKeyArray) -> TrainState:
        """Initial training state for the solver's trainable (floating-point array) parameters."""
        params = eqx.filter(solver, eqx.is_inexact_array)
        return TrainState(
            params=params, opt_state=self.optimizer.init(params), key=key,
            step=jnp.asarray(0, jnp.int32), n_skipped=jnp.asarray(0, jnp.int32), best_params=params,
            best_validation=jnp.asarray(jnp.inf), bad_validations=jnp.asarray(0, jnp.int32),
            stopped=jnp.asarray(False),
        )  # fmt: skip

    def mean_loss(self, solver, windows, truths, keys) -> Float[Array, ""]:
        """Mean loss over a stack of windows (each posed with the solver's learned prior), one split key per window."""

        def one(problem, truth, k):
            analyse = lambda p: self.hypergradient.analyse(solver, p)  # noqa: E731
            return window_loss(self.loss, analyse, solver.posed(problem), k, self.split, truth)

        return jnp.mean(eqx.filter_vmap(one, in_axes=(0, None if truths is None else 0, 0))(windows, truths, keys))


def _n_windows(windows) -> int:
    return jax.tree_util.tree_leaves(windows.background)[0].shape[0]


class Minibatch(eqx.Module):
    """Windows of one training step, their truths (or None) and one observation-split key per window."""

    windows: StrongConstraint4DVar
    truths: PyTree[Array] | None
    keys: PRNGKeyArray


@eqx.filter_jit
def draw_minibatch(trainer: Trainer, state: TrainState, windows, truths) -> Minibatch:
    """The step's random minibatch and split keys (from the state's key), sharded over the trainer's devices."""
    _, k_batch, k_split = jax.random.split(state.key, 3)
    n = _n_windows(windows)
    size = min(trainer.batch_size, n)
    index = jax.random.choice(k_batch, n, (size,), replace=False)
    batch = Minibatch(_take(windows, index), None if truths is None else _take(truths, index),
                      jax.random.split(k_split, size))  # fmt: skip
    return trainer.parallel.shard(batch)


@eqx.filter_jit
def train_step(trainer: Trainer, static, state: TrainState, batch: Minibatch) -> tuple[TrainState, Float[Array, ""]]:
    """One optimiser step on a drawn minibatch; non-finite loss or gradient: step skipped and counted."""
    key = jax.random.split(state.key, 3)[0]  # the same split as draw_minibatch's

    def loss_fn(params):
        return trainer.mean_loss(eqx.combine(params, static), batch.windows, batch.truths, batch.keys)

    loss, grads = eqx.filter_value_and_grad(loss_fn)(state.params)
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
    )
    grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, opt_state = trainer.optimizer.update(grads, state.opt_state, state.params)
    params = eqx.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    state = eqx.tree_at(
        lambda s: (s.params, s.opt_state, s.key, s.step, s.n_skipped),
        state,
        (keep(params, state.params), keep(opt_state, state.opt_state), key, state.step + 1,
         state.n_skipped + (~finite).astype(jnp.int32)),
    )  # fmt: skip
    return trainer.parallel.replicate(state), loss


@eqx.filter_jit
def validation_loss(trainer: Trainer, solver, windows, truths, key) -> Float[Array, ""]:
    """Mean loss over the validation windows (fixed key: the same split every time), sharded when they divide."""
    keys = jax.random.split(key, _n_windows(windows))
    windows, truths, keys = trainer.parallel.shard_if_even((windows, truths, keys))
    return trainer.mean_loss(solver, windows, truths, keys)


class TrainResult(eqx.Module):
    """Trained solver (best validated parameters), final state, and the per-step history."""

    solver: UnrolledGaussNewton
    state: TrainState
    losses: list[float] = eqx.field(static=True)
    validation: list[tuple[int, float]] = eqx.field(static=True)


def save_checkpoint(path: str, state: TrainState) -> None:
    """Write the training state atomically (no partial file on interruption)."""
    tmp = f"{path}.tmp"
    eqx.tree_serialise_leaves(tmp, state)
    os.replace(tmp, path)


def train(
    trainer: Trainer,
    solver: UnrolledGaussNewton,
    windows: StrongConstraint4DVar,
    n_steps: int,
    key: PRNGKeyArray,
    validation_windows: StrongConstraint4DVar | None = None,
    truths: PyTree[Array] | None = None,
    validation_truths: PyTree[Array] | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train on stacked windows for n_steps (counting from a resumed checkpoint's step), with validation.

    `log` receives one line per step; `progress` draws a bar on stderr (None: only when stderr is a terminal).
    """
    trainer.parallel.check_batch(min(trainer.batch_size, _n_windows(windows)))
    params, static = eqx.partition(solver, eqx.is_inexact_array)
    state = trainer.init(solver, key)
    if resume:
        if checkpoint is None or not os.path.exists(checkpoint):
            raise InputError(f"cannot resume: no checkpoint at {checkpoint!r}; run without resume=True first.")
        state = eqx.tree_deserialise_leaves(checkpoint, state)
    # parameters, optimiser state and the windows minibatches are drawn from: a copy on every device
    state, windows, truths, validation_windows, validation_truths = trainer.parallel.place_replicated(
        (state, windows, truths, validation_windows, validation_truths)
    )
    validation_key = jax.random.fold_in(key, 2**31 - 1)
    bar = progress_bar("train", n_steps, progress)
    losses, record = [], []
    if trainer.validate_initial and validation_windows is not None and int(state.step) == 0:
        value = validation_loss(trainer, solver, validation_windows, validation_truths, validation_key)
        if bool(jnp.isfinite(value)):
            state = eqx.tree_at(lambda s: (s.best_params, s.best_validation), state, (state.params, value))
        record.append((0, float(value)))
    try:
        while int(state.step) < n_steps and not bool(state.stopped):
            state, loss = train_step(trainer, static, state, draw_minibatch(trainer, state, windows, truths))
            step = int(state.step)
            losses.append(float(loss))
            if validation_windows is not None and step % trainer.validate_every == 0:
                current = eqx.combine(state.params, static)
                value = validation_loss(trainer, current, validation_windows, validation_truths, validation_key)
                better = value < state.best_validation
                bad = jnp.where(better, 0, state.bad_validations + 1).astype(jnp.int32)
                state = eqx.tree_at(
                    lambda s: (s.best_params, s.best_validation, s.bad_validations, s.stopped),
                    state,
                    (jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), state.params, state.best_params),
                     jnp.where(better, value, state.best_validation), bad, bad >= trainer.patience),
                )  # fmt: skip
                record.append((step, float(value)))
            validation = record[-1][1] if record else None
            bar.update(step, loss=float(loss), validation=validation, skipped=int(state.n_skipped))
            if log is not None:
                val = f", validation {validation:.4g}" if record and record[-1][0] == step else ""
                log(f"step {step}/{n_steps}: loss {float(loss):.4g}{val}, skipped {int(state.n_skipped)}")
            if checkpoint is not None and (
                step % trainer.checkpoint_every == 0 or step == n_steps or bool(state.stopped)
            ):
                save_checkpoint(checkpoint, state)
    finally:
        bar.close()
    best = state.best_params if bool(jnp.isfinite(state.best_validation)) else state.params
    return TrainResult(solver=eqx.combine(best, static), state=state, losses=losses, validation=record)
