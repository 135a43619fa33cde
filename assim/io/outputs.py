"""Output directories: refused before the work when unusable or busy, written atomically, left as they were on failure.

`check_directory(d)` raises a one-line `ConfigError` when `d` is an existing file, lies under a
file, cannot be written, or is locked by another run. `AtomicOutputs(d)` (a context manager)
creates `d`, takes its lock `d/.assim.lock` (created atomically with O_CREAT | O_EXCL, holding
"pid host"), hands out temporary paths, and on exit either renames every file to its final name
or, on any failure (Ctrl-C included), removes the temporary files, the lock and every directory
it created. A stale lock, whose process no longer runs on this host, is replaced; a lock written
on another host is never removed automatically: delete it by hand when no run uses the directory.
This module imports neither JAX nor xarray, so the checks cost nothing before a run.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Self

from assim.errors import ConfigError

LOCK = ".assim.lock"
_HELD: dict[Path, int] = {}  # directories this process has locked → how many AtomicOutputs share the lock
_OPEN: list[AtomicOutputs] = []  # entered and not yet exited: what `abandon_all` removes
_RENAMING = threading.Lock()  # a commit's renames and `abandon_all` never interleave


def _key(directory: Path) -> Path:
    return Path(os.path.abspath(directory))


def _holder(lock: Path) -> str | None:
    """Who holds a lock ("pid N on HOST"), or None when there is no lock or it is stale (its process has ended)."""
    try:
        text = lock.read_text().split()
    except FileNotFoundError:
        return None
    except OSError:
        return "an unknown run (unreadable lock)"
    if len(text) != 2 or not text[0].isdigit():
        return "an unknown run"  # also a lock being written right now: never taken over
    pid, host = int(text[0]), text[1]
    if host != socket.gethostname():
        return f"pid {pid} on {host}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return f"pid {pid} on {host}"


def _busy(directory: Path, holder: str) -> ConfigError:
    return ConfigError(f"--out {directory}: in use by another assim run ({holder}; lock {directory / LOCK}); "
                       "wait for it to finish, choose another --out, or delete the lock if no run uses it")  # fmt: skip


def check_directory(directory: str | Path) -> None:
    """Raise ConfigError if `directory` is a file, lies under a file, cannot be written, or another run holds it."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"--out {d}: is an existing file, not a directory; choose another output directory")
    parent = d
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {d}: {parent} is a file, not a directory; choose another output directory")
    try:  # a real probe: permissions, read-only file systems and /proc alike
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {d}: cannot write in {parent} ({exc.strerror}); choose a directory you can "
                          "write to") from None  # fmt: skip
    if _key(d) not in _HELD and (holder := _holder(d / LOCK)) is not None:
        raise _busy(d, holder)


def _acquire(directory: Path) -> None:
    """Take the directory's lock (shared within this process), replacing a stale one."""
    key = _key(directory)
    if key in _HELD:
        _HELD[key] += 1
        return
    lock = directory / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None:
                raise _busy(directory, holder) from None
            lock.unlink(missing_ok=True)  # stale: its process has ended
            continue
        except OSError as exc:
            raise ConfigError(f"--out {directory}: cannot write there ({exc.strerror}); choose a directory "
                              "you can write to") from None  # fmt: skip
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        _HELD[key] = 1
        return
    raise _busy(directory, "a run that took over a stale lock")


def _release(directory: Path) -> None:
    key = _key(directory)
    _HELD[key] -= 1
    if _HELD[key] == 0:
        del _HELD[key]
        (directory / LOCK).unlink(missing_ok=True)


class AtomicOutputs:
    """Files written under temporary names in a locked output directory and renamed together by `commit()`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        check_directory(self.directory)
        self._pending: list[tuple[Path, Path]] = []
        self._created: list[Path] = []

    def path(self, name: str) -> Path:
        """A fresh temporary path for output `name` (renamed to `name` on commit)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=self.directory)
        os.close(fd)
        tmp = Path(tmp)
        self._pending.append((tmp, self.directory / name))
        return tmp

    def write_text(self, name: str, text: str) -> None:
        """Write a text output."""
        self.path(name).write_text(text)

    def commit(self) -> list[Path]:
        """Rename every temporary file to its final name."""
        done = []
        umask = os.umask(0)
        os.umask(umask)
        with _RENAMING:
            for tmp, final in self._pending:
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
                os.replace(tmp, final)
                done.append(final)
            self._pending = []
        return done

    def discard(self) -> None:
        """Remove every temporary file not yet committed."""
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending = []

    def __enter__(self) -> Self:
        missing = self.directory
        while not missing.exists() and missing != missing.parent:
            self._created.insert(0, missing)
            missing = missing.parent
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _acquire(self.directory)
            _OPEN.append(self)
        except OSError as exc:
            self._remove_created()
            raise ConfigError(f"--out {self.directory}: cannot create it ({exc.strerror}); choose a directory you "
                              "can write to") from None  # fmt: skip
        except BaseException:
            self._remove_created()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.discard()
        finally:
            if self in _OPEN:
                _OPEN.remove(self)
                _release(self.directory)
            if exc_type is not None:
                self._remove_created()

    def _remove_created(self) -> None:
        """Remove the directories this object created, deepest first, where they are empty."""
        for d in reversed(self._created):
            try:
                d.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break  # not empty: another process wrote there
        self._created = []


def abandon_all() -> None:
    """Remove what every open AtomicOutputs has written, its lock and the directories it created (on Ctrl-C)."""
    with _RENAMING:
        while _OPEN:
            outputs = _OPEN.pop()
            outputs.discard()
            _release(outputs.directory)
            outputs._remove_created()


__all__ = ["LOCK", "AtomicOutputs", "abandon_all", "check_directory"]
