"""A heartbeat file for container health checks.

A running program touches its health file while it is connected to the broker; the
check (``homewatch health FILE``) passes while the file is younger than ``max_age``.
A disconnected or hung program stops touching it and turns unhealthy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class Heartbeat:
    def __init__(self, path: Path | None, *, every: float = 5.0) -> None:
        self._path = path
        self._every = every
        self._last = 0.0

    def beat(self, healthy: bool) -> None:
        if self._path is None or not healthy:
            return
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        self._path.touch()
        os.utime(self._path)

    def clear(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)


def is_fresh(path: Path, max_age: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime <= max_age
    except OSError:
        return False
