"""A covariance multiplied by a scale s ≥ 0: s·B with square root √s·B^{1/2} (inflation, model-error level)."""

from __future__ import annotations

import jax
import jax.core  # jax.core.Tracer: `import jax` alone does not show the submodule to type checkers
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.errors import InputError, NonFiniteError
from models.base import as_field


class ScaledCovariance(AbstractBackgroundCovariance):
    """s·B for a base covariance B and a scalar s ≥ 0 (differentiable; s = 0 switches the term off)."""

    base: AbstractBackgroundCovariance
    scale: Float[Array, ""]

    def __init__(self, base: AbstractBackgroundCovariance, scale: Float[ArrayLike, ""]):
        if not isinstance(base, AbstractBackgroundCovariance):
            raise InputError(f"ScaledCovariance scales a covariance strategy; got {type(base).__name__}.")
        if np.shape(scale) != ():
            raise InputError(f"the covariance scale is one number; got shape {np.shape(scale)}.")
        if not isinstance(scale, jax.core.Tracer):
            s = float(np.asarray(scale))
            if not np.isfinite(s):
                raise NonFiniteError("the covariance scale is NaN or inf; give a finite number ≥ 0.")
            if s < 0:
                raise InputError(f"the covariance scale multiplies a variance and must be ≥ 0; got {s:.3g}.")
        self.base = base
        self.scale = as_field(scale)

    def sqrt(self, v):
        return jax.tree_util.tree_map(lambda x: jnp.sqrt(self.scale) * x, self.base.sqrt(v))

    def sqrt_adjoint(self, x):
        return self.base.sqrt_adjoint(jax.tree_util.tree_map(lambda y: jnp.sqrt(self.scale) * y, x))

    def prepare(self):
        return ScaledCovariance(self.base.prepare(), self.scale)

    def zero_control(self, background):
        """The base covariance's zero control (scaling does not change the control space)."""
        return self.base.zero_control(background)
