"""Known devices: MAC -> friendly name; only known devices are ever published."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from homewatch.errors import ConfigError, ScannerError
from publisher import presence


def test_known_devices_file_maps_macs_to_names(tmp_path: Path) -> None:
    """Comments and blank lines are ignored; MACs are normalised to upper case."""
    f = tmp_path / "known"
    f.write_text("# phones\n\n88:29:9c:00:61:a9   Franks Phone\nAA:BB:CC:DD:EE:FF = Anna's Watch\n")
    assert presence.load_known_devices(f) == {
        "88:29:9C:00:61:A9": "Franks Phone", "AA:BB:CC:DD:EE:FF": "Anna's Watch"}


@pytest.mark.parametrize(("line", "message"), [
    ("88:29:9C:00:61 Phone", "line 1: '88:29:9C:00:61' is not a MAC"),
    ("88:29:9C:00:61:A9", "missing a name"),
])
def test_bad_known_devices_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    """A malformed line is a ConfigError naming the file and line."""
    f = tmp_path / "known"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        presence.load_known_devices(f)


def test_missing_known_devices_file_is_a_config_error(tmp_path: Path) -> None:
    """A known-devices path that does not exist is reported."""
    with pytest.raises(ConfigError, match="not found"):
        presence.load_known_devices(tmp_path / "nope")


def test_report_lists_only_known_devices_in_the_tutorial_shape() -> None:
    """Seen strangers are never in the report; known ones carry name and MAC."""
    known = {"88:29:9C:00:61:A9": "Franks Phone", "11:22:33:44:55:66": "Away Phone"}
    seen = {"88:29:9C:00:61:A9": -60, "DE:AD:BE:EF:00:01": -70}
    assert presence.presence_report(seen, known) == [
        {"name": "Franks Phone", "mac": "88:29:9C:00:61:A9"}]


def test_simulated_scan_never_reports_strangers_after_filtering() -> None:
    """The simulation invents strangers, and the report drops every one of them."""
    known = {"88:29:9C:00:61:A9": "Franks Phone"}
    scan = presence.SimulatedScan(known)
    for _ in range(50):
        report = presence.presence_report(asyncio.run(scan.scan()), known)
        assert all(d["mac"] in known for d in report)


def test_simulated_scan_sees_everyone_known_at_first() -> None:
    """A demo starts with every known device seen, whatever the dice say later (a test or a
    first look at the dashboard never misses a person by chance)."""
    known = {f"88:29:9C:00:61:{i:02X}": f"Phone {i}" for i in range(40)}
    for seed in range(20):
        scan = presence.SimulatedScan(known, rng=random.Random(seed))
        assert set(known) <= set(asyncio.run(scan.scan()))


def test_auto_scanner_is_bleak_never_a_simulation() -> None:
    """auto is the real scanner (a missing adapter is a scanner error); only asking for
    "simulated" by name invents sightings; "none" scans nothing."""
    known = {"88:29:9C:00:61:A9": "Franks Phone"}
    assert isinstance(presence.make_scanner("auto", known, duration=1), presence.BleakScan)
    assert isinstance(presence.make_scanner("simulated", known, duration=1),
                      presence.SimulatedScan)
    assert presence.make_scanner("none", known, duration=1) is None


def test_bleak_scan_without_bluez_is_a_scanner_error(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """Real bleak with no BlueZ on the system bus fails as a ScannerError, not a crash."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    with pytest.raises(ScannerError):
        asyncio.run(presence.BleakScan(0.5).scan())


def test_report_carries_the_room_and_the_latest_signal_of_those_home() -> None:
    """Each entry names the Pi's room; a device that is home carries the signal heard
    from it lately (also a weaker one, below the threshold, while it is still home); an
    away device carries none."""
    now = [0.0]
    tracker = presence.PresenceTracker(presence.Known(macs={"AA:BB:CC:DD:EE:01": "Anna",
                                                            "AA:BB:CC:DD:EE:02": "Bob"}),
                                       rssi_threshold=-80, away_after=60,
                                       clock=lambda: now[0])
    tracker.observe("AA:BB:CC:DD:EE:01", -55)
    tracker.observe("AA:BB:CC:DD:EE:02", -60)
    now[0] = 30
    tracker.observe("AA:BB:CC:DD:EE:01", -62)
    report = tracker.report("Kitchen")
    assert [(d["name"], d["room"], d["rssi"]) for d in report] == [("Anna", "Kitchen", -62),
                                                                   ("Bob", "Kitchen", -60)]
    now[0] = 50
    tracker.observe("AA:BB:CC:DD:EE:01", -85)  # weak: does not count as seen, but heard
    now[0] = 61
    tracker.tick()
    anna, bob = tracker.report("Kitchen")
    assert (anna["state"], anna["rssi"]) == ("home", -85)
    assert bob["state"] == "away" and "rssi" not in bob
    assert "room" not in tracker.report()[0]  # the tutorial's shape when no room is given


def test_a_signal_is_reported_only_for_the_scan_window_it_was_heard_in() -> None:
    """A device still home but not heard since the last report carries no rssi (Anna
    walked to another room: the old Pi must not vouch for a signal it no longer hears);
    heard again, it carries the new signal."""
    now = [0.0]
    tracker = presence.PresenceTracker(presence.Known(macs={"AA:BB:CC:DD:EE:01": "Anna"}),
                                       away_after=180, clock=lambda: now[0])
    tracker.observe("AA:BB:CC:DD:EE:01", -50)
    assert tracker.report("Kitchen")[0]["rssi"] == -50
    for now[0] in (10.0, 20.0, 170.0):  # not heard: home until the away timeout, no signal
        tracker.tick()
        (anna,) = tracker.report("Kitchen")
        assert anna["state"] == "home" and "rssi" not in anna
    tracker.observe("AA:BB:CC:DD:EE:01", -58)
    assert tracker.report("Kitchen")[0]["rssi"] == -58


def test_simulated_signals_are_steady_per_device_and_pi() -> None:
    """The simulated scanner hears each known device at its own strength, within 2 dB
    from scan to scan, and a second Pi at another (a demo's rooms do not jump about)."""
    known = {"AA:BB:CC:DD:EE:01": "Anna", "AA:BB:CC:DD:EE:02": "Bob"}
    scan = presence.SimulatedScan(known, random.Random(1), place="pi-kitchen")
    for _ in range(50):
        seen = asyncio.run(scan.scan())
        for mac in known:
            if mac in seen:
                centre = presence.simulated_signal(mac, "pi-kitchen")
                assert -85 <= centre <= -45
                assert abs((seen[mac] or 0) - centre) <= 2
    assert presence.simulated_signal("AA:BB:CC:DD:EE:01", "pi-kitchen") == (
        presence.simulated_signal("aa:bb:cc:dd:ee:01", "pi-kitchen"))
    centres = {presence.simulated_signal(mac, pi) for mac in known
               for pi in ("pi-kitchen", "pi-garage", "pi-attic")}
    assert len(centres) > 1
