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
