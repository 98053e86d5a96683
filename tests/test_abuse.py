"""Abuse: a flood of junk does not grow the subscriber's memory or its log without bound
and good readings still get through; idle connection floods do not lock others out."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from homewatch.envelope import seal
from homewatch.secrets import load_keyring
from tests.helpers import Broker, paho_client, password, running, stop_client
from tests.test_end_to_end import read_lines, subscriber_cmd, wait_subscribed

pytestmark = pytest.mark.broker

JUNK = 20_000


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1])


def test_junk_flood_keeps_the_subscriber_bounded_and_good_readings_flowing(
        broker: Broker, workdir: Path, certs: Path) -> None:
    """20,000 junk messages (1 KiB each) from a compromised device: the subscriber keeps
    running, its peak memory stays under 100 MiB, its log holds a bounded number of
    lines, every junk message is counted, and a good reading after the flood is shown."""
    ring = load_keyring(certs / "clients" / "pi-kitchen" / "fernet.key")
    topic = "home/pi-kitchen/temperature"
    good = seal(ring, topic=topic, device="pi-kitchen", seq=int(time.time() * 1000) + 10**10,
                data={"temperature": 22.0, "timestamp": 1.0})
    with running(subscriber_cmd(broker, workdir), cwd=workdir) as sub:
        wait_subscribed(sub)
        client, rc = paho_client(broker, certs, "pi-kitchen", password(certs, "pi-kitchen"))
        assert rc is not None and not rc.is_failure
        infos = [client.publish(topic, b"J" * 1024, qos=1) for _ in range(JUNK)]
        infos.append(client.publish(topic, good, qos=1))
        for info in infos:
            info.wait_for_publish(60)
        stop_client(client)
        lines = read_lines(sub, 1, timeout=60)
        rss = peak_rss_kib(sub.pid)
        sub.send_signal(signal.SIGTERM)
        _, err = sub.communicate(timeout=30)
    assert lines == [f'Topic:{topic},Payload:{{"temperature": 22.0, "timestamp": 1.0}}']
    assert f"stopped: 1 accepted, {JUNK} rejected (decrypt={JUNK})" in err
    assert rss < 100 * 1024, f"peak RSS {rss} KiB"
    assert len(err.splitlines()) < 60, "the rejection log is rate-limited"
    assert f"{JUNK - 20} more message(s) rejected (decrypt)" in err


def test_idle_connection_flood_does_not_lock_out_a_device(broker: Broker,
                                                          certs: Path) -> None:
    """200 connections that never speak MQTT (below max_connections) do not stop a
    device from connecting and publishing promptly."""
    idle = [socket.create_connection((broker.host, broker.port)) for _ in range(200)]
    try:
        started = time.monotonic()
        client, rc = paho_client(broker, certs, "pi-garage", password(certs, "pi-garage"))
        info = client.publish("home/pi-garage/flood-check", b"x", qos=1)
        info.wait_for_publish(5)
        stop_client(client)
        assert rc is not None and not rc.is_failure
        assert info.is_published()
        assert time.monotonic() - started < 5
    finally:
        for s in idle:
            s.close()
