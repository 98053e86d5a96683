"""The subscriber: each message is verified, decrypted, checked against replays, handed
to the sinks (console, history: :mod:`subscriber.sinks`), recorded and acknowledged in
paho's network thread as it arrives, one thread per connection and no queue in between:
the next message is read only when this one is settled, so a subscriber that cannot keep
up slows the broker's delivery to it (backpressure; the broker holds the rest) instead of
filling memory. The program's own thread only watches the clock: health file, log
summaries, replay-state snapshots.

Exactly-once display: a message is acknowledged to the broker only after every sink made
it durable (shown, kept in the history) and its (device, sequence number) was recorded;
QoS 1 redeliveries and replays are dropped by sequence number. The record is an
append-only log (one write per message, no fsync) plus a periodic snapshot, so it
survives a crash or ``kill -9`` of the subscriber.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from homewatch.envelope import STATUS_KIND, Opener, ReplayGuard
from homewatch.errors import EnvelopeError, StorageError
from homewatch.health import Heartbeat
from homewatch.secrets import ensure_private_dir, write_private_file
from subscriber.rooms import Person, Rooms, room_of_reading
from subscriber.sinks import Sink

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 30.0
REMOVED_RECHECK = 10.0  # seconds between looks for Pis whose key ring is gone
STATUSES = {b"online": "online", b"offline": "offline"}


class RejectionLog:
    """One log line per rejected message, but at most ``burst`` per reason and window:
    a flood of junk cannot flood the log (or the disk); what was not logged is counted
    and summarised once per window."""

    def __init__(self, *, burst: int = 20, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._window = window
        self._clock = clock
        self._start = clock()
        self._logged: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()

    def rejected(self, topic: str, exc: EnvelopeError) -> None:
        self.tick()
        if self._logged[exc.reason] < self._burst:
            self._logged[exc.reason] += 1
            log.warning("rejected message on %s: %s", topic, exc)
        else:
            self._suppressed[exc.reason] += 1

    def tick(self) -> None:
        if self._clock() - self._start < self._window:
            return
        self.flush()
        self._start = self._clock()
        self._logged.clear()

    def flush(self) -> None:
        for reason, count in sorted(self._suppressed.items()):
            log.warning("%d more message(s) rejected (%s) and not logged one by one",
                        count, reason)
        self._suppressed.clear()


class ReplayState:
    """The replay window on disk: ``<name>.json`` snapshot + ``<name>.log`` of what was
    shown since (``device seq sent_at`` per line). A new state is saved at once, so that
    when it began (what a late reading is checked against) survives a crash. A write that
    fails raises StorageError and leaves nothing half-recorded in memory to be written
    later."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = path.with_suffix(".log")
        self._fd: int | None = None
        self._pending: list[str] = []  # recorded, written by the next flush()
        self._since_snapshot = time.monotonic()

    def load(self) -> ReplayGuard:
        try:
            guard = ReplayGuard.from_json(json.loads(self.path.read_text(encoding="utf-8")),
                                          saved=self.path.stat().st_mtime)
            fresh = False
        except FileNotFoundError:
            guard, fresh = ReplayGuard(), True
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("replay state %s unreadable (%s); starting a new one, which refuses "
                        "late readings sent before it began", self.path, exc)
            guard, fresh = ReplayGuard(), True
        try:
            lines = self.journal.read_text(encoding="utf-8", errors="replace").split("\n")
        except FileNotFoundError:
            lines = []
        for line in lines[:-1]:  # the last piece is empty, or torn by a crash or full disk
            fields = line.split(" ")  # device seq sent_at (device seq: before send times)
            if len(fields) in (2, 3) and all(f.isdigit() for f in fields[1:]):
                # (a number already in the snapshot, or behind the window, changes nothing)
                guard.commit(fields[0], int(fields[1]),
                             int(fields[2]) if len(fields) == 3 else None)
        if fresh:
            ensure_private_dir(self.path.parent)
            self.snapshot(guard)
        return guard

    def record(self, device: str, seq: int, sent_at: int) -> None:
        self._pending.append(f"{device} {seq} {sent_at}\n")

    def flush(self) -> None:
        """Append what was recorded since the last flush to the journal."""
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8")
        try:
            if self._fd is None:
                ensure_private_dir(self.journal.parent)
                self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise StorageError(f"replay journal {self.journal}: {exc.strerror}") from None
        self._pending.clear()

    def snapshot_due(self) -> bool:
        return time.monotonic() - self._since_snapshot >= SNAPSHOT_EVERY

    def snapshot(self, guard: ReplayGuard) -> None:
        """Write the whole window, then empty the journal it now contains."""
        self.flush()
        try:
            write_private_file(self.path, json.dumps(guard.to_json()))
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self.journal.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"replay state {self.path}: {exc.strerror}") from None
        self._since_snapshot = time.monotonic()


class Subscriber:
    """Verify, decrypt, check for replays; then hand over to the sinks (console,
    history, ...), and acknowledge once every sink has made the batch durable."""

    def __init__(self, opener: Opener, sinks: Sequence[Sink], *,
                 state: ReplayState | None = None,
                 ack: Callable[[int, int], None] | None = None,
                 rooms: Rooms | None = None) -> None:
        self.opener = opener
        self.sinks = tuple(sinks)
        self.rooms = rooms if rooms is not None else Rooms()
        self.state = state
        self.ack = ack
        self.accepted = 0
        self.count = 0  # stop after this many readings (0: never); see run()
        self.done = threading.Event()
        self._lock = threading.Lock()  # paho's thread handles; ours ticks and snapshots
        self.statuses = 0
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0  # copies of readings already shown: dropped, not rejections
        self.rejection_log = RejectionLog()
        self._unacked: list[tuple[int, int]] = []  # settled, waiting for end_batch()
        self._removed_checked = time.monotonic()

    def add_sink(self, sink: Sink) -> None:
        """One more output (before the connection starts)."""
        with self._lock:
            self.sinks = (*self.sinks, sink)

    def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """paho callback (its network thread): handle the message there and then; its
        output, record and acknowledgement go out with the batch (``end_batch``, which
        the connection calls after each batch it read)."""
        self.handle(topic, payload, mid, qos)

    def end_batch(self) -> None:
        """After each batch paho read: the sinks make it durable, then the replay
        record of it is written, then it is acknowledged. In that order, a crash can
        repeat a reading (the history keeps one copy), never lose one: a reading
        recorded as shown but missing from a sink would never come again."""
        with self._lock:
            self._flush_sinks()
            if self.state is not None:
                self.state.flush()
            if self.ack is not None:
                for mid, qos in self._unacked:
                    self.ack(mid, qos)
            self._unacked.clear()

    def _flush_sinks(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def handle(self, topic: str, payload: bytes, mid: int = 0, qos: int = 0) -> bool:
        """Show one message (or reject it); it is acknowledged with its batch."""
        with self._lock:
            try:
                shown = self._show(topic, payload)
            except EnvelopeError as exc:
                if exc.reason == "duplicate":
                    self.duplicates += 1
                    log.debug("dropped a copy on %s: %s", topic, exc)
                else:
                    self.rejected[exc.reason] += 1
                    self.rejection_log.rejected(topic, exc)
                    device = self.opener.known_device(topic)
                    for sink in self.sinks:
                        sink.rejected(topic, device, exc.reason)
                shown = False
            self._unacked.append((mid, qos))
            if self.count and self.accepted >= self.count:
                self.done.set()
        return shown

    def _show(self, topic: str, payload: bytes) -> bool:
        if topic.endswith("/" + STATUS_KIND):
            return self._show_status(topic, payload)
        reading = self.opener.open(topic, payload)
        self.rooms.set_room(reading.device, room_of_reading(reading.data))
        for sink in self.sinks:
            sink.reading(reading)
        if reading.kind == "devices" and isinstance(reading.data, list):
            at = reading.taken_at if reading.taken_at is not None else float(reading.sent_at)
            entries = [e for e in reading.data if isinstance(e, dict)]
            self._people(self.rooms.report(reading.device, at, entries, reading.simulated))
        if self.state is not None:
            self.state.record(reading.device, reading.seq, reading.sent_at)
        self.accepted += 1
        log.debug("shown %s seq %d", reading.device, reading.seq)
        return True

    def _show_status(self, topic: str, payload: bytes) -> bool:
        """``BASE/<device>/status``: the broker-kept availability, ``online``/``offline``
        (retained, the broker publishes ``offline`` as the device's last will)."""
        try:
            device = self.opener.device_of(topic)
        except EnvelopeError as exc:
            if exc.reason != "unknown-device":
                raise
            # A removed device's last retained status stays on the broker (only the
            # device may clear it): not an attack, so not a rejection.
            log.info("ignoring the retained status of %s (a removed device?)", topic)
            return False
        status = STATUSES.get(payload)
        if status is None:
            raise EnvelopeError("malformed", "status must be 'online' or 'offline'")
        for sink in self.sinks:
            sink.status(topic, device, status)
        # An offline Pi no longer vouches for whom it had home (see subscriber.rooms).
        self._people(self.rooms.status(device, status == "online", time.time()))
        self.statuses += 1
        return True

    def _people(self, changes: Sequence[Person]) -> None:
        for person in changes:
            for sink in self.sinks:
                sink.person(person)

    def _check_removed(self) -> None:
        """A Pi whose key ring is gone (removed) no longer vouches for anyone: offline
        for the fusion, as it is in the history."""
        if time.monotonic() - self._removed_checked < REMOVED_RECHECK:
            return
        self._removed_checked = time.monotonic()
        for pi in self.rooms.pis:
            if self.rooms.online(pi) is not False and not self.opener.has_key(pi):
                log.info("%s has no key ring any more (removed): it no longer vouches for "
                         "anyone being home", pi)
                self._people(self.rooms.status(pi, False, time.time()))

    def run(self, stop: threading.Event, *, count: int = 0,
            heartbeat: Heartbeat | None = None,
            connected: threading.Event | None = None, tick: float = 0.2) -> None:
        """Until ``stop`` (or ``count`` readings shown): the periodic work."""
        self.count = count
        if count and self.accepted >= count:
            return
        while not stop.is_set():
            if heartbeat is not None:
                heartbeat.beat(connected is None or connected.is_set())
            with self._lock:
                self.rejection_log.tick()
                self._check_removed()
                if self.state is not None and self.state.snapshot_due():
                    # What the snapshot records as shown must be in the sinks first: it
                    # may fall between two messages of a batch, before end_batch.
                    self._flush_sinks()
                    self.state.snapshot(self.opener.replay)
            if self.done.wait(tick):
                return

    def save(self) -> None:
        self.end_batch()
        with self._lock:
            self.rejection_log.flush()
            if self.state is not None:
                self.state.snapshot(self.opener.replay)

    def close(self) -> None:
        """Close the sinks (after ``save``)."""
        for sink in self.sinks:
            sink.close()

    def summary(self) -> str:
        rejected = sum(self.rejected.values())
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items()))
        text = f"{self.accepted} accepted, {rejected} rejected"
        text += f" ({detail})" if detail else ""
        return text + (f", {self.duplicates} duplicate(s) dropped" if self.duplicates else "")
