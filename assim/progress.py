"""A light training progress bar: one self-rewriting line on stderr with the step, loss and validation figures."""

from __future__ import annotations

import sys
from typing import TextIO


class ProgressBar:
    """`[#####.....] step/n  loss …  validation …  skipped …` rewritten in place on a text stream (stderr)."""

    def __init__(self, stream: TextIO | None = None, width: int = 24):
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self._shown = False

    @staticmethod
    def wanted(progress: bool | None) -> bool:
        """Show a bar when asked (True), never when refused (False), else only when stderr is a terminal."""
        if progress is None:
            return bool(getattr(sys.stderr, "isatty", lambda: False)())
        return bool(progress)

    def update(self, step: int, n_steps: int, loss: float, validation: float | None, skipped: int) -> None:
        """Redraw the line for a finished training step."""
        filled = min(self.width, self.width * step // max(n_steps, 1))
        bar = "#" * filled + "." * (self.width - filled)
        text = f"\r[{bar}] {step}/{n_steps}  loss {loss:.4g}"
        if validation is not None:
            text += f"  validation {validation:.4g}"
        text += f"  skipped {skipped}"
        self.stream.write(text + "\x1b[K")  # clear what a longer previous line left
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """End the line (the bar stays visible above what follows)."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
