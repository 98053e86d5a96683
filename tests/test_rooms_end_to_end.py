"""Rooms from two Pis, end to end: two real publishers (pi-kitchen in the Kitchen,
pi-garage in the Garage), each scanning with real bleak its own mocked BlueZ (its own
radio: the test sets the signal each one hears from the same phone), through the real
broker to the real subscriber, whose history says which room the person is in."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from homewatch.history.sqlite import open_reader
from tests.bluez import MockBlueZ
from tests.helpers import Broker, python_m, running
from tests.test_ble import Readings
from tests.test_end_to_end import wait_subscribed

pytestmark = [pytest.mark.ble, pytest.mark.broker]

PHONE = "88:29:9C:00:61:A9"
DWELL = 3.0  # seconds of the readings' own times
HYSTERESIS = 5.0  # dB


class Radios:
    """Each Pi's radio (a mocked BlueZ of its own) hears the phone advertise every 0.3 s
    at the levels the test sets, taking turns between the two given (a real BlueZ
    signals each RSSI change, so each one is a fresh sighting)."""

    def __init__(self, tmp: Path, *pis: str) -> None:
        self.bluez: dict[str, MockBlueZ] = {}
        for pi in pis:
            (tmp / pi).mkdir(parents=True)
            self.bluez[pi] = MockBlueZ(tmp / pi)
            self.bluez[pi].add_adapter()
        self.levels: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._advertise, daemon=True)

    def set(self, **levels: tuple[int, int]) -> None:
        with self._lock:
            self.levels.update({pi.replace("_", "-"): lv for pi, lv in levels.items()})

    def _advertise(self) -> None:
        turn = 0
        while not self._stop.wait(0.3):
            turn ^= 1
            with self._lock:
                levels = dict(self.levels)
            for pi, (a, b) in levels.items():
                with contextlib.suppress(Exception):
                    self.bluez[pi].advertise(PHONE, a if turn else b)

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()
            for bluez in self.bluez.values():
                bluez.close()


def publisher(broker: Broker, workdir: Path, pi: str, room: str, known: Path) -> list[str]:
    return python_m("publisher", broker.url("localhost"), "--device", pi, "--room", room,
                    "--temperature", "simulated", "--scanner", "bleak", "--interval", "1",
                    "--scan-duration", "0.8", "--known-devices", str(known),
                    "--state-dir", str(workdir / f"{pi}-state"))


def devices_from(pi: str, rssi: Any = None) -> Any:
    """A predicate: a devices reading of ``pi`` that has the phone home (and, with
    ``rssi``, heard as ``rssi(value)`` says)."""
    def match(r: dict[str, Any]) -> bool:
        if r["kind"] != "devices" or r["device"] != pi or not r["data"]:
            return False
        entry = r["data"][0]
        return bool(entry["state"] == "home" and "rssi" in entry and
                    (rssi is None or rssi(entry["rssi"])))
    return match


def test_the_room_follows_the_stronger_signal_without_flapping(
        broker: Broker, workdir: Path, tmp_path: Path) -> None:
    """Annas phone is heard best in the Kitchen: she is in the Kitchen. Both Pis then
    hear her at similar strengths, taking turns at being louder: she stays there. Then
    the Garage hears her far better: she moves to the Garage, no sooner than the dwell
    after the Garage first heard her better, and her room never went back and forth.
    When pi-garage stops (offline), it no longer vouches: she is in the Kitchen at once."""
    known = workdir / "known"
    known.write_text(f"{PHONE} Annas Phone\n")
    radios = Radios(tmp_path / "radios", "pi-kitchen", "pi-garage")
    radios.set(pi_kitchen=(-50, -51), pi_garage=(-75, -76))
    history = workdir / "sub-state" / "history.db"
    sub_cmd = python_m("subscriber", broker.url("localhost"), "--json",
                       "--state-dir", str(workdir / "sub-state"),
                       "--client-id", f"sub-{uuid.uuid4().hex[:8]}",
                       "--room-dwell", str(DWELL), "--room-hysteresis", str(HYSTERESIS))

    def anna() -> Any:
        with open_reader(history) as reader:
            return next(p for p in reader.now(0).people if p.name == "Annas Phone")

    def query(sql: str, *args: object) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(f"file:{history}?mode=ro", uri=True)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def room_changes() -> list[tuple[float, str | None]]:
        return [(ts, room) for ts, room in query("SELECT ts, room FROM room_change "
                                                 "ORDER BY ts")]

    def recorded(reading: dict[str, Any]) -> None:
        """Wait until the history has committed ``reading`` (and so all before it): the
        subscriber prints a batch before its history commits it."""
        deadline = time.monotonic() + 20
        while True:
            rows = query("SELECT max(at) FROM presence_state JOIN device ON id = device_id "
                         "WHERE name = ?", reading["device"])
            if rows and rows[0][0] is not None and rows[0][0] >= reading["taken_at"]:
                return
            assert time.monotonic() < deadline, f"not in the history: {reading}"
            time.sleep(0.1)

    with radios.on(), running(sub_cmd, cwd=workdir) as sub, \
            contextlib.ExitStack() as kitchen, contextlib.ExitStack() as garage:
        wait_subscribed(sub)
        readings = Readings(sub)
        for pi, room, stack in (("pi-kitchen", "Kitchen", kitchen),
                                ("pi-garage", "Garage", garage)):
            stack.enter_context(running(publisher(broker, workdir, pi, room, known),
                                        cwd=workdir, env={"DBUS_SYSTEM_BUS_ADDRESS":
                                                          radios.bluez[pi].address}))
            readings.wait_for(f"{pi} hears Anna", devices_from(pi))  # kitchen first
        recorded(readings.wait_for("the garage hears Anna weakly",
                                   devices_from("pi-garage", lambda v: v <= -70)))
        assert (anna().state, anna().room) == ("home", "Kitchen")
        with open_reader(history) as reader:
            rooms = {p.name: p.room for p in reader.now(0).pis}
        assert (rooms["pi-kitchen"], rooms["pi-garage"]) == ("Kitchen", "Garage")

        # Similar strengths, taking turns at being louder (within the hysteresis).
        radios.set(pi_kitchen=(-60, -63), pi_garage=(-63, -60))
        for n in range(8):  # eight reports at those levels: much longer than DWELL
            last = readings.wait_for(f"similar report {n}", devices_from(
                "pi-garage", lambda v: v >= -63))
        recorded(last)
        assert anna().room == "Kitchen"

        # She walks into the garage.
        moved_at = time.time()  # no reading taken before this heard her move
        radios.set(pi_kitchen=(-80, -81), pi_garage=(-45, -46))
        readings.wait_for("the garage hears her best", devices_from(
            "pi-garage", lambda v: v >= -47))
        readings.wait_for("the kitchen hears her weakly", devices_from(
            "pi-kitchen", lambda v: v <= -79))
        for n in range(int(DWELL) + 3):  # past the dwell, in the readings' own times
            readings.wait_for(f"garage report {n}", devices_from("pi-garage"))
        recorded(readings.wait_for("one more kitchen report", devices_from("pi-kitchen")))
        assert anna().room == "Garage"
        changes = room_changes()
        assert [room for _, room in changes] == ["Kitchen", "Garage"], changes
        assert changes[1][0] - moved_at >= DWELL

        # pi-garage stops and says offline: it no longer vouches, and the kitchen, which
        # still hears her, has her home: in the Kitchen at once, without a dwell.
        garage.close()
        readings.wait_for("pi-garage offline", lambda r: r["kind"] == "status"
                          and r["device"] == "pi-garage" and r["status"] == "offline")
        recorded(readings.wait_for("a kitchen report", devices_from("pi-kitchen")))
        assert (anna().state, anna().room) == ("home", "Kitchen")
        assert [room for _, room in room_changes()] == ["Kitchen", "Garage", "Kitchen"]
