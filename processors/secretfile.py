"""Secrets kept in files (a mounted Kubernetes Secret, a secret manager's file), read again when the
file changes, so a secret rotates without a restart.

A file is checked at most once a second (one stat: its identity, size and time); Kubernetes
replaces a mounted Secret's files atomically, which changes all three. A file that becomes
unreadable or empty keeps the last values it had, and says so once in the log: a glitch of the
mount must neither lock everybody out nor let everybody in.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from processors import logs
from processors.errors import ConfigError

log = logs.get("kycstream.secrets")


def read_lines(path: Path) -> tuple[str, ...]:
    """The file's secrets, one per line; blank lines and lines starting with # are not secrets."""
    text = path.read_text(encoding="utf-8")
    return tuple(s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))


def secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A setting given as `value`, or in `file` (its first secret line), read now."""
    if value is not None:
        return value.get_secret_value() or None
    if file is not None:
        try:
            lines = read_lines(file)
        except OSError as exc:
            raise ConfigError(f"secret file {file}: {exc.strerror}: mount it or fix the path") from exc
        return lines[0] if lines else None
    return None


class SecretFile:
    def __init__(self, path: Path, *, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._values = read_lines(path)
            self._stamp = self._stat()
        except OSError as exc:
            raise ConfigError(f"secret file {path}: {exc.strerror}: mount it or fix the path") from exc
        if not self._values:
            raise ConfigError(f"secret file {path} holds no secret (one per line; # starts a comment)")
        self._checked = clock()
        self._failing = False

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)  # follows the symlinks Kubernetes swaps on update
        return st.st_ino, st.st_size, st.st_mtime_ns

    @property
    def values(self) -> tuple[str, ...]:
        """The current secrets (re-read if the file changed since the last look, at most once a second)."""
        now = self._clock()
        if now - self._checked < self._interval:
            return self._values
        with self._lock:
            if now - self._checked >= self._interval:
                self._checked = now
                self._refresh()
            return self._values

    @property
    def value(self) -> str:
        return self.values[0]

    def _refresh(self) -> None:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            values = read_lines(self.path)
        except OSError as exc:
            self._complain(f"unreadable ({exc.strerror})")
            return
        if not values:
            self._complain("empty")
            return
        self._stamp, self._values, self._failing = stamp, values, False
        log.info("secret_file_reloaded", path=str(self.path), secrets=len(values))  # how many, never what

    def _complain(self, what: str) -> None:
        if not self._failing:
            log.error("secret_file_unusable", path=str(self.path), problem=what, kept="the previous secrets")
        self._failing = True
