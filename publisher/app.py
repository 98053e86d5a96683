"""The publisher's loops.

``run`` takes a reading every interval and commits it to the outbox (with the RAM
journal of ``publisher.journal`` in front of it, when there is one); ``Publisher.pump``
moves readings from the outbox to the broker, oldest first, at most ``window`` awaiting
their PUBACK at a time (far below paho's 65,535 limit), and marks a reading acknowledged
only when the broker acknowledged it. After a reconnect everything unacknowledged, and
what was acknowledged within the redelivery window (``publisher.outbox``), is sent again;
the subscriber drops the duplicates by sequence number. Tokens are sealed when sent, so
readings that waited out a long outage are not stale on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homewatch.envelope import STATUS_KIND, seal, topic_for
from homewatch.errors import ConfigError, ScannerError, SensorError
from homewatch.fernet import TokenMaker
from homewatch.health import Heartbeat
from homewatch.mqtt import Connection
from homewatch.secrets import load_keyring
from publisher.journal import TieredOutbox
from publisher.outbox import Outbox
from publisher.presence import PresenceTracker, Scanner
from publisher.sensors import TemperatureSource
from publisher.stall import POWER_CYCLE, RESTART, Recoverable, StallWatch

log = logging.getLogger(__name__)


@dataclass
class Stats:
    readings: int = 0
    sent: int = 0
    acked: int = 0
    sensor_errors: int = 0
    scanner_errors: int = 0


class Publisher:
    """Owns the outbox for one device and pumps it into the connection."""

    def __init__(self, ring: TokenMaker, *, device: str, base: str,
                 outbox: Outbox | TieredOutbox,
                 key_file: Path | None = None, window: int = 100,
                 recheck_seconds: float = 5.0) -> None:
        self._ring = ring
        self._device = device
        self._base = base
        self.outbox = outbox
        self._window = window
        self._key_file = key_file
        self._key_mtime = key_file.stat().st_mtime_ns if key_file else 0
        self._recheck = recheck_seconds
        self._checked = time.monotonic()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._reconnected = threading.Event()
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._early: set[int] = set()  # acks that arrived before we noted their mid
        self._last_sent = -1
        self._pass_done = False  # everything kept was (re)sent since the last connect
        self._pass_target = -1  # ... that is, everything up to this seq, and acknowledged
        self._pruned = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None  # set when there is something to pump
        self._wake_pending = False
        # readings not committed yet: kind, data, simulated mark, when taken
        self._taken: list[tuple[str, Any, str | None, float | None]] = []
        self.conn: Connection | None = None
        self.stats = Stats()

    # -- called from paho's network thread: record, wake the pump, return ------------
    def on_published(self, mid: int) -> None:
        self._acks.put(mid)
        self._wake_threadsafe()

    def on_connected(self) -> None:
        self._reconnected.set()
        if self.conn is not None:
            self.conn.publish(self.status_topic, b"online", qos=1, retain=True)
        self._wake_threadsafe()

    def _wake_threadsafe(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not self._wake_pending:
            self._wake_pending = True  # one wake-up per batch of acknowledgements
            loop.call_soon_threadsafe(wake.set)

    # -- the program's own loop -----------------------------------------------------
    @property
    def status_topic(self) -> str:
        return topic_for(self._base, self._device, STATUS_KIND)

    def record(self, kind: str, data: Any, *, simulated: str | None = None) -> None:
        """Hand a reading over; the pump commits it to the outbox (readings that come
        together share one transaction) before anything is sent. ``simulated`` ("simulated"
        or "demo") marks invented data: the envelope says so, and so does the subscriber."""
        self._taken.append((kind, data, simulated, time.time()))
        if self._wake is not None:
            self._wake.set()

    def commit(self) -> None:
        """Commit the readings handed over so far (durable from here on)."""
        if not self._taken:
            return
        taken, self._taken = self._taken, []
        for (kind, *_), seq in zip(taken, self.outbox.add_many(taken), strict=True):
            log.debug("stored %s seq %d", kind, seq)

    @property
    def uncommitted(self) -> int:
        """Readings handed over but not committed to the outbox yet."""
        return len(self._taken)

    def connected(self) -> bool:
        return self.conn is not None and self.conn.connected.is_set()

    def pump(self) -> None:
        """Note acknowledgements, commit new readings, then fill the send window.

        Acknowledgements first: a full outbox drops its oldest unacknowledged readings,
        and one the broker already acknowledged must not be counted as dropped."""
        self._reload_key()
        done = []
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            seq = self._inflight.pop(mid, None)
            if seq is None:
                self._early.add(mid)
            else:
                done.append(seq)
        if done:
            self.stats.acked += self.outbox.acknowledge(done)
        self.commit()
        if self._reconnected.is_set():
            self._reconnected.clear()
            if len(self.outbox):
                log.info("sending %d reading(s) waiting in the outbox", len(self.outbox))
            kept = self.outbox.kept()
            if kept:
                log.info("sending %d reading(s) acknowledged just before the connection "
                         "dropped again, in case the broker lost them", kept)
            self._inflight.clear()
            self._early.clear()
            self._last_sent = -1
            self._pass_done = False
            self._pass_target = self.outbox.last_seq
        # (with the RAM journal: what waited too long for its acknowledgement goes to disk)
        self.outbox.spill(self.connected())
        if self.conn is None or not self.connected():
            return
        if not self._pass_done and self._last_sent >= self._pass_target and all(
                seq > self._pass_target for seq in self._inflight.values()):
            self._pass_done = True
        now = time.monotonic()
        if self._pass_done and now - self._pruned >= 1.0:
            # Only while connected and after the resend pass: what the broker may have
            # lost before a disconnection stays until it was sent again.
            self._pruned = now
            self.outbox.prune()
        room = self._window - len(self._inflight)
        if room <= 0 or self._last_sent >= self.outbox.last_seq:
            return  # window full, or nothing new since the last send: no query
        for entry in self.outbox.after(self._last_sent, room):
            topic = topic_for(self._base, self._device, entry.kind)
            token = seal(self._ring, topic=topic, device=self._device, seq=entry.seq,
                         data=entry.data, taken=entry.taken_at, simulated=entry.sim)
            info = self.conn.publish(topic, token, qos=1)
            self._last_sent = entry.seq
            self.stats.sent += 1
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.stats.acked += self.outbox.acknowledge([entry.seq])
            else:
                self._inflight[info.mid] = entry.seq

    async def pump_forever(self, stop: asyncio.Event, idle: float = 1.0,
                           batch: float = 0.002) -> None:
        """Pump when woken (a reading stored, acknowledgements, a reconnection) and once
        per ``idle`` seconds otherwise: a publisher at rest costs next to nothing. After
        each wake-up it waits ``batch`` seconds, so a stream of acknowledgements is
        recorded a batch per transaction rather than one by one."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle)
            self._wake.clear()
            self._wake_pending = False
            self.pump()
            await asyncio.sleep(batch)

    async def flush(self, timeout: float, abandon: asyncio.Event | None = None) -> bool:
        """Pump until the outbox is empty (all acknowledged); False on timeout."""
        self.commit()
        deadline = time.monotonic() + timeout
        while (len(self.outbox) and time.monotonic() < deadline
               and not (abandon is not None and abandon.is_set())):
            self.pump()
            await asyncio.sleep(0.02)
        self.pump()
        return len(self.outbox) == 0

    def _reload_key(self) -> None:
        """Pick up a rotated key ring (``homewatch device rotate-key``) without a restart."""
        now = time.monotonic()
        if self._key_file is None or now - self._checked < self._recheck:
            return
        self._checked = now
        try:
            mtime = self._key_file.stat().st_mtime_ns
            if mtime == self._key_mtime:
                return
            self._ring = load_keyring(self._key_file)
        except (OSError, ConfigError) as exc:
            log.error("key ring %s changed but is unusable (%s); keeping the current keys",
                      self._key_file, exc)
            return
        self._key_mtime = mtime
        log.info("key ring %s changed: encrypting with its newest key", self._key_file)


async def run(pub: Publisher, *, temperature: TemperatureSource | None,
              scanner: Scanner | None,
              tracker: PresenceTracker, interval: float, count: int,
              stop: asyncio.Event, heartbeat: Heartbeat | None = None,
              stranger_key: bytes | None = None, demo: bool = False,
              room: str | None = None, stall_cycles: int = 0) -> Stats:
    """Take a reading every ``interval`` seconds until ``stop`` is set (or ``count`` done).

    Readings are taken whether or not the broker is reachable: they wait in the outbox.
    Strangers are published (count and keyed hashes) only with a ``stranger_key``.
    What a simulated source invents is marked "simulated" ("demo" with ``demo``).
    Every temperature reading and devices entry names ``room`` (this Pi's), when given.
    With ``stall_cycles``, that many scan windows in a row without any advertisement are
    a stall: discovery is restarted, then the adapter power-cycled (:mod:`publisher.stall`).
    """
    label = "demo" if demo else "simulated"
    sim_t = label if temperature is not None and temperature.name == "simulated" else None
    sim_s = label if scanner is not None and scanner.name == "simulated" else None
    log.info("publishing every %.1f s: temperature from %s, presence from %s, %d known "
             "device(s)%s", interval, temperature.name if temperature else "nothing (none)",
             f"the {scanner.name} scanner" if scanner else "nothing (none)",
             len(tracker.known), " (demo: every reading is invented)" if demo else "")
    if room is not None:
        log.info("this Pi's room: %s", room)
    if sim_t or sim_s:
        log.warning("%s readings are simulated, not measured; they are marked %r",
                    " and ".join(k for k, sim in (("temperature", sim_t), ("presence", sim_s))
                                 if sim), label)
    if isinstance(scanner, Recoverable) and not await _power_on_at_start(scanner, stop):
        return pub.stats
    health = _ScannerHealth()
    if stall_cycles and isinstance(scanner, Recoverable):
        health.watch = StallWatch(stall_cycles)
    while not stop.is_set():
        started = time.monotonic()
        if temperature is not None:
            try:
                value = temperature.read()
            except SensorError as exc:
                pub.stats.sensor_errors += 1
                log.warning("temperature not read: %s", exc)
            else:
                data: dict[str, Any] = {"temperature": value,
                                        "timestamp": round(time.time(), 2)}
                if room is not None:
                    data["room"] = room
                pub.record("temperature", data, simulated=sim_t)
        if scanner is not None:
            if not await _scan_once(pub, scanner, tracker, stop, interval, sim_s, health,
                                    stranger_key, room):
                break
        elif stop.is_set():
            break
        pub.stats.readings += 1
        if heartbeat is not None:
            heartbeat.beat(pub.connected())
        if count and pub.stats.readings >= count:
            break
        remaining = interval - (time.monotonic() - started)
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), remaining)
    return pub.stats


@dataclass
class _ScannerHealth:
    state: str = ""
    detail: str = ""
    watch: StallWatch | None = None


async def _scan_once(pub: Publisher, scanner: Scanner, tracker: PresenceTracker,
                     stop: asyncio.Event, interval: float, sim: str | None,
                     health: _ScannerHealth, stranger_key: bytes | None,
                     room: str | None = None) -> bool:
    """One scan window and what it gives: the devices reading, or a ``scanner`` status
    when the scanner fails (or recovers). False when ``stop`` came first."""
    scan = asyncio.ensure_future(scanner.scan())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({scan, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if scan not in done:
        scan.cancel()  # stopping: let the scanner wind down, and observe how it ended
        await asyncio.wait({scan}, timeout=5)
        if scan.done() and not scan.cancelled() and scan.exception() is not None:
            log.debug("the scan ended with %r while stopping", scan.exception())
        return False
    try:
        seen = scan.result()
    except ScannerError as exc:
        pub.stats.scanner_errors += 1
        if (health.state, health.detail) != ("error", str(exc)):
            log.error("Bluetooth scanner failed: %s; retrying every %.0f s", exc, interval)
            pub.record("scanner", {"state": "error", "detail": str(exc)}, simulated=sim)
            health.state, health.detail = "error", str(exc)
        return True
    step = health.watch.heard(len(seen)) if health.watch is not None else None
    if step is not None:
        await _recover(pub, scanner, health, step, stop, sim)
    elif health.state != "ok" and not (health.watch is not None and health.watch.stalled):
        if health.state in ("error", "stalled"):
            log.info("Bluetooth scanner recovered%s", " (advertisements heard again)"
                     if health.state == "stalled" else "")
        pub.record("scanner", {"state": "ok", "scanner": scanner.name}, simulated=sim)
        health.state, health.detail = "ok", ""
    for address, rssi in seen.items():
        tracker.observe(address, rssi)
    tracker.tick()
    pub.record("devices", tracker.report(room), simulated=sim)
    if stranger_key is not None:
        pub.record("strangers", tracker.strangers_report(stranger_key), simulated=sim)
    return True


async def _recover(pub: Publisher, scanner: Scanner, health: _ScannerHealth, step: str,
                   stop: asyncio.Event, sim: str | None) -> None:
    """Take the recovery ``step`` the stall watch asked for (and, if it fails, the one
    it says to try instead), then publish a ``stalled`` status saying what was done,
    when that differs from the last status (an empty place is not a message a minute).
    The devices readings go on meanwhile: a stall looks exactly like an empty place."""
    watch = health.watch
    assert watch is not None and isinstance(scanner, Recoverable)
    notes = [f"no advertisement in {watch.cycles} scans in a row"]
    action = "none"
    current: str | None = step
    while current is not None and not stop.is_set():
        run_step = scanner.restart_discovery if current == RESTART else scanner.power_cycle
        try:
            if not await _unless_stopped(run_step(), stop):
                return  # stopping: nothing was done, nothing to say
        except ScannerError as exc:
            if current == POWER_CYCLE:
                watch.done(current)  # tried is tried: not again within the hour
            notes.append(("restarting discovery" if current == RESTART else
                          "power-cycling the adapter") + f" failed: {exc}")
            current = watch.failed(current)
            continue
        watch.done(current)
        action = current
        notes.append(current)
        break
    if action == "none" and not watch.may_power_cycle():  # (no countdown: one message)
        notes.append("the adapter was power-cycled lately (at most once an hour)")
    detail = "; ".join(notes)
    if (health.state, health.detail) == ("stalled", detail):
        log.debug("Bluetooth scanner still stalled: %s", detail)
        return
    log.warning("Bluetooth scanner stalled: %s", detail)
    pub.record("scanner", {"state": "stalled", "scanner": scanner.name, "action": action,
                           "detail": detail}, simulated=sim)
    health.state, health.detail = "stalled", detail


async def _power_on_at_start(scanner: Recoverable, stop: asyncio.Event) -> bool:
    """Power the scanner's adapter on if it is off: a power cycle cut short (a power loss
    between off and on) leaves it off, and a scanner that fails is never counted as
    stalled, so nothing else would. Failures are left to the first scan to report.
    False when ``stop`` came first."""
    result: list[str | None] = []

    async def step() -> None:
        result.append(await scanner.power_on())

    try:
        if not await _unless_stopped(step(), stop):
            return False
    except ScannerError as exc:
        log.debug("the Bluetooth adapter's power not checked at start: %s", exc)
        return True
    if result and result[0] is not None:
        log.warning("the Bluetooth adapter %s was powered off (a power cycle cut short?): "
                    "powered it on", result[0])
    return True


async def _unless_stopped(step: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``step`` unless ``stop`` comes first (then it is cancelled: False)."""
    task = asyncio.ensure_future(step)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task not in done:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        return False
    task.result()
    return True
