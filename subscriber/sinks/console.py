"""The console sink: the tutorial's ``Topic:...,Payload:...`` line per reading on stdout
(``--json``: one JSON object per line). Invented data ends in ``[demo]`` or
``[simulated]``; a reading that arrives late in ``[late ...]`` with when it was taken."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TextIO

from homewatch.envelope import STATUS_KIND, Reading
from homewatch.errors import StorageError
from subscriber.rooms import Person


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_reading(reading: Reading, *, as_json: bool) -> str:
    """The tutorial's ``Topic:...,Payload:...`` line; invented data ends in ``[demo]`` or
    ``[simulated]``, a reading that arrives late in ``[late ...]`` with when it was taken.
    ``--json`` says the same in ``simulated``, ``late`` (seconds) and ``taken_at``."""
    if as_json:
        return json.dumps({"topic": reading.topic, "device": reading.device,
                           "kind": reading.kind, "seq": reading.seq,
                           "sent_at": reading.sent_at, "taken_at": reading.taken_at,
                           "simulated": reading.simulated,
                           "late": None if reading.late is None else round(reading.late, 1),
                           "data": reading.data})
    line = f"Topic:{reading.topic},Payload:{json.dumps(reading.data)}"
    if reading.simulated:
        line += f" [{reading.simulated}]"
    if reading.late is not None:
        taken = reading.taken_at if reading.taken_at is not None else reading.sent_at
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(taken))
        line += f" [late {_duration(reading.late)}: taken {when}]"
    return line


def format_status(topic: str, device: str, status: str, *, as_json: bool) -> str:
    if as_json:
        return json.dumps({"topic": topic, "device": device, "kind": STATUS_KIND,
                           "status": status})
    return f"Topic:{topic},Payload:{json.dumps(status)}"


class ConsoleSink:
    """Lines on a text stream, written out by ``flush()`` (once per batch): a batch is
    shown all at once, right before it is recorded as shown, never line by line while
    the rest of it is still being handled. A stream that cannot be written is a
    StorageError."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self._lines: list[str] = []

    def reading(self, reading: Reading) -> None:
        self._lines.append(format_reading(reading, as_json=self.as_json) + "\n")

    def status(self, topic: str, device: str, status: str) -> None:
        self._lines.append(format_status(topic, device, status, as_json=self.as_json) + "\n")

    def rejected(self, topic: str, device: str | None, reason: str) -> None:
        """Rejections go to the log (rate-limited there), not to the readings' stream."""

    def person(self, person: Person) -> None:
        """The fused state is for the sinks that act on it; the console shows reports."""

    def flush(self) -> None:
        lines, self._lines = "".join(self._lines), []
        if lines:
            self._write(self.out.write, lines)
        self._write(self.out.flush)

    def close(self) -> None:
        self.flush()

    @staticmethod
    def _write(write: Callable[..., object], *args: str) -> None:
        try:
            write(*args)
        except OSError as exc:
            raise StorageError(f"writing the output failed: {exc.strerror or exc}") from None
