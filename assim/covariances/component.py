"""Background covariance of an array state with a leading component axis, e.g. 2-D Burgers velocity (2, ny, nx).

`BlockCovariance` covers pytree states (a tuple or dict of fields); this covers one array whose
slices `x[i]` are the components: B = diag(B_0, B_1, …), each B_i a covariance on the grid,
so components are uncorrelated with each other and correlated in space as B_i says.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, Float

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.errors import GridMismatchError, InputError


class ComponentCovariance(AbstractBackgroundCovariance):
    """Independent background covariances for the components along the leading axis of an array state."""

    blocks: tuple[AbstractBackgroundCovariance, ...]

    def __init__(self, blocks: Sequence[AbstractBackgroundCovariance]):
        blocks = tuple(blocks)
        if not blocks or not all(isinstance(b, AbstractBackgroundCovariance) for b in blocks):
            raise InputError(
                "ComponentCovariance needs one background covariance per state component, e.g. "
                "ComponentCovariance([SpectralGaussianCovariance(grid, ...)] * 2) for a (2, ny, nx) velocity."
            )
        self.blocks = blocks

    def _check(self, x: Array) -> None:
        if jnp.shape(x)[:1] != (len(self.blocks),):
            raise GridMismatchError(
                f"ComponentCovariance has {len(self.blocks)} blocks but the state has shape "
                f"{jnp.shape(x)}; give one block per slice along the state's leading axis."
            )

    def sqrt(self, v: Float[Array, "component ..."]) -> Float[Array, "component ..."]:
        """State increment B^{1/2} v, component by component."""
        self._check(v)
        return jnp.stack([b.sqrt(v[i]) for i, b in enumerate(self.blocks)])

    def sqrt_adjoint(self, x: Float[Array, "component ..."]) -> Float[Array, "component ..."]:
        """Control-space vector (B^{1/2})ᵀ x, component by component."""
        self._check(x)
        return jnp.stack([b.sqrt_adjoint(x[i]) for i, b in enumerate(self.blocks)])

    def prepare(self) -> ComponentCovariance:
        return ComponentCovariance([b.prepare() for b in self.blocks])

    def zero_control(self, background: Float[Array, "component ..."]) -> Float[Array, "component ..."]:
        """Each block's zero control for its component, stacked (every block must give the same control shape)."""
        self._check(background)
        parts = [b.zero_control(background[i]) for i, b in enumerate(self.blocks)]
        shapes = {tuple(jnp.shape(p)) for p in parts}
        if len(shapes) > 1:
            raise InputError(
                f"ComponentCovariance stacks its blocks' controls, but they have shapes {sorted(shapes)}; give every "
                "component the same control shape (e.g. the same mask), or use BlockCovariance over a tuple of fields."
            )
        return jnp.stack(parts)
