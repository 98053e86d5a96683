"""A heartbeat file for container health checks.

A running program touches its health file while it is connected to the broker; the
check (``homewatch health FILE``) passes while the file is younger than ``max_age``.
A disconnected or hung program stops touching it and turns unhealthy. A program that
stopped after a failure writes the reason into the file (``fail``): the check fails at
once and prints it, until the program's next start.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FAILED = "failed: "


class Heartbeat:
    def __init__(self, path: Path | None, *, every: float = 5.0) -> None:
        self._path = path
        self._every = every
        self._last = 0.0
        self._failed = False
        self._fresh_start = True

    def beat(self, healthy: bool) -> None:
        if self._path is None or not healthy or self._failed:
            return
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        if self._fresh_start:  # forget a previous run's failure
            self._path.write_bytes(b"")
            self._fresh_start = False
        self._path.touch()
        os.utime(self._path)

    def fail(self, reason: str) -> None:
        """Unhealthy from now on, with ``reason`` for the health check to show."""
        self._failed = True
        if self._path is None:
            return
        try:
            self._path.write_text(FAILED + reason.replace("\n", " ") + "\n", encoding="utf-8")
            os.utime(self._path, (0, 0))
        except OSError:  # a full or read-only disk: then at least no stale heartbeat
            self._path.unlink(missing_ok=True)

    def clear(self) -> None:
        if self._path is not None and not self._failed:
            self._path.unlink(missing_ok=True)


def is_fresh(path: Path, max_age: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime <= max_age
    except OSError:
        return False


def unhealthy_reason(path: Path, max_age: float) -> str | None:
    """Why the program behind ``path`` is unhealthy, or None if it is healthy."""
    if is_fresh(path, max_age):
        return None
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        age = time.time() - path.stat().st_mtime
    except OSError:
        return f"{path} is missing: the program is not running or not connected"
    if text.startswith(FAILED):
        return text
    return f"{path} not touched for {age:.0f} s: the program is disconnected or hung"
