"""Where accepted readings go: one small interface, one module per output.

The subscriber verifies, decrypts and checks for replays; then it hands each accepted
reading (and each device status, each rejection) to every sink in turn, in paho's
network thread. ``flush()`` is called once per batch, after the last message of the
batch and BEFORE the batch is acknowledged to the broker: what a sink has not made
durable by then is delivered again after a crash, never lost. A sink that cannot write
raises :class:`~homewatch.errors.StorageError`; the subscriber then stops without
acknowledging, and the broker keeps the messages for its persistent session.

Sinks: :mod:`.console` (the tutorial's lines on stdout), :mod:`.history` (the history
store the dashboard reads), :mod:`.alerts` (the alerts file's rules; webhook deliveries
on threads of its own, never blocking the caller), :mod:`.homeassistant` (opt-in:
discovery configs and plaintext states for Home Assistant, through the subscriber's own
connection).
"""

from __future__ import annotations

from typing import Protocol

from homewatch.envelope import Reading
from subscriber.rooms import Person


class Sink(Protocol):
    def reading(self, reading: Reading) -> None:
        """An accepted reading (verified, decrypted, not a replay)."""

    def status(self, topic: str, device: str, status: str) -> None:
        """A known device's broker-kept status: ``online`` or ``offline``."""

    def rejected(self, topic: str, device: str | None, reason: str) -> None:
        """A rejected message; ``device`` is None unless the topic names a known one."""

    def person(self, person: Person) -> None:
        """A person's fused state changed (arrived, left, moved to another room, not
        seen: ``unknown`` once only Pis that no longer vouch had them home): see
        :mod:`subscriber.rooms`. Called after ``reading()`` or ``status()`` of the report
        or status that did it (or when a removed Pi's key ring is found gone)."""

    def flush(self) -> None:
        """Make what was handed over durable; raises StorageError when it cannot."""

    def close(self) -> None: ...
