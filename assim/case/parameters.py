"""Physical parameters of a model by field name, for [discover] and [truth]: read, check and set them."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from assim.case.config import Case
from assim.errors import ConfigError
from models.base import AbstractModel

MAX_PARAMETER_SIZE = 64


def model_parameters(model: AbstractModel) -> dict[str, jax.Array]:
    """The model's physical parameters by field name: its array fields of at most MAX_PARAMETER_SIZE values."""
    out = {}
    for f in dataclasses.fields(model):
        value = getattr(model, f.name, None)
        if isinstance(value, (jax.Array, np.ndarray)) and np.size(value) <= MAX_PARAMETER_SIZE:
            out[f.name] = value
    return out


def check_parameter_names(model: AbstractModel, names, section: str, kind: str) -> None:
    """ConfigError naming the first `section.NAME` that is not a parameter of the model, and the valid names."""
    known = model_parameters(model)
    for name in names:
        if name not in known:
            raise ConfigError(f"{section}.{name}: the {kind} model has no parameter {name!r}; "
                              f"use one of {sorted(known)}")  # fmt: skip


def with_parameters(model: AbstractModel, values: dict[str, float]) -> AbstractModel:
    """The model with the named parameters set to the given values (broadcast to each field's shape)."""
    names = tuple(values)
    current = model_parameters(model)
    new = tuple(jnp.broadcast_to(jnp.asarray(values[n], dtype=float), jnp.shape(current[n])) for n in names)
    return eqx.tree_at(lambda m: tuple(getattr(m, n) for n in names), model, new)


def truth_model(case: Case, model: AbstractModel) -> AbstractModel:
    """The model that runs the truth: the case's model, with [truth.parameters] applied (model error)."""
    if case.truth is None:
        return model
    check_parameter_names(model, case.truth.parameters, "truth.parameters", case.model.kind)
    return with_parameters(model, case.truth.parameters)


__all__ = ["MAX_PARAMETER_SIZE", "check_parameter_names", "model_parameters", "truth_model", "with_parameters"]
