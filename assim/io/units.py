"""Unit conversion for the fields cases read: a small table (velocities, diffusivities, lengths, temperature).

A unit string is a product of tokens, each a unit with an optional integer power (m2, m^2, m**2, s-1), and
'/' divides by what follows. Kelvin and Celsius convert with their 273.15 offset when they stand alone (a
temperature); inside a compound unit (K s-1) or with `anomaly=True` (a temperature difference) they are
the same scale. Unknown unit strings raise the project's InputError naming what is understood.
"""

from __future__ import annotations

import re
from typing import overload

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike

from assim.errors import InputError

_DIMENSIONLESS = {"1": 1.0, "": 1.0, "dimensionless": 1.0, "-": 1.0, "%": 0.01}
_BASE = {  # token: (factor to SI, (length, time, temperature) exponents)
    "m": (1.0, (1, 0, 0)), "gpm": (1.0, (1, 0, 0)), "cm": (1e-2, (1, 0, 0)), "mm": (1e-3, (1, 0, 0)),
    "km": (1e3, (1, 0, 0)), "s": (1.0, (0, 1, 0)), "sec": (1.0, (0, 1, 0)), "min": (60.0, (0, 1, 0)),
    "h": (3600.0, (0, 1, 0)), "hr": (3600.0, (0, 1, 0)), "hour": (3600.0, (0, 1, 0)), "d": (86400.0, (0, 1, 0)),
    "day": (86400.0, (0, 1, 0)), "knots": (1852.0 / 3600.0, (1, -1, 0)), "knot": (1852.0 / 3600.0, (1, -1, 0)),
    "kt": (1852.0 / 3600.0, (1, -1, 0)), "kn": (1852.0 / 3600.0, (1, -1, 0)), "K": (1.0, (0, 0, 1)),
}  # fmt: skip
_CELSIUS = ("degC", "degree_Celsius", "degrees_Celsius", "celsius", "deg_C", "degree_C", "degrees_C")
_OFFSET = {"K": 0.0, **{c: 273.15 for c in _CELSIUS}}
UNDERSTOOD = ("m s-1, m/s, cm s-1, km h-1, knots; m2 s-1, cm2 s-1; m, km, cm, gpm; K, degC; 1 "
              "(powers as m2, m^2 or m**2; '/' divides)")  # fmt: skip


def _parse_units(units: str) -> tuple[float, tuple[int, ...], float | None]:
    """(factor to SI, dimension exponents, offset to kelvin if a plain temperature) of a unit string."""
    s = " ".join(str(units).split()).replace("**", "^").replace("^", "")
    if s.lower() in _DIMENSIONLESS:
        return _DIMENSIONLESS[s.lower()], (0, 0, 0), None
    lookup = {**{k.lower(): k for k in _OFFSET}, **{k.lower(): k for k in _BASE if len(k) > 2}}
    if s in _OFFSET or s.lower() in lookup and lookup[s.lower()] in _OFFSET:
        return 1.0, (0, 0, 1), _OFFSET[s if s in _OFFSET else lookup[s.lower()]]
    factor, dims = 1.0, np.zeros(3, int)
    for i, part in enumerate(s.split("/")):
        for token in filter(None, re.split(r"[\s.*·]+", part)):
            m = re.fullmatch(r"([A-Za-z_]+)(-?\d+)?", token)
            base = m and (
                m.group(1) if m.group(1) in _BASE or m.group(1) in _OFFSET else lookup.get(m.group(1).lower())
            )
            if not base:
                raise InputError(f"unit {units!r} is not understood (at {token!r}); use one of: {UNDERSTOOD}")
            assert m is not None  # base is set only where the token matched
            f, d = _BASE.get(base, (1.0, (0, 0, 1)))
            p = int(m.group(2) or 1) * (-1 if i else 1)
            factor, dims = factor * f**p, dims + p * np.asarray(d)
    return factor, tuple(int(v) for v in dims), None


@overload
def convert_units(
    values_or_da: xr.DataArray, from_units: str, to_units: str, *, anomaly: bool = False
) -> xr.DataArray: ...
@overload
def convert_units(values_or_da: ArrayLike, from_units: str, to_units: str, *, anomaly: bool = False) -> np.ndarray: ...
def convert_units(values_or_da, from_units: str, to_units: str, *, anomaly: bool = False):
    """Values in `to_units`; kelvin <-> Celsius shifts by 273.15 unless `anomaly` (a difference) is set."""
    f0, d0, off0 = _parse_units(from_units)
    f1, d1, off1 = _parse_units(to_units)
    if d0 != d1:
        raise InputError(f"units {from_units!r} do not convert to {to_units!r} (different dimensions); "
                         f"give data in units of {to_units!r} or set the units the file means")  # fmt: skip
    a = f0 / f1
    b = 0.0 if anomaly or off0 is None or off1 is None else off0 - off1
    if isinstance(values_or_da, xr.DataArray):
        out = values_or_da.copy(data=values_or_da.data * a + b)
        out.attrs["units"] = to_units
        return out
    return np.asarray(values_or_da) * a + b
