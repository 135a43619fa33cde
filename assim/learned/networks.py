"""Small learned maps on control vectors for the unrolled solver: an MLP (any control, e.g. Lorenz-96) and a
periodic conv net (a control shaped like a 1-D or 2-D grid field). The last layer starts at zero, so a fresh
network outputs zero and the unrolled solver starts as the classical one."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray, PyTree

from assim.errors import InputError


def _zero_last(layer):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, (layer.weight, layer.bias))
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, zeros)


class AbstractControlNetwork(eqx.Module):
    """A learned map from `n_inputs` control vectors (increment, control, gradient...) to a control vector."""

    n_inputs: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(self, *controls: PyTree[Array]) -> PyTree[Array]:
        """Control-space output (same structure as the first input) from the input control vectors."""

    def check_inputs(self, n: int, role: str) -> None:
        """Raise InputError unless the network takes `n` control vectors."""
        if self.n_inputs != n:
            raise InputError(f"the {role} network must take {n} control vector(s); build it with n_inputs={n}.")


class MLPNetwork(AbstractControlNetwork):
    """Fully connected network on the ravelled controls (concatenated), output ravelled like the first input."""

    mlp: eqx.nn.MLP
    n_inputs: int = eqx.field(static=True)

    def __init__(self, n_inputs: int, size: int, width: int, depth: int, *, key: PRNGKeyArray):
        if n_inputs < 1 or size < 1 or width < 1 or depth < 1:
            raise InputError("MLPNetwork needs n_inputs, size, width and depth ≥ 1.")
        mlp = eqx.nn.MLP(n_inputs * size, size, width, depth, activation=jax.nn.tanh, key=key)
        self.mlp = eqx.tree_at(lambda m: m.layers[-1], mlp, _zero_last(mlp.layers[-1]))
        self.n_inputs = int(n_inputs)

    def __call__(self, *controls):
        flat, unravel = ravel_pytree(controls[0])
        x = jnp.concatenate([flat] + [ravel_pytree(c)[0] for c in controls[1:]])
        return unravel(self.mlp(x))


class ConvNetwork(AbstractControlNetwork):
    """Periodic (circular padding) conv net on a grid-shaped control (`components` leading fields), inputs as channels."""

    layers: tuple[eqx.nn.Conv, ...]
    n_inputs: int = eqx.field(static=True)
    components: int = eqx.field(static=True)

    def __init__(
        self,
        n_inputs: int,
        ndim: int,
        width: int,
        depth: int,
        kernel_size: int = 3,
        components: int = 1,
        *,
        key: PRNGKeyArray,
    ):
        if ndim not in (1, 2) or kernel_size % 2 != 1 or depth < 1 or width < 1 or components < 1:
            raise InputError("ConvNetwork needs ndim 1 or 2, an odd kernel_size and width, depth, components ≥ 1.")
        keys = jax.random.split(key, depth + 1)
        chans = [n_inputs * components] + [width] * depth + [components]
        pad = kernel_size // 2
        layers = [
            eqx.nn.Conv(ndim, cin, cout, kernel_size, padding=pad, padding_mode="CIRCULAR", key=k)
            for cin, cout, k in zip(chans[:-1], chans[1:], keys)
        ]
        layers[-1] = _zero_last(layers[-1])
        self.layers = tuple(layers)
        self.n_inputs = int(n_inputs)
        self.components = int(components)

    def __call__(self, *controls):
        shape = jnp.shape(controls[0])
        spatial = shape[len(shape) - self.layers[0].num_spatial_dims :]
        x = jnp.concatenate([jnp.reshape(jnp.asarray(c), (-1, *spatial)) for c in controls])  # components as channels
        for layer in self.layers[:-1]:
            x = jax.nn.tanh(layer(x))
        return jnp.reshape(self.layers[-1](x), shape)
