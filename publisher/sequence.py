"""The per-device sequence number, monotonic across restarts.

Numbers are reserved in blocks written (fsync) to a state file before use, so a crash
skips at most one block and never reuses a number. A fresh counter starts at the
current time in milliseconds, so a device whose state was lost (a new SD card) still
continues above what the subscriber has seen, provided its clock is right.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from homewatch.errors import ConfigError
from homewatch.secrets import write_private_file


class SequenceCounter:
    def __init__(self, path: Path | None, *, block: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._block = block
        stored = 0
        if path is not None and path.exists():
            try:
                stored = int(path.read_text(encoding="ascii").strip())
            except (OSError, ValueError):
                raise ConfigError(f"sequence state file {path} is unreadable or corrupt; "
                                  "delete it to start again from the clock") from None
        self._next = max(stored, int(clock() * 1000))
        self._reserved = self._next

    def next(self) -> int:
        if self._next >= self._reserved:
            self._reserved = self._next + self._block
            if self._path is not None:
                write_private_file(self._path, f"{self._reserved}\n")
        value = self._next
        self._next += 1
        return value
