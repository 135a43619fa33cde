"""ConvNetwork on multi-component grid controls (e.g. a (2, ny, nx) velocity): components are channels, the output
has the control's shape, the map is periodic-translation equivariant and couples the components."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from assim.errors import InputError
from assim.learned.networks import ConvNetwork

APPLY = eqx.filter_jit(lambda net, *inputs: net(*inputs))


def test_components_are_channels_of_a_translation_equivariant_map():
    net = ConvNetwork(2, 2, 4, 1, components=2, key=jax.random.PRNGKey(0))
    x, y = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 6, 6))
    np.testing.assert_array_equal(APPLY(net, x, y), np.zeros((2, 6, 6)))  # starts at zero
    last = net.layers[-1]
    net = eqx.tree_at(lambda n: n.layers[-1].weight, net, jax.random.normal(jax.random.PRNGKey(2), last.weight.shape))
    out = APPLY(net, x, y)
    assert out.shape == (2, 6, 6) and float(jnp.abs(out).max()) > 0
    shift = lambda a: jnp.roll(a, (1, 2), axis=(-2, -1))  # noqa: E731
    np.testing.assert_allclose(APPLY(net, shift(x), shift(y)), shift(out), atol=1e-12)
    # component 1 of the input changes component 0 of the output: the components are coupled, not stacked copies
    bumped = APPLY(net, x.at[1].add(1.0), y)
    assert float(jnp.abs(bumped[0] - out[0]).max()) > 1e-6


def test_bad_components_raise():
    with pytest.raises(InputError, match="components"):
        ConvNetwork(1, 2, 4, 1, components=0, key=jax.random.PRNGKey(0))
