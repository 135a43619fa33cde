"""The base of every case-file table: unknown keys are errors and values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A case-file table: unknown keys are errors, numbers are finite, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def check(self, path: str, case, fail) -> None:
        """Cross-field checks of this table at `path` against the whole `case` (`fail(key, text)` reports one)."""


__all__ = ["Strict"]
