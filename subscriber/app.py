"""The subscriber's loop: the paho callback only enqueues; verification, decryption,
replay protection and output happen here, in the program's own thread."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from homewatch.envelope import Opener, Reading, ReplayGuard
from homewatch.errors import EnvelopeError
from homewatch.health import Heartbeat
from homewatch.secrets import write_private_file

log = logging.getLogger(__name__)

QUEUE_BOUND = 10_000  # a full queue blocks paho's thread: backpressure, not loss
SAVE_EVERY = 5.0


def format_reading(reading: Reading, *, as_json: bool) -> str:
    if as_json:
        return json.dumps({"topic": reading.topic, "device": reading.device,
                           "kind": reading.kind, "seq": reading.seq,
                           "sent_at": reading.sent_at, "data": reading.data})
    return f"Topic:{reading.topic},Payload:{json.dumps(reading.data)}"


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
    """The replay window, persisted so a restart does not reopen old sequence numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> ReplayGuard:
        try:
            return ReplayGuard.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return ReplayGuard()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("replay state %s unreadable (%s); starting a new one", self.path, exc)
            return ReplayGuard()

    def save(self, guard: ReplayGuard) -> None:
        write_private_file(self.path, json.dumps(guard.to_json()))


class Subscriber:
    def __init__(self, opener: Opener, out: TextIO, *, as_json: bool,
                 state: ReplayState | None = None) -> None:
        self.opener = opener
        self.out = out
        self.as_json = as_json
        self.state = state
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=QUEUE_BOUND)
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.rejection_log = RejectionLog()

    def on_message(self, topic: str, payload: bytes) -> None:
        """paho callback: enqueue and return."""
        self.inbox.put((topic, payload))

    def handle(self, topic: str, payload: bytes) -> Reading | None:
        try:
            reading = self.opener.open(topic, payload)
        except EnvelopeError as exc:
            self.rejected[exc.reason] += 1
            self.rejection_log.rejected(topic, exc)
            return None
        self.accepted += 1
        self.out.write(format_reading(reading, as_json=self.as_json) + "\n")
        self.out.flush()
        return reading

    def run(self, stop: threading.Event, *, count: int = 0,
            heartbeat: Heartbeat | None = None,
            connected: threading.Event | None = None) -> None:
        last_save = time.monotonic()
        dirty = False
        while not stop.is_set():
            if heartbeat is not None:
                heartbeat.beat(connected is None or connected.is_set())
            self.rejection_log.tick()
            try:
                topic, payload = self.inbox.get(timeout=0.2)
            except queue.Empty:
                pass
            else:
                if self.handle(topic, payload) is not None:
                    dirty = True
                if count and self.accepted >= count:
                    break
            if dirty and self.state and time.monotonic() - last_save >= SAVE_EVERY:
                self.save()
                dirty = False
                last_save = time.monotonic()
        self.save()

    def drain(self) -> None:
        """Handle what is already queued (after the connection stopped)."""
        while True:
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            self.handle(topic, payload)

    def save(self) -> None:
        self.rejection_log.flush()
        if self.state is not None:
            self.state.save(self.opener.replay)

    def summary(self) -> str:
        rejected = sum(self.rejected.values())
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items()))
        return f"{self.accepted} accepted, {rejected} rejected" + (f" ({detail})" if detail else "")
