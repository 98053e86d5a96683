"""The real Home Assistant harness (tests/homeassistant.py) against the real Mosquitto:
what MQTT discovery makes of retained configs published by a real paho client, and that
Home Assistant refuses a broker it cannot trust or a password the broker refuses.

The broker's ACL (homewatch's provisioning) lets pi-kitchen write ``home/pi-kitchen/#``
and the subscriber identity read ``home/#``: Home Assistant connects as the subscriber
with its discovery prefix under pi-kitchen's topics. The refusal tests change their
broker's password file and certificate, so they run their own broker."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.helpers import (
    ROOT,
    Broker,
    clean_env,
    gen_certs,
    homewatch_cli,
    paho_client,
    password,
    stop_client,
)
from tests.homeassistant import INSTALL, HomeAssistant, MqttRefused, MqttSettings, venv

pytestmark = pytest.mark.broker

PREFIX = "home/pi-kitchen/ha"  # pi-kitchen may write it, the subscriber identity read it
Connect = Callable[[MqttSettings], HomeAssistant]


class Retained:
    """A real paho client publishing retained messages as a device (pi-kitchen by
    default); every retained topic it set is cleared (empty retained message) when it
    closes, so nothing outlives the test on a broker other tests share."""

    def __init__(self, broker: Broker, certs: Path, ca: Path | None = None,
                 user: str = "pi-kitchen") -> None:
        self.client, rc = paho_client(broker, certs, user, password(certs, user), ca=ca)
        assert rc == 0, f"{user} could not connect: {rc}"
        self.topics: set[str] = set()

    def publish(self, topic: str, payload: str | bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS and info.is_published(), topic
        self.topics.add(topic)

    def close(self) -> None:
        for topic in sorted(self.topics):
            self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        stop_client(self.client)


class Sensor:
    """A temperature sensor's discovery config, state and availability topics, with an
    object id of its own (entity ``sensor.<object_id>``)."""

    def __init__(self, prefix: str = PREFIX, topics: str = "home/pi-kitchen/ha-test") -> None:
        self.object_id = f"hw_test_{secrets.token_hex(4)}"
        self.entity_id = f"sensor.{self.object_id}"
        base = f"{topics}/{self.object_id}"
        self.state_topic, self.availability_topic = f"{base}/state", f"{base}/availability"
        self.config_topic = f"{prefix}/sensor/{self.object_id}/config"

    def config(self) -> str:
        return json.dumps({
            "name": f"Kitchen {self.object_id}", "object_id": self.object_id,
            "unique_id": f"homewatch-{self.object_id}", "state_topic": self.state_topic,
            "availability_topic": self.availability_topic, "device_class": "temperature",
            "unit_of_measurement": "°C", "state_class": "measurement",
            "device": {"identifiers": [f"homewatch-test-{self.object_id}"],
                       "name": f"Pi {self.object_id}", "manufacturer": "Homewatch"}})


def settings(broker: Broker, certs: Path, *, ca: Path | None = None,
             password_file: Path | None = None, prefix: str = PREFIX,
             user: str = "subscriber") -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port, ca=ca or certs / "ca.crt",
                        username=user,
                        password_file=password_file or certs / "clients" / user /
                        "password",
                        discovery_prefix=prefix)


@pytest.fixture
def ha(broker: Broker, certs: Path, home_assistant_mqtt: Connect) -> Iterator[HomeAssistant]:
    """The session's Home Assistant connected to the shared broker as the subscriber;
    the password never shows in its log."""
    ha = home_assistant_mqtt(settings(broker, certs))
    yield ha
    assert password(certs, "subscriber") not in ha.log()


@pytest.fixture
def kitchen(broker: Broker, certs: Path) -> Iterator[Retained]:
    """pi-kitchen on the shared broker, its retained messages cleared afterwards."""
    publisher = Retained(broker, certs)
    yield publisher
    publisher.close()


def number(state: dict[str, Any]) -> float | None:
    """The state as a number, or None when it is not one (unknown, unavailable)."""
    try:
        return float(state["state"])
    except ValueError:
        return None


def show(kitchen: Retained, sensor: Sensor, value: str) -> None:
    kitchen.publish(sensor.config_topic, sensor.config())
    kitchen.publish(sensor.availability_topic, "online")
    kitchen.publish(sensor.state_topic, value)


def test_a_discovered_temperature_sensor_shows_its_reading_as_a_number(
        ha: HomeAssistant, kitchen: Retained) -> None:
    """A retained discovery config and reading published by a real paho client become a
    temperature entity in Home Assistant whose state is that number in °C."""
    sensor = Sensor()
    show(kitchen, sensor, "21.5")
    state = ha.wait_for(sensor.entity_id, where=lambda s: number(s) is not None)
    assert number(state) == 21.5
    assert state["attributes"]["device_class"] == "temperature"
    assert state["attributes"]["unit_of_measurement"] == "°C"
    assert state["attributes"]["state_class"] == "measurement"
    assert ha.entity_id(f"homewatch-{sensor.object_id}") == sensor.entity_id
    device = next(d for d in ha.device_registry()
                  if ["mqtt", f"homewatch-test-{sensor.object_id}"] in d["identifiers"])
    assert device["name"] == f"Pi {sensor.object_id}"
    kitchen.publish(sensor.state_topic, "22.25")
    ha.wait_for(sensor.entity_id, where=lambda s: number(s) == 22.25)


def test_an_empty_retained_config_removes_the_entity(
        ha: HomeAssistant, kitchen: Retained) -> None:
    """An empty retained discovery config makes the entity disappear from Home Assistant:
    its state, its entity registry entry and its device (which had no other entity)."""
    sensor = Sensor()
    show(kitchen, sensor, "19.0")
    ha.wait_for(sensor.entity_id)
    kitchen.publish(sensor.config_topic, b"")
    ha.wait_for(lambda states: all(s["entity_id"] != sensor.entity_id for s in states),
                message=f"{sensor.entity_id} stayed")
    assert ha.state(sensor.entity_id) is None
    ha.wait_for(lambda _: ha.entity_id(f"homewatch-{sensor.object_id}") is None,
                message="its entity registry entry stayed")
    ha.wait_for(lambda _: all(["mqtt", f"homewatch-test-{sensor.object_id}"] not in
                              d["identifiers"] for d in ha.device_registry()),
                message="its device stayed")


def test_availability_offline_makes_the_entity_unavailable(
        ha: HomeAssistant, kitchen: Retained) -> None:
    """Availability ``offline`` makes the entity ``unavailable``; ``online`` brings its
    reading back."""
    sensor = Sensor()
    show(kitchen, sensor, "20.5")
    ha.wait_for(sensor.entity_id, where=lambda s: number(s) == 20.5)
    kitchen.publish(sensor.availability_topic, "offline")
    ha.wait_for(sensor.entity_id, where=lambda s: s["state"] == "unavailable")
    kitchen.publish(sensor.availability_topic, "online")
    ha.wait_for(sensor.entity_id, where=lambda s: number(s) == 20.5)


# -- brokers of their own: another ACL, or a password and certificate that change ------

def own_broker(tmp_path: Path, base: str, names: tuple[str, ...],
               ) -> Iterator[tuple[Path, Broker]]:
    """Certificates (gen-certs.sh), identities made by homewatch's provisioning with the
    ACL for ``base``, and a broker of the test's own."""
    certs = tmp_path / "certs"
    gen_certs(certs)
    for name in names:
        homewatch_cli(certs, "--base", base, "device", "add", name)
    broker = Broker(certs=certs, workdir=tmp_path / "broker").start()
    yield certs, broker
    broker.stop()


@pytest.fixture
def own(tmp_path: Path) -> Iterator[tuple[Path, Broker]]:
    """The subscriber and pi-kitchen on a broker of the test's own."""
    yield from own_broker(tmp_path, "home", ("subscriber", "pi-kitchen"))


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Broker]]:
    """The stack's own identities: the subscriber (which may write Home Assistant's
    default discovery prefix and the bridge's) and the read-only ``homeassistant``
    identity that ``make add-homeassistant`` makes."""
    certs = tmp_path / "certs"
    gen_certs(certs)
    homewatch_cli(certs, "device", "add", "subscriber")
    homewatch_cli(certs, "homeassistant", "add")
    broker = Broker(certs=certs, workdir=tmp_path / "broker").start()
    yield certs, broker
    broker.stop()


def test_with_the_default_prefix_and_a_read_only_identity_a_sensor_appears(
        read_only: tuple[Path, Broker], home_assistant_mqtt: Connect) -> None:
    """Home Assistant set up as a user would (default discovery prefix, birth message on)
    with the read-only ``homeassistant`` identity shows a sensor the subscriber's identity
    published under ``homeassistant/``, with its state under ``homewatch/``."""
    certs, broker = read_only
    ha = home_assistant_mqtt(settings(broker, certs, prefix="homeassistant",
                                      user="homeassistant"))
    publisher = Retained(broker, certs, user="subscriber")
    try:
        sensor = Sensor(prefix="homeassistant", topics="homewatch/test")
        show(publisher, sensor, "18.75")
        state = ha.wait_for_unique_id(f"homewatch-{sensor.object_id}",
                                      where=lambda s: number(s) == 18.75)
        assert state["entity_id"] == sensor.entity_id
    finally:
        publisher.close()


def until(probe: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def connack(broker: Broker, certs: Path, user: str, secret: str,
            ca: Path | None = None) -> mqtt.ReasonCode | None:
    client, rc = paho_client(broker, certs, user, secret, ca=ca)
    stop_client(client)
    return rc


def never_appears(ha: HomeAssistant, publisher: Retained, refusal: str) -> None:
    """A retained discovery config published now: Home Assistant tries the broker again
    (and is refused again, ``refusal`` logged once more) and still has no such entity."""
    sensor = Sensor()
    try:
        show(publisher, sensor, "23.0")
        ha.wait_for_log(refusal, more_than=ha.log_count(refusal))
        assert ha.state(sensor.entity_id) is None
    finally:
        publisher.close()


def test_a_foreign_ca_is_refused_and_no_entity_appears(
        own: tuple[Path, Broker], home_assistant_mqtt: Connect, tmp_path: Path) -> None:
    """Home Assistant refuses a broker whose certificate is not from the CA it was
    given: the config flow with another CA (the dashboard's, from gen-certs.sh) says
    cannot_connect and makes no entry; an entry made before the broker's certificate was
    replaced by a foreign CA's logs the verification failure, and no entity appears."""
    certs, broker = own
    with pytest.raises(MqttRefused) as refused:
        home_assistant_mqtt(settings(broker, certs, ca=certs / "dashboard-ca.crt"))
    assert refused.value.errors == {"base": "cannot_connect"}
    until(lambda: "unknown ca" in broker.log(), "the broker never logged the TLS failure")

    ha = home_assistant_mqtt(settings(broker, certs))
    assert len(ha.mqtt_entries()) == 1
    foreign = tmp_path / "foreign"
    gen_certs(foreign)
    for name in ("server.crt", "server.key"):
        shutil.copyfile(foreign / "broker" / name, certs / "broker" / name)
    broker.reload()
    until(lambda: connack(broker, certs, "pi-kitchen", password(certs, "pi-kitchen"),
                          ca=foreign / "ca.crt") == 0,
          "the broker never served the new certificate")
    refusal = "Failed to connect to MQTT server due to exception"
    before = ha.log_count(refusal)
    ha.reload_mqtt()
    ha.wait_for_log(refusal, more_than=before)
    line = [x for x in ha.log().splitlines() if refusal in x][-1]
    assert "CERTIFICATE_VERIFY_FAILED" in line, line
    never_appears(ha, Retained(broker, certs, ca=foreign / "ca.crt"), "Connection failed")


def test_a_wrong_password_is_refused_and_no_entity_appears(
        own: tuple[Path, Broker], home_assistant_mqtt: Connect, tmp_path: Path) -> None:
    """Home Assistant with a password the broker refuses: the config flow says
    cannot_connect and makes no entry; an entry whose password was replaced on the broker
    since (a new password for the identity) logs "not authorised", and no entity appears."""
    certs, broker = own
    wrong = tmp_path / "wrong-password"
    wrong.write_text(secrets.token_urlsafe(24) + "\n")
    wrong.chmod(0o600)
    with pytest.raises(MqttRefused) as refused:
        home_assistant_mqtt(settings(broker, certs, password_file=wrong))
    assert refused.value.errors == {"base": "cannot_connect"}
    until(lambda: "not authorised" in broker.log(), "the broker never logged the refusal")

    ha = home_assistant_mqtt(settings(broker, certs))
    old = tmp_path / "old-password"
    old.write_text(password(certs, "subscriber"))
    homewatch_cli(certs, "device", "add", "subscriber", "--force")
    broker.reload()
    until(lambda: connack(broker, certs, "subscriber", old.read_text()) not in (None, 0),
          "the broker still takes the old password")
    refusal = "Unable to connect to the MQTT broker: Connection Refused: not authorised"
    before = ha.log_count(refusal)
    ha.reload_mqtt()
    ha.wait_for_log(refusal, more_than=before)
    assert old.read_text() not in ha.log()
    never_appears(ha, Retained(broker, certs), refusal)


def test_without_its_virtualenv_a_home_assistant_test_fails_saying_how_to_install_it(
        tmp_path: Path) -> None:
    """A test that needs Home Assistant FAILS (never skips) when its virtualenv is missing,
    and says which script installs it."""
    (tmp_path / "test_needs_ha.py").write_text(
        "def test_it(home_assistant):\n    '''Needs Home Assistant.'''\n")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p",
         "no:cacheprovider", "--rootdir", str(tmp_path), "-c", os.devnull,
         str(tmp_path / "test_needs_ha.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=clean_env({"HOMEWATCH_HA_VENV": str(tmp_path / "no-such-venv")}))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 error" in r.stdout and "skipped" not in r.stdout, r.stdout
    assert INSTALL in r.stdout and "is not installed" in r.stdout, r.stdout


def test_home_assistant_lives_in_its_own_virtualenv_and_installing_again_does_nothing(
        home_assistant: HomeAssistant) -> None:
    """The install script, run again, leaves the installed version alone; Home Assistant's
    virtualenv has its paho-mqtt 1.6 and the project's environment keeps paho 2.2 and no
    Home Assistant."""
    r = subprocess.run(["bash", str(ROOT / INSTALL), str(venv())], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already installed" in r.stdout, r.stdout
    theirs = subprocess.run([str(venv() / "bin" / "python"), "-c",
                             "import paho.mqtt, homeassistant.const as c; "
                             "print(paho.mqtt.__version__, c.__version__)"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert theirs == ["1.6.1", "2024.3.3"]
    ours = subprocess.run([sys.executable, "-c",
                           "import importlib.util, paho.mqtt; print(paho.mqtt.__version__, "
                           "importlib.util.find_spec('homeassistant') is None)"],
                          capture_output=True, text=True, check=True, env=clean_env()).stdout
    assert ours.split()[0].startswith("2.2.") and ours.split()[1] == "True", ours
