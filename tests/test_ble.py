"""Presence with the real bleak against a mocked BlueZ on a private D-Bus: devices
appearing, RSSI changes, away debouncing, strangers never published, rotating addresses
resolved by IRK, and the adapter disappearing and coming back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from homewatch.errors import ScannerError
from publisher.presence import BleakScan, Known, PresenceTracker, ah, resolves
from tests.bluez import MockBlueZ

pytestmark = pytest.mark.ble

PHONE = "88:29:9C:00:61:A9"
STRANGER = "DE:AD:BE:EF:00:01"
IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")


def rpa(irk: bytes, prand: bytes) -> str:
    """A resolvable private address as a phone makes one (top bits 01)."""
    raw = prand + ah(irk, prand)
    return ":".join(f"{b:02X}" for b in raw)


@pytest.fixture
def bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MockBlueZ]:
    mock = MockBlueZ(tmp_path)
    mock.add_adapter()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", mock.address)
    yield mock
    mock.close()


def scan_while(action: Callable[[], None], duration: float = 1.5,
               delay: float = 0.4) -> dict[str, int | None]:
    """One real bleak scan window (a fresh event loop) with ``action`` done during it."""
    timer = threading.Timer(delay, action)
    timer.start()
    try:
        return asyncio.run(BleakScan(duration).scan())
    finally:
        timer.join()


def test_spec_sample_vector_for_the_address_hash() -> None:
    """ah() matches the Bluetooth Core Specification's sample data."""
    assert ah(IRK, bytes.fromhex("708194")).hex() == "0dfbaa"


def test_rotating_address_resolves_to_its_owner_only() -> None:
    """An RPA made with a known IRK resolves; one from another IRK or a public MAC not."""
    address = rpa(IRK, bytes.fromhex("708194"))
    assert resolves(IRK, address)
    assert not resolves(bytes(16), address)
    assert not resolves(IRK, PHONE)


def test_a_device_appearing_during_a_scan_is_seen_with_its_rssi(bluez: MockBlueZ) -> None:
    """InterfacesAdded during the window: bleak reports the device and its RSSI."""
    seen = scan_while(lambda: bluez.advertise(PHONE, -55))
    assert seen[PHONE] == -55


def test_rssi_changes_are_seen_and_the_strongest_is_kept(bluez: MockBlueZ) -> None:
    """PropertiesChanged(RSSI) during the window: the strongest reading counts."""
    def walk_closer() -> None:
        bluez.advertise(PHONE, -85)
        time.sleep(0.2)
        bluez.advertise(PHONE, -48)
        time.sleep(0.2)
        bluez.advertise(PHONE, -70)
    assert scan_while(walk_closer)[PHONE] == -48


def test_strangers_are_seen_but_never_reported(bluez: MockBlueZ) -> None:
    """A stranger in range is counted; the report has only known devices."""
    def both() -> None:
        bluez.advertise(PHONE, -60)
        bluez.advertise(STRANGER, -40)
    seen = scan_while(both)
    assert STRANGER in seen
    tracker = PresenceTracker(Known(macs={PHONE: "Franks Phone"}))
    for address, rssi in seen.items():
        tracker.observe(address, rssi)
    assert [d["name"] for d in tracker.report()] == ["Franks Phone"]
    assert STRANGER not in str(tracker.report())
    assert tracker.strangers == 1


def test_a_phone_with_a_rotating_address_is_recognised_by_its_irk(bluez: MockBlueZ) -> None:
    """A random resolvable address seen over BLE maps to the IRK's friendly name."""
    address = rpa(IRK, bytes.fromhex("4a1b2c"))
    seen = scan_while(lambda: bluez.advertise(address, -50))
    tracker = PresenceTracker(Known(irks=[(IRK, "Annas iPhone")]))
    for a, rssi in seen.items():
        tracker.observe(a, rssi)
    assert [(d["name"], d["state"]) for d in tracker.report()] == [("Annas iPhone", "home")]


def test_away_only_after_the_timeout_so_presence_does_not_flap(bluez: MockBlueZ) -> None:
    """Seen once, then silent scans: still home until the away timeout, then away;
    a weak signal below the threshold does not bring it home."""
    now = [1000.0]
    tracker = PresenceTracker(Known(macs={PHONE: "Franks Phone"}), rssi_threshold=-80,
                              away_after=60, clock=lambda: now[0])
    for address, rssi in scan_while(lambda: bluez.advertise(PHONE, -60)).items():
        tracker.observe(address, rssi)
    assert tracker.report()[0]["state"] == "home"
    now[0] += 30
    assert asyncio.run(BleakScan(0.5).scan()).get(PHONE) is None  # no advert this window
    assert not tracker.tick() and tracker.report()[0]["state"] == "home"
    now[0] += 31
    assert tracker.tick() and tracker.report()[0]["state"] == "away"
    for address, rssi in scan_while(lambda: bluez.advertise(PHONE, -95)).items():
        tracker.observe(address, rssi)
    assert tracker.report()[0]["state"] == "away"
    for address, rssi in scan_while(lambda: bluez.advertise(PHONE, -65)).items():
        assert tracker.observe(address, rssi)
    assert tracker.report()[0]["state"] == "home"


def test_adapter_lost_is_a_scanner_error_and_scanning_recovers_when_it_is_back(
        bluez: MockBlueZ) -> None:
    """The adapter vanishing makes the scan fail clearly; once it is back, scans work
    again in the same process."""
    bluez.remove_adapter()
    with pytest.raises(ScannerError):
        asyncio.run(BleakScan(0.5).scan())
    bluez.add_adapter()
    assert scan_while(lambda: bluez.advertise(PHONE, -58))[PHONE] == -58
