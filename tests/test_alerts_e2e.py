"""Alerts end to end: the real subscriber process with an alerts file, the real broker,
sealed readings published by a device's own MQTT identity, and a real HTTP server on
loopback receiving the webhook's POSTs; the alerts land in the history database."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from homewatch.envelope import seal
from homewatch.history.sqlite import SqliteHistoryReader
from homewatch.secrets import load_keyring
from tests.helpers import Broker, clean_env, paho_client, password, running, stop_client
from tests.test_alerts import Receiver
from tests.test_end_to_end import read_lines, subscriber_cmd, wait_subscribed

pytestmark = pytest.mark.broker

DEVICE = "pi-kitchen"
PERSON = "Annas Watch"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Pi:
    """Publishes sealed readings as pi-kitchen, with its own password and key ring."""

    def __init__(self, broker: Broker, certs: Path) -> None:
        self.ring = load_keyring(certs / "clients" / DEVICE / "fernet.key")
        self.client, _ = paho_client(broker, certs, DEVICE, password(certs, DEVICE))
        self.seq = int(time.time() * 1000)
        # Online, as a real publisher says when it connects (a retained "offline" left by
        # an earlier test would otherwise keep it from vouching for anyone).
        self.client.publish(f"home/{DEVICE}/status", b"online", qos=1,
                            retain=True).wait_for_publish(5)

    def send(self, kind: str, data: Any, simulated: str | None = None) -> None:
        self.seq += 1
        topic = f"home/{DEVICE}/{kind}"
        payload = seal(self.ring, topic=topic, device=DEVICE, seq=self.seq, data=data,
                       taken=time.time(), simulated=simulated)
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def presence(self, state: str) -> None:
        self.send("devices", [{"name": PERSON, "mac": "5C:F9:38:12:34:56", "state": state,
                               "last_seen": time.time()}], "demo")

    def close(self) -> None:
        stop_client(self.client)


def alerts_file(workdir: Path, receiver: Receiver) -> Path:
    path = workdir / "alerts.toml"
    path.write_text(f"""
[webhook]
url = "{receiver.url}/hook/secret-token"
timeout = 2

[[rule]]
when = "arrives"
person = "{PERSON}"

[[rule]]
when = "scanner-error"
""")
    path.chmod(0o600)
    return path


def drain(pipe: Any) -> list[str]:
    """Lines of a pipe, collected by a thread as they come."""
    lines: list[str] = []

    def run() -> None:
        for line in pipe:
            lines.append(line)
    threading.Thread(target=run, daemon=True).start()
    return lines


def until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_an_arrival_alert_is_posted_once_retried_after_a_500_and_kept_in_the_history(
        broker: Broker, workdir: Path, certs: Path, receiver: Receiver) -> None:
    """Anna away then home (twice): one arrival alert, marked demo; the webhook's first
    answer is a 500, so it is retried and delivered once; the log masks the URL; the
    history has it as delivered; a scanner error sent after it arrives too (so nothing
    more of the arrival was coming)."""
    db = workdir / "hist.db"
    receiver.statuses = [500]
    cmd = subscriber_cmd(broker, workdir, "--history", str(db), "--alerts",
                         str(alerts_file(workdir, receiver)))
    with running(cmd, cwd=workdir) as sub:
        wait_subscribed(sub)
        log = drain(sub.stderr)
        pi = Pi(broker, certs)
        try:
            pi.presence("away")  # the first state: a baseline, no alert
            pi.presence("home")
            pi.presence("home")
            (arrival,) = receiver.wait(1)
            pi.send("scanner", {"state": "error", "detail": "hci0 gone"})
            bodies = receiver.wait(2)
        finally:
            pi.close()
        sub.send_signal(signal.SIGTERM)
        sub.wait(20)
    assert sub.returncode == 0
    assert [b["kind"] for b in bodies] == ["arrives", "scanner-error"]
    assert arrival["person"] == PERSON and arrival["demo"] is True
    assert arrival["simulated"] == "demo" and "[demo data, not measured]" in str(
        arrival["message"])
    text = "".join(log)
    assert "failed (HTTP 500); retrying in 1 s" in text
    assert f"http://127.0.0.1:{receiver.server.server_address[1]}/***" in text
    assert "secret-token" not in text
    with SqliteHistoryReader(db) as r:
        records = r.alerts()
    assert [(a.kind, a.subject, a.delivery) for a in records] == [
        ("scanner-error", DEVICE, "delivered"), ("arrives", PERSON, "delivered")]
    assert records[1].simulated == "demo"


def test_a_hanging_webhook_never_delays_readings(
        broker: Broker, workdir: Path, certs: Path, receiver: Receiver) -> None:
    """While the webhook does not answer, the subscriber keeps showing readings; an
    alerts file every user may read is warned about (it may hold a secret URL)."""
    receiver.hang.set()
    path = alerts_file(workdir, receiver)
    path.chmod(0o644)
    cmd = subscriber_cmd(broker, workdir, "--no-history", "--alerts", str(path))
    with running(cmd, cwd=workdir) as sub:
        early = "".join(wait_subscribed(sub))
        drain(sub.stderr)
        pi = Pi(broker, certs)
        try:
            pi.send("scanner", {"state": "error", "detail": "hci0 gone"})
            until(lambda: receiver.started >= 1)  # the alert's POST hangs from now on
            for i in range(5):
                pi.send("temperature", {"temperature": 20.0 + i})
            lines = read_lines(sub, 6)
        finally:
            pi.close()
    assert lines[0].startswith(f"Topic:home/{DEVICE}/scanner")
    assert [line.split("temperature\": ")[1][:4] for line in lines[1:]] == [
        "20.0", "21.0", "22.0", "23.0", "24.0"]
    assert receiver.bodies == []  # the alert was still hanging all along
    assert f"alerts file {path} is readable by every user" in early



def test_a_bad_or_missing_alerts_file_stops_the_subscriber_with_one_line(
        broker: Broker, workdir: Path) -> None:
    """A bad alerts file: exit 2, one line naming the file and the line; a named file
    that does not exist: exit 2 too (only the default one is optional)."""
    bad = workdir / "alerts.toml"
    bad.write_text('[[rule]]\nwhen = "arrives"\nperson = "Anna"\nfor = "5m"\n')
    for path, expected in ((bad, f"alerts file {bad}: line 4: rule 1: 'for' does not "
                                 "belong in a arrives rule"),
                           (workdir / "nope.toml", "alerts file not found: ")):
        proc = subprocess.run(subscriber_cmd(broker, workdir, "--alerts", str(path)),
                              cwd=workdir, env=clean_env(), capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("subscriber: error: " + expected), proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_show_settings_names_the_alerts_file_and_masks_its_url(
        broker: Broker, workdir: Path, receiver: Receiver) -> None:
    """--show-settings prints the alerts file, its rule count and the webhook's URL
    with its path (the secret) masked."""
    path = alerts_file(workdir, receiver)
    proc = subprocess.run(subscriber_cmd(broker, workdir, "--alerts", str(path),
                                         "--show-settings"),
                          cwd=workdir, env=clean_env(), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    port = receiver.server.server_address[1]
    assert (f"alerts={path} (2 rule(s), webhook http://127.0.0.1:{port}/*** (json))"
            in proc.stdout.splitlines())
    assert "secret-token" not in proc.stdout
