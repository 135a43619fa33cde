"""Implicit θ-schemes for linear stiff terms: backward Euler (θ=1) and Crank–Nicolson (θ=½)."""

import abc

import equinox as eqx

from models.errors import InputError


class AbstractThetaScheme(eqx.Module):
    """One-step θ-method: u' − θΔt L u' = u + (1−θ)Δt L u."""

    @property
    @abc.abstractmethod
    def theta(self) -> float:
        """Implicitness weight θ ∈ [½, 1]."""


class BackwardEuler(AbstractThetaScheme):
    """θ = 1: first order, L-stable."""

    @property
    def theta(self) -> float:
        return 1.0


class CrankNicolson(AbstractThetaScheme):
    """θ = ½: second order, A-stable, non-dissipative."""

    @property
    def theta(self) -> float:
        return 0.5


class OffCentred(AbstractThetaScheme):
    """θ-scheme with a chosen implicitness θ ∈ [½, 1] (θ slightly above ½ damps the fastest gravity waves)."""

    value: float = eqx.field(static=True)

    def __check_init__(self):
        if not 0.5 <= self.value <= 1.0:
            raise InputError(f"the implicitness θ must lie in [0.5, 1]; got {self.value}.")

    @property
    def theta(self) -> float:
        return self.value
