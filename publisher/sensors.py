"""Temperature sources: a DS18B20 on 1-wire, a Sense HAT, the SoC's thermal zone, or
simulated.

Each source reads degrees Celsius. ``detect("auto")`` picks the first available in the
order DS18B20 (a room sensor), Sense HAT (on the Pi, so a little warm), thermal zone (the
SoC: warmer than the room), and says in the log which one it chose; finding none is an
error, never a reason to invent data: the simulation runs only when asked for by name,
and its readings are marked simulated in the envelope.

The Sense HAT is read through the kernel's IIO drivers (``hts221``, ``lps25h``), which
Raspberry Pi OS loads for the HAT: no Python package and no ``/dev/i2c-1`` access are
needed, so it works inside the hardened service (``PrivateDevices=yes``).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Protocol

from homewatch.errors import ConfigError, SensorError

log = logging.getLogger(__name__)

KINDS = ("auto", "ds18b20", "sensehat", "thermal", "simulated", "none")
# The Sense HAT's sensors with a temperature channel, best first: the humidity sensor's
# is the one the sense-hat library's get_temperature() reads.
SENSE_HAT_IIO = ("hts221", "lps25h")


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


class IioTemperature:
    """An IIO temperature channel: ``(in_temp_raw + in_temp_offset) * in_temp_scale``
    millidegrees Celsius (the kernel's IIO ABI; offset 0 when the driver has none)."""

    def __init__(self, device: Path, chip: str) -> None:
        self.device = device
        self.name = f"Sense HAT {chip} ({device.name})"

    def _number(self, attribute: str, default: float | None = None) -> float:
        path = self.device / attribute
        try:
            return float(path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            if default is not None:
                return default
            raise SensorError(f"{path}: missing (sensor removed?)") from None
        except OSError as exc:
            raise SensorError(f"{path}: {exc.strerror}") from None
        except ValueError:
            raise SensorError(f"{path}: unexpected content") from None

    def read(self) -> float:
        raw = self._number("in_temp_raw")
        offset = self._number("in_temp_offset", 0.0)
        scale = self._number("in_temp_scale", 1.0)
        return round((raw + offset) * scale / 1000.0, 2)


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


def find_sense_hat(sysfs: Path) -> tuple[Path, str] | None:
    """The Sense HAT's IIO device with a temperature channel, and its chip name."""
    found: dict[str, Path] = {}
    for device in sorted((sysfs / "bus" / "iio" / "devices").glob("iio:device*")):
        try:
            chip = (device / "name").read_text(encoding="ascii").strip()
        except OSError:
            continue
        if chip in SENSE_HAT_IIO and (device / "in_temp_raw").exists():
            found.setdefault(chip, device)
    for chip in SENSE_HAT_IIO:
        if chip in found:
            return found[chip], chip
    return None


def detect(kind: str, sysfs: Path = Path("/sys")) -> TemperatureSource | None:
    """The temperature source for ``kind`` (one of KINDS); None for "none"."""
    if kind == "none":
        return None
    if kind == "simulated":
        return SimulatedTemperature()
    if kind in ("ds18b20", "auto"):
        found = find_ds18b20(sysfs)
        if found is not None:
            return DS18B20(found)
        if kind == "ds18b20":
            raise ConfigError(f"no DS18B20 under {sysfs}/bus/w1/devices/28-* "
                              "(is dtoverlay=w1-gpio enabled?)")
    if kind in ("sensehat", "auto"):
        hat = find_sense_hat(sysfs)
        if hat is not None:
            return IioTemperature(*hat)
        if kind == "sensehat":
            raise ConfigError(f"no Sense HAT under {sysfs}/bus/iio/devices (hts221/lps25h "
                              "drivers not loaded: is the HAT seated, and dtoverlay=rpi-sense "
                              "in config.txt if its EEPROM is not read?)")
    if kind in ("thermal", "auto"):
        zone = find_thermal_zone(sysfs)
        if zone is not None:
            return ThermalZone(zone)
        if kind == "thermal":
            raise ConfigError(f"no readable thermal zone under {sysfs}/class/thermal")
    raise ConfigError(f"no temperature sensor found under {sysfs} (no DS18B20, Sense HAT or "
                      "thermal zone): connect one, or set --temperature none to publish "
                      "presence only (--temperature simulated invents values, marked as such)")
