"""Temperature sources on sysfs trees laid out as the kernel does: thermal zone, DS18B20,
Sense HAT (IIO); none found is an error, never a simulation."""

from __future__ import annotations

from pathlib import Path

import pytest

from homewatch.errors import ConfigError, SensorError
from publisher import sensors


def thermal(root: Path, zone: int, content: str) -> Path:
    d = root / "class" / "thermal" / f"thermal_zone{zone}"
    d.mkdir(parents=True)
    (d / "temp").write_text(content)
    (d / "type").write_text("cpu-thermal\n")
    return d / "temp"


def ds18b20(root: Path, crc: str = "YES", milli: str = "23125",
            sid: str = "28-3c01d607a1b2") -> Path:
    d = root / "bus" / "w1" / "devices" / sid
    d.mkdir(parents=True)
    (d / "w1_slave").write_text(
        f"72 01 4b 46 7f ff 0e 10 57 : crc=57 {crc}\n72 01 4b 46 7f ff 0e 10 57 t={milli}\n")
    return d / "w1_slave"


def iio(root: Path, n: int, chip: str, raw: str, offset: str | None,
        scale: str) -> Path:
    """An IIO device as the hts221/lps25h drivers present it."""
    d = root / "bus" / "iio" / "devices" / f"iio:device{n}"
    d.mkdir(parents=True)
    (d / "name").write_text(chip + "\n")
    (d / "in_temp_raw").write_text(raw + "\n")
    if offset is not None:
        (d / "in_temp_offset").write_text(offset + "\n")
    (d / "in_temp_scale").write_text(scale + "\n")
    return d


def test_sense_hat_reads_its_iio_temperature_channel(tmp_path: Path) -> None:
    """(raw + offset) * scale millidegrees: the LPS25H's (raw -10320, offset 20400, scale
    1000/480) is 21.0 C; the HTS221's is preferred when both are there."""
    thermal(tmp_path, 0, "48312\n")
    iio(tmp_path, 0, "lps25h", "-10320", "20400", "2.083333333")
    src = sensors.detect("auto", tmp_path)
    assert isinstance(src, sensors.IioTemperature) and "lps25h" in src.name
    assert src.read() == 21.0
    iio(tmp_path, 1, "hts221", "-1660", "-28100", "-0.700000")
    src = sensors.detect("sensehat", tmp_path)
    assert "hts221" in src.name and src.read() == 20.83


def test_sense_hat_read_errors_are_sensor_errors(tmp_path: Path) -> None:
    """A vanished channel or garbage in it fails that reading, clearly."""
    d = iio(tmp_path, 0, "hts221", "100", None, "1.0")
    src = sensors.detect("sensehat", tmp_path)
    assert src.read() == 0.1  # no in_temp_offset: 0
    (d / "in_temp_raw").write_text("busy\n")
    with pytest.raises(SensorError, match="unexpected content"):
        src.read()
    (d / "in_temp_raw").unlink()
    with pytest.raises(SensorError, match="missing"):
        src.read()


def test_sense_hat_asked_for_but_absent_is_a_config_error(tmp_path: Path) -> None:
    """--temperature sensehat without the HAT's drivers says what to check."""
    iio(tmp_path, 0, "bme280", "1", None, "1")  # another IIO sensor is not a Sense HAT
    with pytest.raises(ConfigError, match="no Sense HAT"):
        sensors.detect("sensehat", tmp_path)


def test_thermal_zone_reads_millidegrees(tmp_path: Path) -> None:
    """A Pi's thermal zone '48312' reads as 48.31 degrees C."""
    thermal(tmp_path, 0, "48312\n")
    src = sensors.detect("auto", tmp_path)
    assert isinstance(src, sensors.ThermalZone)
    assert src.read() == 48.31


def test_unreadable_thermal_zones_are_skipped(tmp_path: Path) -> None:
    """A zone with bad content is skipped in favour of the next readable one."""
    thermal(tmp_path, 0, "garbage\n")
    good = thermal(tmp_path, 1, "40000\n")
    src = sensors.detect("thermal", tmp_path)
    assert isinstance(src, sensors.ThermalZone) and src.path == good


def test_ds18b20_is_preferred_and_parsed(tmp_path: Path) -> None:
    """With both present, auto picks the DS18B20 (room air) and reads t=23125 as 23.125."""
    thermal(tmp_path, 0, "48312\n")
    ds18b20(tmp_path)
    src = sensors.detect("auto", tmp_path)
    assert isinstance(src, sensors.DS18B20)
    assert src.read() == 23.125


def test_ds18b20_negative_temperature(tmp_path: Path) -> None:
    """Frost reads correctly: t=-5250 is -5.25."""
    ds18b20(tmp_path, milli="-5250")
    assert sensors.detect("ds18b20", tmp_path).read() == -5.25


def test_ds18b20_crc_failure_is_a_sensor_error(tmp_path: Path) -> None:
    """The 'NO' CRC line is reported as a read error, not a temperature."""
    ds18b20(tmp_path, crc="NO")
    with pytest.raises(SensorError, match="CRC"):
        sensors.detect("ds18b20", tmp_path).read()


def test_ds18b20_power_on_value_is_a_sensor_error(tmp_path: Path) -> None:
    """85.000 (the power-on reset value) is reported as not ready."""
    ds18b20(tmp_path, milli="85000")
    with pytest.raises(SensorError, match="85"):
        sensors.detect("ds18b20", tmp_path).read()


def test_sensor_vanishing_is_a_sensor_error(tmp_path: Path) -> None:
    """A sensor file that disappears (unplugged) is a SensorError naming the file."""
    f = ds18b20(tmp_path)
    src = sensors.detect("auto", tmp_path)
    f.unlink()
    with pytest.raises(SensorError, match="w1_slave"):
        src.read()


def test_auto_without_a_sensor_is_an_error_not_invented_data(tmp_path: Path) -> None:
    """auto on a machine without sensors stops with the fix, never a simulation."""
    with pytest.raises(ConfigError, match=r"no temperature sensor found.*--temperature none"):
        sensors.detect("auto", tmp_path)
    assert sensors.detect("none", tmp_path) is None


def test_explicit_source_that_is_missing_is_a_config_error(tmp_path: Path) -> None:
    """Asking for a DS18B20 or thermal zone that is not there is a clear error."""
    with pytest.raises(ConfigError, match="DS18B20"):
        sensors.detect("ds18b20", tmp_path)
    with pytest.raises(ConfigError, match="thermal zone"):
        sensors.detect("thermal", tmp_path)
