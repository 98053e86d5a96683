"""The real broker running broker/mosquitto.conf: who may connect, publish and read."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest

from homewatch.errors import AuthError, TLSError
from homewatch.mqtt import Connection, ConnectionSettings
from homewatch.secrets import Secret
from homewatch.url import parse_broker_url
from tests.helpers import (
    Broker,
    Collector,
    gen_certs,
    homewatch_cli,
    paho_client,
    password,
    stop_client,
)

pytestmark = pytest.mark.broker


def settings(broker: Broker, certs: Path, user: str, *, host: str | None = None,
             ca: Path | None = None, secret: str | None = None) -> ConnectionSettings:
    return ConnectionSettings(
        url=parse_broker_url(broker.url(host)), username=user,
        client_id=f"t-{uuid.uuid4().hex[:8]}", ca_file=ca or certs / "ca.crt",
        password=Secret(secret if secret is not None else password(certs, user)))


def test_anonymous_client_is_refused(broker: Broker, certs: Path) -> None:
    """A TLS client without user name gets CONNACK 'Not authorized'."""
    client, rc = paho_client(broker, certs, None, None)
    stop_client(client)
    assert rc is not None and rc.is_failure and "authori" in str(rc).lower()


def test_wrong_password_is_refused(broker: Broker, certs: Path) -> None:
    """A known user with a wrong password is refused."""
    client, rc = paho_client(broker, certs, "pi-kitchen", "not-the-password")
    stop_client(client)
    assert rc is not None and rc.is_failure


def test_unknown_user_is_refused(broker: Broker, certs: Path) -> None:
    """A user not in the password file is refused."""
    client, rc = paho_client(broker, certs, "pi-attic", "whatever")
    stop_client(client)
    assert rc is not None and rc.is_failure


def test_our_client_reports_refused_credentials_as_auth_error(broker: Broker,
                                                              certs: Path) -> None:
    """The project's connection raises AuthError at once instead of retrying forever."""
    conn = Connection(settings(broker, certs, "pi-kitchen", secret="wrong"))
    with pytest.raises(AuthError, match="Not authorized"):
        conn.start(threading.Event())


def test_plaintext_mqtt_to_the_tls_port_fails(broker: Broker, certs: Path) -> None:
    """A plain MQTT CONNECT to 8883 never gets a CONNACK: there is no plaintext listener."""
    client, rc = paho_client(broker, certs, "pi-kitchen", password(certs, "pi-kitchen"),
                             tls=False)
    stop_client(client)
    assert rc is None


def test_broker_with_a_certificate_from_another_ca_is_refused(
        certs: Path, tmp_path: Path) -> None:
    """Our client refuses a broker whose certificate another CA signed."""
    foreign = tmp_path / "foreign"
    gen_certs(foreign)
    (foreign / "broker" / "passwd").write_text((certs / "broker" / "passwd").read_text())
    (foreign / "broker" / "acl").write_text((certs / "broker" / "acl").read_text())
    other = Broker(certs=foreign, workdir=tmp_path / "b").start()
    try:
        conn = Connection(settings(other, certs, "pi-kitchen"))
        with pytest.raises(TLSError, match="not trusted"):
            conn.start(threading.Event())
    finally:
        other.stop()


def test_the_dashboards_key_cannot_pose_as_the_broker(certs: Path, tmp_path: Path) -> None:
    """A broker run with the dashboard's certificate and key (an attacker who took the
    LAN-facing dashboard) is refused by a Pi although it names the same host: that
    certificate comes from the dashboard's own CA, which Pis do not trust."""
    stolen = tmp_path / "stolen"
    shutil.copytree(certs / "broker", stolen / "broker")
    for name in ("server.crt", "server.key"):
        shutil.copy(certs / "dashboard" / name, stolen / "broker" / name)
    other = Broker(certs=stolen, workdir=tmp_path / "b").start()
    try:
        conn = Connection(settings(other, certs, "pi-kitchen"))
        with pytest.raises(TLSError, match="not trusted"):
            conn.start(threading.Event())
    finally:
        other.stop()


def test_broker_host_name_not_in_the_certificate_is_refused(
        certs: Path, tmp_path: Path) -> None:
    """Connecting by an address the certificate does not list (127.0.0.2) is refused."""
    other = Broker(certs=certs, workdir=tmp_path / "b", host="127.0.0.2").start()
    try:
        conn = Connection(settings(other, certs, "pi-kitchen", host="127.0.0.2"))
        with pytest.raises(TLSError, match=r"not valid for '127\.0\.0\.2'"):
            conn.start(threading.Event())
    finally:
        other.stop()


def test_tls_below_1_2_is_refused(broker: Broker, certs: Path) -> None:
    """A client offering only TLS 1.1 cannot complete a handshake; TLS 1.2 and 1.3 can."""
    def handshake(version: ssl.TLSVersion) -> str:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer old versions
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
        with socket.create_connection((broker.host, broker.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return str(tls.version())

    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):  # the broker's alert
            handshake(old)


def test_an_independent_scanner_grades_every_offered_suite_a(broker: Broker) -> None:
    """nmap ssl-enum-ciphers: only TLS 1.2 and 1.3, forward-secret AEAD suites, all 'A'."""
    out = subprocess.run(["nmap", "-Pn", "-p", str(broker.port), "--script",
                          "ssl-enum-ciphers", broker.host], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    suites = re.findall(r"\|\s+(TLS_\w+) \(([^)]*)\) - (\w+)", out)
    versions = re.findall(r"\|\s+(TLSv[\d.]+|SSLv\d):", out)
    assert versions == ["TLSv1.2", "TLSv1.3"], out
    assert len(suites) >= 4, out
    for name, _kex, grade in suites:
        assert grade == "A", out
        assert "ECDHE" in name or name.startswith("TLS_AKE"), name  # forward secrecy
        assert "GCM" in name or "CHACHA20_POLY1305" in name, name  # AEAD
    assert "least strength: A" in out


@pytest.fixture
def observer(broker: Broker, certs: Path):  # type: ignore[no-untyped-def]
    """A subscriber-identity client watching home/# (it is allowed to read)."""
    client, rc = paho_client(broker, certs, "subscriber", password(certs, "subscriber"),
                             client_id=f"observer-{uuid.uuid4().hex[:6]}")
    assert rc is not None and not rc.is_failure
    yield Collector(client, "home/#")
    stop_client(client)


def publish_as(broker: Broker, certs: Path, user: str, topic: str, payload: bytes) -> None:
    client, rc = paho_client(broker, certs, user, password(certs, user))
    assert rc is not None and not rc.is_failure
    client.publish(topic, payload, qos=1).wait_for_publish(5)  # acknowledged even if denied
    stop_client(client)


def test_a_device_can_publish_under_its_own_name(broker: Broker, certs: Path,
                                                 observer: Collector) -> None:
    """pi-kitchen writing home/pi-kitchen/... reaches the subscriber."""
    publish_as(broker, certs, "pi-kitchen", "home/pi-kitchen/temperature", b"own")
    assert observer.wait_for("home/pi-kitchen/temperature")[-1][1] == b"own"


def test_a_device_cannot_publish_into_another_devices_topics(
        broker: Broker, certs: Path, observer: Collector) -> None:
    """pi-kitchen writing home/pi-garage/... is acknowledged but NOT delivered."""
    publish_as(broker, certs, "pi-kitchen", "home/pi-garage/temperature", b"forged")
    publish_as(broker, certs, "pi-garage", "home/pi-garage/marker", b"marker")
    seen = observer.wait_for("home/pi-garage/marker")
    assert ("home/pi-garage/temperature", b"forged") not in seen


def test_a_device_cannot_publish_outside_the_base_or_at_the_base(
        broker: Broker, certs: Path, observer: Collector) -> None:
    """Writes to home/x or other/... by a device are not delivered."""
    publish_as(broker, certs, "pi-kitchen", "home/broadcast", b"forged")
    publish_as(broker, certs, "pi-garage", "home/pi-garage/marker", b"marker")
    seen = observer.wait_for("home/pi-garage/marker")
    assert all(payload != b"forged" for _, payload in seen)


def test_the_subscriber_cannot_publish(broker: Broker, certs: Path,
                                       observer: Collector) -> None:
    """The subscriber identity writing into a device's topic is NOT delivered."""
    publish_as(broker, certs, "subscriber", "home/pi-kitchen/temperature", b"forged")
    publish_as(broker, certs, "pi-garage", "home/pi-garage/marker", b"marker")
    seen = observer.wait_for("home/pi-garage/marker")
    assert ("home/pi-kitchen/temperature", b"forged") not in seen


def test_a_device_cannot_read_anything(broker: Broker, certs: Path) -> None:
    """A device subscribed to home/# receives nothing, not even its own readings."""
    client, _rc = paho_client(broker, certs, "pi-garage", password(certs, "pi-garage"))
    spy = Collector(client, "home/#")
    publish_as(broker, certs, "pi-kitchen", "home/pi-kitchen/temperature", b"secret")
    publish_as(broker, certs, "pi-garage", "home/pi-garage/temperature", b"secret")
    time.sleep(1.0)
    stop_client(client)
    assert spy.messages.empty()


def test_a_device_cannot_read_sys_topics(broker: Broker, certs: Path) -> None:
    """A device subscribed to $SYS/# receives nothing (the broker publishes there often)."""
    client, rc = paho_client(broker, certs, "pi-garage", password(certs, "pi-garage"))
    assert rc is not None and not rc.is_failure
    spy = Collector(client, "$SYS/#")
    time.sleep(1.5)
    stop_client(client)
    assert spy.messages.empty()


@pytest.mark.parametrize("name", ["pi-kitchen/#", "+", "#", "pi-kitchen/x", "home/+"])
def test_usernames_with_topic_wildcards_or_slashes_get_nowhere(
        broker: Broker, certs: Path, name: str) -> None:
    """Provisioning refuses them, and the broker refuses a client claiming one, even with
    a valid device password."""
    r = homewatch_cli(certs, "device", "add", name, check=False)
    assert r.returncode == 2 and "invalid identity name" in r.stderr
    client, rc = paho_client(broker, certs, name, password(certs, "pi-kitchen"))
    stop_client(client)
    assert rc is not None and rc.is_failure


def test_oversized_payload_is_not_delivered(broker: Broker, certs: Path,
                                            observer: Collector) -> None:
    """A payload over message_size_limit (16 KiB) is dropped by the broker."""
    publish_as(broker, certs, "pi-kitchen", "home/pi-kitchen/big", b"x" * 20_000)
    publish_as(broker, certs, "pi-garage", "home/pi-garage/marker", b"marker")
    seen = observer.wait_for("home/pi-garage/marker")
    assert all(topic != "home/pi-kitchen/big" for topic, _ in seen)
