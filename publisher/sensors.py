"""Temperature sources: a Linux/Pi thermal zone, a DS18B20 on 1-wire, or simulated.

Each source reads degrees Celsius. ``detect()`` picks the first available in the order
DS18B20 (a room sensor), thermal zone (the SoC: warmer than the room), simulated, and
says in the log which one it chose and why.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Protocol

from homewatch.errors import ConfigError, SensorError

log = logging.getLogger(__name__)

KINDS = ("auto", "ds18b20", "thermal", "simulated")


class TemperatureSource(Protocol):
    @property
    def name(self) -> str: ...

    def read(self) -> float:
        """Degrees Celsius; raises SensorError when this reading failed."""
        ...


class ThermalZone:
    """``/sys/class/thermal/thermal_zoneN/temp``: millidegrees Celsius."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"thermal zone {path.parent.name}"

    def read(self) -> float:
        try:
            text = self.path.read_text(encoding="ascii").strip()
            return round(int(text) / 1000.0, 2)
        except OSError as exc:
            raise SensorError(f"{self.path}: {exc.strerror}") from None
        except ValueError:
            raise SensorError(f"{self.path}: unexpected content") from None


class DS18B20:
    """``/sys/bus/w1/devices/28-*/w1_slave``: two lines, CRC check then ``t=<milli C>``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"DS18B20 {path.parent.name}"

    def read(self) -> float:
        try:
            lines = self.path.read_text(encoding="ascii").splitlines()
        except OSError as exc:
            raise SensorError(f"{self.path}: {exc.strerror}") from None
        if len(lines) < 2 or not lines[0].strip().endswith("YES"):
            raise SensorError(f"{self.path}: CRC check failed (bad wiring or pull-up?)")
        _, sep, milli = lines[1].rpartition("t=")
        if not sep:
            raise SensorError(f"{self.path}: no temperature in the reading")
        try:
            value = int(milli) / 1000.0
        except ValueError:
            raise SensorError(f"{self.path}: unexpected content") from None
        if value == 85.0:  # the power-on reset value: the conversion did not run
            raise SensorError(f"{self.path}: power-on value 85.000 (sensor not ready)")
        return round(value, 3)


class SimulatedTemperature:
    """A slow random walk around 21 degrees, for demos and machines without sensors."""

    name = "simulated"

    def __init__(self, rng: random.Random | None = None, start: float = 21.0) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - not security relevant
        self._value = start

    def read(self) -> float:
        self._value += self._rng.uniform(-0.2, 0.2)
        self._value = min(max(self._value, 15.0), 28.0)
        return round(self._value, 2)


def find_thermal_zone(sysfs: Path) -> Path | None:
    zones = sorted((sysfs / "class" / "thermal").glob("thermal_zone*/temp"))
    for zone in zones:
        try:
            int(zone.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        return zone
    return None


def find_ds18b20(sysfs: Path) -> Path | None:
    sensors = sorted((sysfs / "bus" / "w1" / "devices").glob("28-*/w1_slave"))
    return sensors[0] if sensors else None


def detect(kind: str, sysfs: Path = Path("/sys")) -> TemperatureSource:
    """The temperature source for ``kind`` (one of KINDS)."""
    if kind == "simulated":
        return SimulatedTemperature()
    if kind in ("ds18b20", "auto"):
        found = find_ds18b20(sysfs)
        if found is not None:
            return DS18B20(found)
        if kind == "ds18b20":
            raise ConfigError(f"no DS18B20 under {sysfs}/bus/w1/devices/28-* "
                              "(is dtoverlay=w1-gpio enabled?)")
    if kind in ("thermal", "auto"):
        zone = find_thermal_zone(sysfs)
        if zone is not None:
            return ThermalZone(zone)
        if kind == "thermal":
            raise ConfigError(f"no readable thermal zone under {sysfs}/class/thermal")
    log.warning("no temperature sensor found under %s (no DS18B20, no thermal zone); "
                "using simulated temperatures", sysfs)
    return SimulatedTemperature()
