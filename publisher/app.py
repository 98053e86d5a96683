"""The publisher's loop: read, seal, publish at QoS 1; on stop, flush and disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import MultiFernet

from homewatch.envelope import seal, topic_for
from homewatch.errors import ConfigError, ScannerError, SensorError
from homewatch.health import Heartbeat
from homewatch.mqtt import Connection
from homewatch.secrets import load_keyring
from publisher.presence import Scanner, presence_report
from publisher.sensors import TemperatureSource
from publisher.sequence import SequenceCounter

log = logging.getLogger(__name__)


@dataclass
class Stats:
    readings: int = 0
    published: int = 0
    sensor_errors: int = 0
    scanner_errors: int = 0
    pending: list[Any] = field(default_factory=list)


class Publisher:
    """Seals readings for one device and hands them to the connection."""

    def __init__(self, conn: Connection, ring: MultiFernet, *, device: str, base: str,
                 sequence: SequenceCounter, key_file: Path | None = None,
                 recheck_seconds: float = 5.0) -> None:
        self._conn = conn
        self._ring = ring
        self._key_file = key_file
        self._key_mtime = key_file.stat().st_mtime_ns if key_file else 0
        self._recheck = recheck_seconds
        self._checked = time.monotonic()
        self._device = device
        self._base = base
        self._seq = sequence
        self.stats = Stats()

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

    def publish(self, kind: str, data: Any) -> int:
        self._reload_key()
        topic = topic_for(self._base, self._device, kind)
        seq = self._seq.next()
        token = seal(self._ring, topic=topic, device=self._device, seq=seq, data=data)
        info = self._conn.publish(topic, token, qos=1)
        self.stats.pending.append(info)
        self.stats.pending = [i for i in self.stats.pending if not i.is_published()]
        self.stats.published += 1
        log.debug("queued %s seq %d", topic, seq)
        return seq

    def connected(self) -> bool:
        return self._conn.connected.is_set()

    def outstanding(self) -> int:
        self.stats.pending = [i for i in self.stats.pending if not i.is_published()]
        return len(self.stats.pending)

    async def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged every publish; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.outstanding() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.outstanding() == 0


async def run(pub: Publisher, *, temperature: TemperatureSource, scanner: Scanner,
              known: dict[str, str], interval: float, count: int,
              stop: asyncio.Event, heartbeat: Heartbeat | None = None) -> Stats:
    """Take a reading every ``interval`` seconds until ``stop`` is set (or ``count`` done)."""
    log.info("publishing every %.1f s: temperature from %s, presence from %s scanner, "
             "%d known device(s)", interval, temperature.name, scanner.name, len(known))
    while not stop.is_set():
        started = time.monotonic()
        try:
            value = temperature.read()
        except SensorError as exc:
            pub.stats.sensor_errors += 1
            log.warning("temperature not read: %s", exc)
        else:
            pub.publish("temperature", {"temperature": value, "timestamp": round(time.time(), 2)})
        scan = asyncio.ensure_future(scanner.scan())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({scan, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if scan not in done:
            scan.cancel()
            break
        try:
            seen = scan.result()
        except ScannerError as exc:
            pub.stats.scanner_errors += 1
            log.warning("presence not scanned: %s", exc)
        else:
            pub.publish("devices", presence_report(seen, known))
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
