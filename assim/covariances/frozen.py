"""A background covariance prepared once: its loop-invariant factors (the diffusion normalisation) are kept."""

from __future__ import annotations

from assim.covariances.covariance import AbstractBackgroundCovariance
from assim.errors import InputError


class FrozenCovariance(AbstractBackgroundCovariance):
    """`base.prepare()` computed once and kept: `prepare()` returns it unchanged, so repeated solves (training steps,
    many windows) do not recompute the normalisation. For fixed parameters only: derivatives with respect to the
    base's variance or length scale do not pass through the kept factors (tune those on the unfrozen covariance)."""

    prepared: AbstractBackgroundCovariance

    def __init__(self, base: AbstractBackgroundCovariance):
        if not isinstance(base, AbstractBackgroundCovariance):
            raise InputError(f"FrozenCovariance freezes a background covariance; got {type(base).__name__}.")
        self.prepared = base.prepare()

    def sqrt(self, v):
        return self.prepared.sqrt(v)

    def sqrt_adjoint(self, x):
        return self.prepared.sqrt_adjoint(x)

    def prepare(self):
        return self

    def zero_control(self, background):
        return self.prepared.zero_control(background)

    def rescaled(self, variance_factor, length_factor):
        """The rescaled base, unfrozen (its factors are recomputed for the new hyperparameters by `prepare()`)."""
        return self.prepared.rescaled(variance_factor, length_factor)
