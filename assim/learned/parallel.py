"""Where training runs: a one-axis device mesh ('windows') that splits each minibatch of windows across devices.

Minibatch windows, their truths and their observation-split keys are sharded along their leading (window) axis
with `NamedSharding(mesh, P('windows'))`; parameters, optimiser state and the stack of windows the minibatches are
drawn from are replicated. The jitted step then runs SPMD: every device analyses its share of the windows and XLA
all-reduces the mean loss and its gradient, so the same code trains on one CPU, several GPUs or several hosts.
"""

from __future__ import annotations

import abc
from typing import Any, TypeAlias

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import PyTree

from assim.errors import InputError

AXIS = "windows"
# A device (jax.Device): jax binds it as `Device = _xc.Device` from an unstubbed extension, which pyright rejects in
# annotations, so they use this alias.
_Device: TypeAlias = Any


class AbstractParallelism(eqx.Module):
    """Devices a training run uses; a minibatch is split evenly over them along its window axis."""

    @abc.abstractmethod
    def devices(self) -> tuple[_Device, ...]:
        """The devices of the mesh, in order."""

    def mesh(self) -> Mesh:
        """One-axis mesh ('windows') over the devices."""
        return Mesh(np.asarray(self.devices(), dtype=object), (AXIS,))

    def check_batch(self, n_windows: int) -> None:
        """Raise if a minibatch of n_windows cannot be split evenly over the devices."""
        n_devices = len(self.devices())
        if n_windows % n_devices:
            raise InputError(
                f"a minibatch of {n_windows} windows cannot be split evenly over {n_devices} devices: set "
                f"Trainer(batch_size=...) to a multiple of {n_devices} (and give at least that many windows), or "
                "train on fewer devices with parallel=DataParallel(devices=[...]) or SingleDevice()."
            )

    def shard(self, tree: PyTree) -> PyTree:
        """Inside jit: array leaves (leading axis = windows) split over the devices along the 'windows' axis."""
        leaves = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]
        if leaves:
            self.check_batch(leaves[0].shape[0])
        sharding = NamedSharding(self.mesh(), P(AXIS))
        return jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, sharding) if eqx.is_array(x) else x, tree
        )

    def shard_if_even(self, tree: PyTree) -> PyTree:
        """Inside jit: `shard` when the window count divides evenly over the devices, else replicated (exact)."""
        leaves = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]
        if leaves and leaves[0].shape[0] % len(self.devices()) == 0:
            return self.shard(tree)
        return self.replicate(tree)

    def replicate(self, tree: PyTree) -> PyTree:
        """Inside jit: array leaves replicated on every device of the mesh."""
        sharding = NamedSharding(self.mesh(), P())
        return jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, sharding) if eqx.is_array(x) else x, tree
        )

    def place_replicated(self, tree: PyTree) -> PyTree:
        """Outside jit: array leaves copied to every device of the mesh (parameters, optimiser state, data)."""
        sharding = NamedSharding(self.mesh(), P())
        return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


class DataParallel(AbstractParallelism):
    """Data parallelism over the given devices, by default every device JAX sees (all hosts' included)."""

    devices_: tuple[_Device, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, devices=None):
        if devices is not None:
            devices = tuple(devices)
            if not devices:
                raise InputError("DataParallel needs at least one device; give devices=None for all of them.")
        self.devices_ = devices

    def devices(self) -> tuple[_Device, ...]:
        return tuple(jax.devices()) if self.devices_ is None else self.devices_


class SingleDevice(AbstractParallelism):
    """Everything on one device (by default JAX's first)."""

    device: _Device | None = eqx.field(static=True, default=None)

    def devices(self) -> tuple[_Device, ...]:
        return (jax.devices()[0] if self.device is None else self.device,)
