"""The history sink: every accepted reading and status, and each person's room as the
rooms fusion chose it, written to the history store (:mod:`homewatch.history`) that the
dashboard reads.

What a Pi sends is authenticated, but its content is still checked here: a reading whose
data does not have the expected shape, or that the store refuses (a value or time out of
range, too many or too long names: ValueError, nothing written), is shown (the console
sink already did) and counted as not recorded, with a log line, rather than stopping the
subscriber: one bad reading must not stop every Pi's, again after each restart. What
the store cannot write is a StorageError (see :mod:`subscriber.sinks`)."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from homewatch.envelope import Reading
from homewatch.history import HistoryWriter, Sighting, Simulated
from subscriber.rooms import Person, room_of_reading

log = logging.getLogger(__name__)

KEYS_RECHECK = 60.0  # seconds between looks at the key rings' modification times


def _simulated(reading: Reading) -> Simulated:
    return cast(Simulated, reading.simulated) if reading.simulated in (
        "simulated", "demo") else None


def _number(value: Any) -> float | None:
    """A finite float, or None (a bool, a string, NaN, or an int too big for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _sightings(data: Any) -> list[Sighting] | None:
    """A ``devices`` report: ``[{"name", "state", "last_seen", ...}]`` (a report without
    ``state``, the tutorial's shape, lists the devices seen: home)."""
    if not isinstance(data, list):
        return None
    out: list[Sighting] = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        state = item.get("state", "home")
        if state not in ("home", "away"):
            return None
        rssi = item.get("rssi")
        out.append(Sighting(name=item["name"], state=state,
                            last_seen=_number(item.get("last_seen")),
                            rssi=rssi if isinstance(rssi, int) and
                            not isinstance(rssi, bool) else None))
    return out


class HistorySink:
    """Readings, statuses and rejections to a HistoryWriter; one commit per batch."""

    def __init__(self, writer: HistoryWriter, *, keys_dir: Path | None = None,
                 key_suffix: str = ".key", clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.keys_dir = keys_dir
        self.key_suffix = key_suffix
        self.clock = clock
        self.unrecorded: Counter[str] = Counter()  # kind -> readings of an unexpected shape
        self._key_times: dict[str, float] = {}
        self._keys_checked = -math.inf
        self._check_keys()  # every device with a key ring is known before its first message
        self.writer.commit()  # (not holding the write lock until the first batch)

    def reading(self, reading: Reading) -> None:
        try:
            recorded = self._record(reading)
        except (ValueError, OverflowError, TypeError) as exc:
            # Out of the store's ranges (nothing of it was written): shown, not kept.
            log.debug("%s reading from %s not kept: %s", reading.kind, reading.device, exc)
            recorded = False
        if not recorded:
            self._unrecorded(reading)

    def _record(self, reading: Reading) -> bool:
        """Hand one reading to the writer; False when its data has an unexpected shape."""
        at = reading.taken_at if reading.taken_at is not None else float(reading.sent_at)
        sim = _simulated(reading)
        data = reading.data
        if reading.kind == "temperature":
            value = _number(data.get("temperature")) if isinstance(data, dict) else None
            if value is None:
                return False
            self.writer.temperature(reading.device, at, value, simulated=sim)
        elif reading.kind == "devices":
            sightings = _sightings(data)
            if sightings is None:
                return False
            self.writer.presence(reading.device, at, sightings, simulated=sim)
        elif reading.kind == "scanner":
            state = data.get("state") if isinstance(data, dict) else None
            detail = data.get("detail", "") if isinstance(data, dict) else ""
            if not isinstance(state, str) or not isinstance(detail, str):
                return False
            self.writer.scanner(reading.device, at, state, detail, simulated=sim)
        # Other kinds (``strangers``: keyed hashes, opt-in) are not kept.
        if reading.kind in ("temperature", "devices"):
            room = room_of_reading(data)
            if room is not None:
                self.writer.pi_room(reading.device, at, room)
        return True

    def status(self, topic: str, device: str, status: str) -> None:
        self.writer.availability(device, self.clock(), status == "online")

    def rejected(self, topic: str, device: str | None, reason: str) -> None:
        self.writer.rejected(device, reason, self.clock())

    def person(self, person: Person) -> None:
        """A person's room changed (or they are no longer home: no room): kept as a
        change. Their home/away/unknown the history fuses from the stored reports itself
        (see :mod:`homewatch.history.fusion`), the same way."""
        room = person.room if person.state == "home" else None
        try:
            self.writer.person_room(person.name, person.at, room,
                                    person.pi if room is not None else None)
        except (ValueError, OverflowError, TypeError) as exc:
            self.unrecorded["room"] += 1
            log.debug("room of %r not kept: %s", person.name[:64], exc)

    def flush(self) -> None:
        self._check_keys()
        self.writer.commit()

    def close(self) -> None:
        self.writer.close()

    def _unrecorded(self, reading: Reading) -> None:
        self.unrecorded[reading.kind] += 1
        if self.unrecorded[reading.kind] in (1, 10, 100, 1000, 10000):
            log.warning("%s reading from %s has an unexpected shape or a value out of range: "
                        "shown, not kept in the history (%d so far)", reading.kind,
                        reading.device, self.unrecorded[reading.kind])

    def _check_keys(self) -> None:
        """When each device's key ring was last written (the Devices page's key age), and
        which devices have one: a Pi whose ring is gone was removed, and the history
        records it offline (it no longer vouches for anyone being home)."""
        now = time.monotonic()
        if self.keys_dir is None or now - self._keys_checked < KEYS_RECHECK:
            return
        self._keys_checked = now
        try:
            rings = list(self.keys_dir.glob(f"*{self.key_suffix}"))
        except OSError:
            return
        for path in rings:
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            device = path.name[: -len(self.key_suffix)]
            if self._key_times.get(device) != mtime:
                self.writer.key_updated(device, mtime)
                self._key_times[device] = mtime
        present = {path.name[: -len(self.key_suffix)] for path in rings}
        for device in set(self._key_times) - present:
            del self._key_times[device]
        self.writer.key_rings(present, self.clock())
