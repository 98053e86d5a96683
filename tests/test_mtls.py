"""Mutual TLS (broker/mosquitto-mtls.conf): only clients with a certificate from the
project CA, unexpired and not revoked, get in; the certificate's CN is the user name,
so the same ACL holds. Revocation takes effect on a broker reload, without a restart."""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from homewatch import pki
from tests.helpers import (
    BROKER_MTLS_CONF,
    ROOT,
    Broker,
    Collector,
    clean_env,
    gen_certs,
    homewatch_cli,
    paho_client,
    python_m,
    running,
    stop_client,
)

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def mcerts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mcerts")
    gen_certs(out)
    for name in ("subscriber", "pi-kitchen", "pi-garage", "pi-doomed"):
        homewatch_cli(out, "device", "add", name)
    return out


@pytest.fixture(scope="module")
def mbroker(mcerts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(certs=mcerts, workdir=tmp_path_factory.mktemp("mbroker"),
               conf=BROKER_MTLS_CONF).start()
    yield b
    b.stop()


def cert_of(certs: Path, name: str) -> tuple[Path, Path]:
    d = certs / "clients" / name
    return d / "client.crt", d / "client.key"


def connect(broker: Broker, certs: Path, name: str | None, cert: tuple[Path, Path] | None):  # type: ignore[no-untyped-def]
    password = (certs / "clients" / name / "password").read_text().strip() if name else None
    client, rc = paho_client(broker, certs, name, password,
                             client_id=f"m-{uuid.uuid4().hex[:6]}", cert=cert)
    return client, rc


def test_mtls_config_differs_only_in_the_mtls_settings() -> None:
    """mosquitto-mtls.conf is mosquitto.conf plus require_certificate,
    use_identity_as_username and crlfile: the two cannot drift apart."""
    def settings(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    plain = settings(ROOT / "broker" / "mosquitto.conf")
    mtls = settings(BROKER_MTLS_CONF)
    assert [x for x in mtls if x not in plain] == [
        "require_certificate true", "use_identity_as_username true",
        "crlfile /mosquitto/certs/crl.pem"]
    assert [x for x in plain if x not in mtls] == ["require_certificate false"]


def test_client_with_its_certificate_is_accepted(mbroker: Broker, mcerts: Path) -> None:
    """A device presenting its own certificate connects."""
    client, rc = connect(mbroker, mcerts, "pi-kitchen", cert_of(mcerts, "pi-kitchen"))
    stop_client(client)
    assert rc is not None and not rc.is_failure


def test_client_without_certificate_is_refused(mbroker: Broker, mcerts: Path) -> None:
    """A correct password alone is not enough in mutual-TLS mode."""
    client, rc = connect(mbroker, mcerts, "pi-kitchen", None)
    stop_client(client)
    assert rc is None


def test_client_certificate_from_a_foreign_ca_is_refused(mbroker: Broker, mcerts: Path,
                                                         tmp_path: Path) -> None:
    """A certificate with the right CN from another CA is refused."""
    gen_certs(tmp_path / "foreign")
    foreign = pki.load_ca(tmp_path / "foreign" / "ca.crt", tmp_path / "foreign" / "ca.key")
    pki.issue_client_cert(foreign, "pi-kitchen", tmp_path / "c.crt", tmp_path / "c.key")
    client, rc = connect(mbroker, mcerts, "pi-kitchen", (tmp_path / "c.crt", tmp_path / "c.key"))
    stop_client(client)
    assert rc is None


def test_expired_client_certificate_is_refused(mbroker: Broker, mcerts: Path,
                                               tmp_path: Path) -> None:
    """A project-CA certificate whose validity ended is refused."""
    ca = pki.load_ca(mcerts / "ca.crt", mcerts / "ca.key")
    pki.issue_client_cert(ca, "pi-kitchen", tmp_path / "c.crt", tmp_path / "c.key", days=1,
                          not_before=pki.now() - dt.timedelta(days=10))
    client, rc = connect(mbroker, mcerts, "pi-kitchen", (tmp_path / "c.crt", tmp_path / "c.key"))
    stop_client(client)
    assert rc is None


def test_certificate_identity_is_the_user_name_for_the_acl(mbroker: Broker,
                                                           mcerts: Path) -> None:
    """pi-kitchen's certificate cannot write pi-garage's topics, whatever user name it
    claims; its own topics reach the subscriber."""
    sub, rc = connect(mbroker, mcerts, "subscriber", cert_of(mcerts, "subscriber"))
    assert rc is not None and not rc.is_failure
    seen = Collector(sub, "home/#")
    dev, rc = paho_client(mbroker, mcerts, "pi-garage", "claimed-name",
                          cert=cert_of(mcerts, "pi-kitchen"))
    assert rc is not None and not rc.is_failure
    dev.publish("home/pi-garage/temperature", b"forged", qos=1).wait_for_publish(5)
    dev.publish("home/pi-kitchen/marker", b"own", qos=1).wait_for_publish(5)
    got = seen.wait_for("home/pi-kitchen/marker")
    stop_client(dev)
    stop_client(sub)
    assert ("home/pi-garage/temperature", b"forged") not in got


def test_revoked_device_is_refused_after_a_reload_without_restart(mbroker: Broker,
                                                                   mcerts: Path,
                                                                   tmp_path: Path) -> None:
    """`homewatch device remove` revokes the certificate in the CRL; after SIGHUP the
    broker (same process) refuses it."""
    saved = tmp_path / "doomed"
    saved.mkdir()
    for f in cert_of(mcerts, "pi-doomed"):
        (saved / f.name).write_bytes(f.read_bytes())
    kept = (saved / "client.crt", saved / "client.key")
    client, rc = connect(mbroker, mcerts, "pi-doomed", kept)
    stop_client(client)
    assert rc is not None and not rc.is_failure
    pid = mbroker.proc.pid if mbroker.proc else None
    homewatch_cli(mcerts, "device", "remove", "pi-doomed", "--force")
    mbroker.reload()
    client, rc = paho_client(mbroker, mcerts, "pi-doomed", "x", cert=kept)
    stop_client(client)
    assert rc is None
    assert mbroker.proc is not None and mbroker.proc.pid == pid


@pytest.mark.parametrize(("case", "told"), [
    ("revoked", "it is revoked (the device was removed)"),
    ("foreign", "it is not from this server's project CA"),
])
def test_refused_client_certificate_is_named_as_the_reason(mbroker: Broker, mcerts: Path,
                                                           tmp_path: Path, case: str,
                                                           told: str) -> None:
    """A publisher whose certificate the broker refuses (revoked by `device remove`, or
    from another CA) exits 1 with one line saying so, not "is it an MQTT broker?"."""
    name = f"pi-{case}"
    homewatch_cli(mcerts, "device", "add", name)
    creds = tmp_path / name
    shutil.copytree(mcerts / "clients" / name, creds)
    shutil.copy(mcerts / "ca.crt", creds / "ca.crt")
    if case == "revoked":
        homewatch_cli(mcerts, "device", "remove", name, "--force")
        mbroker.reload()
    else:
        gen_certs(tmp_path / "other")
        other = pki.load_ca(tmp_path / "other" / "ca.crt", tmp_path / "other" / "ca.key")
        pki.issue_client_cert(other, name, creds / "client.crt", creds / "client.key")
    r = subprocess.run(
        python_m("publisher", mbroker.url("localhost"), "--credentials", str(creds),
                 "--scanner", "simulated", "--temperature", "simulated", "--interval", "1",
                 "--state-dir", str(tmp_path / "p")),
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("publisher: error: the broker refused the client certificate"), last
    assert f"of {name!r}: {told}" in last
    assert "MQTT broker" not in r.stderr and "Traceback" not in r.stderr


def test_device_revoked_while_connected_is_told_why_when_it_reconnects(mcerts: Path,
                                                                      tmp_path: Path) -> None:
    """A running publisher whose certificate is revoked keeps its connection; when it
    reconnects (here after a broker restart) it logs that the broker refused its
    certificate as revoked, instead of retrying in silence."""
    homewatch_cli(mcerts, "device", "add", "pi-running")
    creds = tmp_path / "pi-running"
    shutil.copytree(mcerts / "clients" / "pi-running", creds)
    shutil.copy(mcerts / "ca.crt", creds / "ca.crt")
    broker = Broker(certs=mcerts, workdir=tmp_path / "broker", conf=BROKER_MTLS_CONF).start()
    lines: queue.Queue[str] = queue.Queue()

    def wait_for(text: str) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.2))
                if text in seen[-1]:
                    return seen
        raise AssertionError(f"no {text!r} in:\n" + "".join(seen))

    try:
        with running(python_m("publisher", broker.url("localhost"), "--credentials",
                              str(creds), "--scanner", "simulated", "--temperature",
                              "simulated", "--interval", "1", "--state-dir",
                              str(tmp_path / "p")), cwd=tmp_path) as proc:
            assert proc.stderr is not None
            threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr or ()],
                             daemon=True).start()
            wait_for("connected to")
            homewatch_cli(mcerts, "device", "remove", "pi-running", "--force")
            broker.kill()
            broker.start()
            seen = wait_for("refused the client certificate")
    finally:
        broker.stop()
    assert "of 'pi-running': it is revoked (the device was removed)" in seen[-1]


def test_programs_run_end_to_end_in_mtls_mode(mbroker: Broker, mcerts: Path,
                                              tmp_path: Path) -> None:
    """Publisher and subscriber find client.crt/client.key in their identity directories
    and work unchanged against the mutual-TLS broker."""
    (tmp_path / "certs").symlink_to(mcerts)
    sub = subprocess.Popen(
        python_m("subscriber", mbroker.url("localhost"), "--count", "3", "--state-dir",
                 str(tmp_path / "s")), cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert sub.stderr is not None
        for line in sub.stderr:
            if "subscribed to home/#" in line:
                break
        pub = subprocess.run(
            python_m("publisher", mbroker.url("localhost"), "--device", "pi-garage", "--count",
                     "1", "--scanner", "simulated", "--temperature", "simulated",
                     "--state-dir", str(tmp_path / "p")),
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
        assert pub.returncode == 0, pub.stderr
        out, err = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
    assert sub.returncode == 0, err
    assert [line.split(",")[0] for line in out.splitlines() if "/status," not in line] == [
        "Topic:home/pi-garage/temperature", "Topic:home/pi-garage/scanner",
        "Topic:home/pi-garage/devices"]
