"""Models that assim does not ship: load `module:attribute` (or a .py file's attribute) named by a case file.

Two documented forms (`model.form`): a factory `attribute(grid, dt, **parameters)` that returns a
`models.base.AbstractModel`, or a pure JAX step function `attribute(state, t, parameters) -> state`,
wrapped in `models.function_model.FunctionModel`. Anything that does not follow the interface stops
the case with one line naming the module, the attribute and what is wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
from jaxtyping import ArrayLike

from assim.errors import ConfigError, InputError
from models.base import AbstractModel
from models.function_model import FunctionModel
from models.grid import AbstractGrid


def _import(config):
    """The module named by model.module, or the module of model.file (imported once per process)."""
    if config.module is not None:
        try:
            return importlib.import_module(config.module), config.module
        except ImportError as exc:
            raise ConfigError(f"model.module: cannot import {config.module!r} ({exc}); install it or put it on "
                              "PYTHONPATH, or give model.file") from None  # fmt: skip
    path = Path(config.file)
    if not path.is_file() or path.suffix != ".py":
        raise ConfigError(f"model.file: {config.file!r} is not a .py file; give the path of the module that defines "
                          f"{config.attribute!r} (relative to the case file)")  # fmt: skip
    name = f"assim_user_model_{abs(hash(str(path.resolve())))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # not for a .py file
            raise ConfigError(f"model.file: cannot import {config.file!r}; give the path of a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's code
            raise ConfigError(f"model.file: importing {config.file!r} failed: {type(exc).__name__}: {exc}") from None
        sys.modules[name] = module
    return sys.modules[name], config.file


def load_model(config, grid: AbstractGrid, dt: float, state: ArrayLike) -> AbstractModel:
    """The user's model on `grid` with time step `dt` (`state`: an example state, for the step form)."""
    module, where = _import(config)
    target = getattr(module, config.attribute, None)
    if not callable(target):
        raise ConfigError(f"model.attribute: {where} has no callable {config.attribute!r}; define it or fix the name")
    parameters = dict(config.parameters)
    if config.form == "step":
        try:
            return FunctionModel(target, dt, np.asarray(state), parameters)
        except InputError as exc:
            raise ConfigError(f"model.attribute: {where}:{config.attribute} {exc}") from None
    try:
        model = target(grid, dt, **parameters)
    except Exception as exc:  # the user's code
        raise ConfigError(f"model.attribute: {where}:{config.attribute}(grid, dt, **parameters) failed: "
                          f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    if not isinstance(model, AbstractModel):
        raise ConfigError(f"model.attribute: {where}:{config.attribute} returned a {type(model).__name__}, not a "
                          "models.base.AbstractModel; return an equinox module with step(state, t), dt and "
                          "state_shape(), or set model.form = 'step' for a step function")  # fmt: skip
    try:
        model.check_state(state)
    except InputError as exc:
        raise ConfigError(f"model.attribute: {where}:{config.attribute}: {exc}") from None
    return model


__all__ = ["load_model"]
