"""Presence: which known Bluetooth devices are near.

The known-devices file maps MAC addresses to friendly names, one per line::

    # MAC               name
    88:29:9C:00:61:A9   Franks Phone

Only known devices are ever published (privacy by default): a stranger's MAC address
never leaves the Pi. Scanners: ``BleakScan`` (real BLE through bleak/BlueZ) and
``SimulatedScan`` (where there is no adapter); ``AutoScan`` starts with bleak and falls
back to the simulation, saying so, when there is no adapter.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from homewatch.errors import ConfigError, ScannerError

log = logging.getLogger(__name__)

KINDS = ("auto", "bleak", "simulated")
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


def load_known_devices(path: Path | None) -> dict[str, str]:
    """MAC (upper case) -> friendly name; an absent option means no known devices."""
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"known-devices file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"known-devices file {path}: {exc.strerror}") from None
    known: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        mac, _, name = line.partition(" ")
        name = name.strip().lstrip("=").strip()
        if not MAC_RE.match(mac):
            raise ConfigError(f"{path} line {lineno}: {mac!r} is not a MAC address "
                              "(expected AA:BB:CC:DD:EE:FF Friendly Name)")
        if not name:
            raise ConfigError(f"{path} line {lineno}: missing a name after {mac}")
        known[mac.upper()] = name
    return known


def presence_report(seen: Mapping[str, int | None],
                    known: Mapping[str, str]) -> list[dict[str, str]]:
    """The tutorial's ``devices`` shape, known devices only, sorted by name."""
    found = [{"name": name, "mac": mac} for mac, name in known.items() if mac in seen]
    return sorted(found, key=lambda d: (d["name"], d["mac"]))


class Scanner(Protocol):
    @property
    def name(self) -> str: ...

    async def scan(self) -> dict[str, int | None]:
        """MAC (upper case) -> RSSI of the devices seen in one scan window."""
        ...


class BleakScan:
    """One BLE scan window with bleak (BlueZ on Linux)."""

    name = "bleak"

    def __init__(self, duration: float, adapter: str | None = None) -> None:
        self.duration = duration
        self.adapter = adapter

    async def scan(self) -> dict[str, int | None]:
        try:
            from bleak import BleakScanner
            from bleak.exc import BleakError
        except ImportError:
            raise ScannerError("bleak is not installed (pip install 'homewatch[ble]')") from None
        try:
            if self.adapter:
                found = await BleakScanner.discover(timeout=self.duration, return_adv=True,
                                                    adapter=self.adapter)
            else:
                found = await BleakScanner.discover(timeout=self.duration, return_adv=True)
        except (BleakError, OSError, EOFError) as exc:
            raise ScannerError(f"BLE scan failed: {exc}") from None
        except Exception as exc:  # dbus-fast raises its own types for a missing BlueZ
            if type(exc).__module__.startswith("dbus_fast"):
                raise ScannerError(f"BLE scan failed (BlueZ): {exc}") from None
            raise
        return {addr.upper(): adv.rssi for addr, (_dev, adv) in found.items()}


class SimulatedScan:
    """Sees each known device most of the time, plus a stranger or two (never published)."""

    name = "simulated"

    def __init__(self, known: Mapping[str, str], rng: random.Random | None = None) -> None:
        self._known = list(known)
        self._rng = rng or random.Random()  # noqa: S311 - not security relevant

    async def scan(self) -> dict[str, int | None]:
        seen: dict[str, int | None] = {
            mac: self._rng.randint(-90, -40) for mac in self._known if self._rng.random() < 0.8
        }
        for _ in range(self._rng.randint(0, 2)):
            mac = ":".join(f"{self._rng.randint(0, 255):02X}" for _ in range(6))
            seen[mac] = self._rng.randint(-100, -60)
        return seen


class AutoScan:
    """bleak when an adapter answers; otherwise the simulation, said once in the log."""

    def __init__(self, real: Scanner, fallback: Scanner) -> None:
        self._real = real
        self._fallback = fallback
        self._active: Scanner | None = None

    @property
    def name(self) -> str:
        return self._active.name if self._active else "auto"

    async def scan(self) -> dict[str, int | None]:
        if self._active is None:
            try:
                seen = await self._real.scan()
            except ScannerError as exc:
                log.warning("no Bluetooth adapter usable (%s); using simulated presence", exc)
                self._active = self._fallback
                return await self._fallback.scan()
            self._active = self._real
            return seen
        return await self._active.scan()


def make_scanner(kind: str, known: Mapping[str, str], *, duration: float,
                 adapter: str | None = None) -> Scanner:
    if kind == "simulated":
        return SimulatedScan(known)
    real = BleakScan(duration, adapter)
    if kind == "bleak":
        return real
    return AutoScan(real, SimulatedScan(known))
