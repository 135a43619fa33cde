"""The variants of a sweep: `--vary KEY.SUB=V1,V2,...` parsed as TOML values, and their cartesian product."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from assim.case.config import parse_override
from assim.errors import ConfigError

__all__ = ["Vary", "parse_vary", "variants"]


@dataclass(frozen=True)
class Vary:
    """One varied key: its dotted path, the values as written on the command line and as parsed (TOML)."""

    key: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]

    def coordinate(self) -> np.ndarray:
        """Coordinate values: the numbers when every value is a number, the texts otherwise."""
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)
        if numeric:
            return np.asarray(self.values, dtype=float if any(isinstance(v, float) for v in self.values) else int)
        return np.asarray([v if isinstance(v, str) else t for v, t in zip(self.values, self.texts)], dtype=object)


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes (values may be TOML arrays or inline tables)."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_vary(text: str) -> Vary:
    """`key.sub=v1,v2,...` → a `Vary` (ConfigError naming the fix on bad syntax, empty or repeated values)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    example = "e.g. --vary observations.noise=0.01,0.05"
    if not sep or not key or not raw.strip():
        raise ConfigError(f"--vary {text!r}: expected KEY.SUB=V1,V2,..., {example}")
    texts = tuple(_split_top_level(raw))
    if any(not t for t in texts):
        raise ConfigError(f"--vary {text!r}: empty value in the list; separate values by single commas, {example}")
    values = tuple(parse_override(f"{key}={t}")[1] for t in texts)
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise ConfigError(f"--vary {text!r}: a value is repeated; list each value once")
    return Vary(".".join(parse_override(f"{key}=0")[0]), texts, values)


def variants(varies: Sequence[Vary]) -> list[list[str]]:
    """Overrides of every variant (cartesian product, the last key varying fastest)."""
    keys = [v.key for v in varies]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--vary: key {next(k for k in keys if keys.count(k) > 1)!r} is given twice; "
                          "list all its values in one --vary")  # fmt: skip
    return [[f"{v.key}={t}" for v, t in zip(varies, combo)] for combo in itertools.product(*(v.texts for v in varies))]


def _label(overrides: Sequence[str]) -> str:
    return " ".join(overrides) or "(base case)"
