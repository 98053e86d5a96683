"""Publisher -> real broker -> subscriber, as processes, exactly as a user runs them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, MultiFernet

from homewatch.envelope import seal
from homewatch.secrets import load_keyring
from tests.helpers import (
    Broker,
    homewatch_cli,
    paho_client,
    password,
    python_m,
    running,
    stop_client,
)

pytestmark = pytest.mark.broker

LINE = re.compile(
    r'^Topic:home/pi-kitchen/(temperature|devices|scanner),Payload:(.*?)( \[simulated\])?$')


def is_status(line: str) -> bool:
    return (line.startswith("Topic:") and "/status,Payload:" in line) or \
        '"kind": "status"' in line


def read_lines(proc: subprocess.Popen[str], want: int, timeout: float = 20.0, *,
               statuses: list[str] | None = None) -> list[str]:
    """Read ``want`` reading lines from a running subscriber's stdout, failing after
    ``timeout``; availability (status) lines go to ``statuses`` when given."""
    lines: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if is_status(line):
                if statuses is not None:
                    statuses.append(line.rstrip("\n"))
                continue
            lines.append(line.rstrip("\n"))
            if len(lines) >= want:
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    assert len(lines) >= want, f"got {lines}; stderr so far unavailable"
    return lines


def subscriber_cmd(broker: Broker, tmp: Path, *extra: str) -> list[str]:
    return python_m("subscriber", broker.url("localhost"), "--state-dir", str(tmp / "sub-state"),
                    "--client-id", f"sub-{uuid.uuid4().hex[:8]}", *extra)


def publisher_cmd(broker: Broker, tmp: Path, *extra: str) -> list[str]:
    return python_m("publisher", broker.url("localhost"), "--device", "pi-kitchen",
                    "--temperature", "simulated", "--scanner", "simulated",
                    "--state-dir", str(tmp / "pub-state"), *extra)


def wait_subscribed(proc: subprocess.Popen[str], timeout: float = 15.0) -> list[str]:
    """Read stderr until the subscriber logs its subscription."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "subscribed to home/#" in line:
            return lines
    raise AssertionError("subscriber did not subscribe: " + "".join(lines))


def test_subscriber_prints_decrypted_readings_in_the_tutorial_format(
        broker: Broker, workdir: Path) -> None:
    """Readings from a simulated publisher arrive decrypted, as Topic:...,Payload:{...},
    each marked [simulated]: invented data is never shown as measured."""
    known = workdir / "known"
    known.write_text("88:29:9C:00:61:A9 Franks Phone\n")
    with running(subscriber_cmd(broker, workdir), cwd=workdir) as sub:
        wait_subscribed(sub)
        pub = subprocess.run(
            publisher_cmd(broker, workdir, "--count", "3", "--interval", "0.3",
                          "--known-devices", str(known)),
            cwd=workdir, capture_output=True, text=True, timeout=60,
            env={**_env(), "HOMEWATCH_LOG_LEVEL": "debug"})
        assert pub.returncode == 0, pub.stderr
        lines = read_lines(sub, 7)
    kinds = []
    for line in lines:
        m = LINE.match(line)
        assert m, line
        assert m.group(3) == " [simulated]", line
        kinds.append(m.group(1))
        data = json.loads(m.group(2))
        if m.group(1) == "temperature":
            assert set(data) == {"temperature", "timestamp", "room"}
            assert data["room"] == "pi-kitchen"  # the device name, no --room given
            assert 15 <= data["temperature"] <= 28
        elif m.group(1) == "scanner":
            assert data == {"state": "ok", "scanner": "simulated"}
        else:
            for d in data:  # the tutorial's shape, plus state, last-seen time, room, signal
                assert (d["name"], d["mac"], d["state"], d["room"]) == (
                    "Franks Phone", "88:29:9C:00:61:A9", "home", "pi-kitchen")
                # the signal only when heard in this window (the first scan hears everyone)
                if "rssi" in d or kinds.count("devices") == 1:
                    assert isinstance(d["rssi"], int) and -90 <= d["rssi"] <= -40
                assert d["last_seen"] > 1.7e9
    assert kinds.count("temperature") == 3 and kinds.count("devices") == 3
    assert kinds.count("scanner") == 1
    assert 'Payload:{"temperature": ' in lines[0]


def _env() -> dict[str, str]:
    from tests.helpers import clean_env
    return clean_env()


def test_json_mode_prints_one_json_object_per_reading(broker: Broker, workdir: Path) -> None:
    """--json prints topic, device, kind, seq, sent_at and data as JSON lines."""
    with running(subscriber_cmd(broker, workdir, "--json"), cwd=workdir) as sub:
        wait_subscribed(sub)
        subprocess.run(publisher_cmd(broker, workdir, "--count", "1"), cwd=workdir,
                       env=_env(), check=True, capture_output=True, timeout=60)
        lines = read_lines(sub, 3)
    records = [json.loads(line) for line in lines]
    assert {r["kind"] for r in records} == {"temperature", "scanner", "devices"}
    assert all(r["device"] == "pi-kitchen" for r in records)
    assert records[1]["seq"] == records[0]["seq"] + 1


def test_publisher_stops_cleanly_on_sigterm(broker: Broker, workdir: Path) -> None:
    """SIGTERM: the publisher flushes, disconnects and exits 0 with a summary."""
    with running(publisher_cmd(broker, workdir, "--interval", "0.2"), cwd=workdir) as pub:
        time.sleep(2.0)
        pub.send_signal(signal.SIGTERM)
        _, err = pub.communicate(timeout=20)
    assert pub.returncode == 0, err
    assert "SIGTERM received" in err and "stopped:" in err
    assert "Traceback" not in err


def test_subscriber_stops_cleanly_on_sigint(broker: Broker, workdir: Path) -> None:
    """SIGINT (Ctrl-C): the subscriber exits 0 with its counters, no traceback."""
    with running(subscriber_cmd(broker, workdir), cwd=workdir) as sub:
        wait_subscribed(sub)
        sub.send_signal(signal.SIGINT)
        _, err = sub.communicate(timeout=20)
    assert sub.returncode == 0
    assert "stopped: 0 accepted, 0 rejected" in err and "Traceback" not in err


def test_publisher_with_wrong_password_exits_1_with_one_line(broker: Broker,
                                                             workdir: Path) -> None:
    """Refused credentials end the publisher with exit 1 and a one-line reason."""
    bad = workdir / "bad-password"
    bad.write_text("wrong\n")
    bad.chmod(0o600)
    r = subprocess.run(publisher_cmd(broker, workdir, "--password-file", str(bad)), cwd=workdir,
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("publisher: error:")]
    assert errors == ["publisher: error: broker refused 'pi-kitchen': Not authorized "
                      "(check the user name and its password file; or the identity was "
                      "removed on the server: provision it again with `make add-device`)"]
    assert "Traceback" not in r.stderr


def test_subscriber_rejects_bad_messages_counts_them_and_keeps_running(
        broker: Broker, workdir: Path, certs: Path) -> None:
    """Wrong key, misdirected, foreign-device, expired and replayed tokens are each
    rejected with one log line and counted; a good reading afterwards still shows."""
    kitchen = load_keyring(certs / "clients" / "pi-kitchen" / "fernet.key")
    t = "home/pi-kitchen/temperature"
    now = int(time.time())
    base_seq = now * 1000 + 10**9  # above anything the publisher tests used
    data = {"temperature": 20.0, "timestamp": now}
    good = seal(kitchen, topic=t, device="pi-kitchen", seq=base_seq, data=data)
    attacks = [
        ("decrypt", seal(MultiFernet([Fernet(Fernet.generate_key())]), topic=t,
                         device="pi-kitchen", seq=base_seq + 1, data=data)),
        ("topic", seal(kitchen, topic="home/pi-kitchen/devices", device="pi-kitchen",
                       seq=base_seq + 2, data=data)),
        ("device", seal(kitchen, topic=t, device="pi-garage", seq=base_seq + 3, data=data)),
        ("expired", seal(kitchen, topic=t, device="pi-kitchen", seq=base_seq + 4, data=data,
                         now=now - 3600)),
        ("replay", seal(kitchen, topic=t, device="pi-kitchen", seq=base_seq - 5000,
                        data=data)),  # behind the replay window: cannot be a late copy
    ]
    final = seal(kitchen, topic=t, device="pi-kitchen", seq=base_seq + 5,
                 data={"temperature": 99.5, "timestamp": now})
    with running(subscriber_cmd(broker, workdir), cwd=workdir) as sub:
        wait_subscribed(sub)
        client, rc = paho_client(broker, certs, "pi-kitchen", password(certs, "pi-kitchen"))
        assert rc is not None and not rc.is_failure
        for payload in [good] + [p for _, p in attacks] + [good, final]:
            client.publish(t, payload, qos=1).wait_for_publish(5)
        stop_client(client)
        lines = read_lines(sub, 2)
        sub.send_signal(signal.SIGTERM)
        _, err = sub.communicate(timeout=20)
    assert lines == [f'Topic:{t},Payload:{{"temperature": 20.0, "timestamp": {now}}}',
                     f'Topic:{t},Payload:{{"temperature": 99.5, "timestamp": {now}}}']
    rejections = [line for line in err.splitlines() if "rejected message on" in line]
    assert [line.split(f"rejected message on {t}: ")[1].split(":")[0]
            for line in rejections] == [r for r, _ in attacks]
    assert "stopped: 2 accepted, 5 rejected (decrypt=1, device=1, expired=1, replay=1, " \
           "topic=1), 1 duplicate(s) dropped" in err  # good, sent twice: shown once
    assert sub.returncode == 0


def test_device_provisioned_while_running_is_accepted_without_restarts(
        broker: Broker, workdir: Path, certs: Path) -> None:
    """A new device added with `homewatch device add` + broker reload (SIGHUP) can
    publish and its readings are shown, with no restart of broker or subscriber."""
    with running(subscriber_cmd(broker, workdir), cwd=workdir) as sub:
        wait_subscribed(sub)
        homewatch_cli(certs, "device", "add", "pi-new")
        broker.reload()
        cmd = publisher_cmd(broker, workdir, "--count", "1")
        cmd[cmd.index("pi-kitchen")] = "pi-new"
        r = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        lines = read_lines(sub, 2)
    assert all(line.startswith("Topic:home/pi-new/") for line in lines)
    homewatch_cli(certs, "device", "remove", "pi-new", "--force")
    broker.reload()
    client, rc = paho_client(broker, certs, "pi-new", "anything")
    stop_client(client)
    assert rc is not None and rc.is_failure


def test_publisher_started_before_the_broker_waits_and_then_publishes(
        certs: Path, workdir: Path, tmp_path: Path) -> None:
    """With the broker not up yet, the publisher logs that it is unreachable, retries
    with backoff, and publishes once the broker starts."""
    from tests.helpers import free_port
    late = Broker(certs=certs, workdir=tmp_path / "late", port=free_port())
    cmd = python_m("publisher", late.url("localhost"), "--device", "pi-kitchen",
                   "--temperature", "simulated", "--scanner", "simulated", "--count", "1",
                   "--state-dir", str(workdir / "pub-state"))
    with running(cmd, cwd=workdir) as pub:
        time.sleep(2.5)
        assert pub.poll() is None
        late.start()
        try:
            _, err = pub.communicate(timeout=60)
        finally:
            late.stop()
    assert pub.returncode == 0, err
    assert "unreachable" in err and "retrying in" in err
    assert "connected to mqtts://localhost" in err and "3 acknowledged" in err


def test_key_rotation_while_running_loses_nothing(broker: Broker, workdir: Path,
                                                  certs: Path) -> None:
    """`homewatch device rotate-key` during a stream: the publisher switches to the new
    key without a restart, the subscriber accepts old and new, nothing is rejected or lost."""
    with running(subscriber_cmd(broker, workdir, "--json"), cwd=workdir) as sub:
        wait_subscribed(sub)
        cmd = publisher_cmd(broker, workdir, "--interval", "0.25", "--scan-duration", "0.1")
        cmd[cmd.index("pi-kitchen")] = "pi-garage"
        with running(cmd, cwd=workdir) as pub:
            time.sleep(1.5)
            homewatch_cli(certs, "device", "rotate-key", "pi-garage")
            time.sleep(7.0)  # the publisher re-checks its key ring every 5 s
            pub.send_signal(signal.SIGTERM)
            _, pub_err = pub.communicate(timeout=20)
        assert pub.returncode == 0, pub_err
        published = int(re.search(r"(\d+) acknowledged", pub_err).group(1))  # type: ignore[union-attr]
        lines = read_lines(sub, published)
        sub.send_signal(signal.SIGTERM)
        _, sub_err = sub.communicate(timeout=20)
    assert "changed: encrypting with its newest key" in pub_err
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == list(range(seqs[0], seqs[0] + published))
    assert f"stopped: {published} accepted, 0 rejected" in sub_err
