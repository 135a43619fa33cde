"""Data-parallel training: the same training on 4 (forced host) CPU devices and on 1 device ends with the same
parameters, the 4-device run really splits each minibatch over 4 devices with parameters replicated, and a batch
that does not divide over the devices raises InputError. Each run is a subprocess: XLA's device count is fixed when
JAX starts."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
FAST_XLA = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"  # as in conftest.py

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from l96_window import window
    from assim.errors import InputError
    from assim.learned.losses import MaskedMisfit, RandomSplit
    from assim.learned.parallel import DataParallel, SingleDevice
    from assim.learned.training import Trainer, adam, draw_minibatch, stack_windows, train
    from assim.learned.unrolled import UnrolledGaussNewton

    out, parallel = sys.argv[1], {"data": DataParallel(), "single": SingleDevice()}[sys.argv[2]]
    solver = UnrolledGaussNewton(2, 3, step=0.5, weight=1.0)
    make = lambda size: Trainer(MaskedMisfit(), adam(0.1, 4, clip_norm=10.0), RandomSplit(0.25), batch_size=size,
                                validate_every=2, patience=5, checkpoint_every=100, parallel=parallel)
    trainer = make(4)
    windows = stack_windows([window(seed)[0] for seed in range(1, 6)])  # 5 windows, minibatches of 4
    val = stack_windows([window(seed)[0] for seed in range(6, 10)])
    key = jax.random.PRNGKey(3)
    result = train(trainer, solver, windows, 4, key, val, log=None, progress=False)

    # where the first minibatch and the parameters live
    state = trainer.parallel.place_replicated(trainer.init(solver, key))
    batch = draw_minibatch(trainer, state, trainer.parallel.place_replicated(windows), None)
    leaves = jax.tree_util.tree_leaves(batch)
    shardings = [x.sharding for x in leaves]
    try:
        train(make(2), solver, windows, 1, key, log=None, progress=False)  # a minibatch of 2 windows
        error = ""
    except InputError as err:
        error = str(err)
    np.savez(out + ".npz", *[np.asarray(x) for x in jax.tree_util.tree_leaves(result.state.params)],
             losses=np.asarray(result.losses), validation=np.asarray([v for _, v in result.validation]))
    json.dump({
        "devices": len(jax.devices()),
        "batch_named": all(isinstance(s, NamedSharding) and s.spec == P("windows") for s in shardings),
        "batch_devices": sorted({len(s.device_set) for s in shardings}),
        "shard_rows": sorted({sh.data.shape[0] for x in leaves for sh in x.addressable_shards}),
        "batch_rows": sorted({x.shape[0] for x in leaves}),
        "params_replicated": all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == len(jax.devices())
                                 for x in jax.tree_util.tree_leaves(result.state.params)),
        "error": error,
        "moved": any(not np.array_equal(a, b) for a, b in zip(
            jax.tree_util.tree_leaves(result.state.params), jax.tree_util.tree_leaves(eqx.filter(solver, eqx.is_array))
        )),
    }, open(out + ".json", "w"))
    """
)


def run(tmp_path: Path, n_devices: int, parallel: str) -> tuple[dict, dict]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices} {FAST_XLA}"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    out = str(tmp_path / f"{parallel}{n_devices}")
    done = subprocess.run([sys.executable, "-c", SCRIPT, out, parallel], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out + ".npz") as arrays:
        return json.load(open(out + ".json")), {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data_parallel")
    return run(tmp, 4, "data"), run(tmp, 1, "single")


def test_four_devices_shard_the_minibatch_and_replicate_the_parameters(runs):
    (four, _), (one, _) = runs
    assert four["devices"] == 4 and one["devices"] == 1
    assert four["batch_named"] and four["batch_devices"] == [4]  # P('windows') over a 4-device mesh
    assert four["batch_rows"] == [4] and four["shard_rows"] == [1]  # 4 windows, one per device
    assert four["params_replicated"] and one["params_replicated"]
    assert four["moved"] and one["moved"]  # training changed the parameters
    assert one["batch_devices"] == [1] and one["shard_rows"] == [4]


def test_four_devices_train_the_same_parameters_as_one(runs):
    (_, four), (_, one) = runs
    assert four.keys() == one.keys() and len(four) > 3
    assert np.all(np.isfinite(four["losses"])) and len(four["losses"]) == 4 and len(four["validation"]) == 2
    # the cross-device all-reduce sums the per-window losses and gradients in another order than one device:
    # equal to rounding (a few ulps, amplified at most mildly by 4 Adam steps), far below any learning signal
    for name in one:
        np.testing.assert_allclose(four[name], one[name], rtol=1e-12, atol=0, err_msg=name)


def test_a_batch_that_does_not_divide_over_the_devices_raises(runs):
    (four, _), (one, _) = runs
    assert "multiple of 4" in four["error"] and "batch_size" in four["error"]
    assert one["error"] == ""  # 2 windows on 1 device is fine
