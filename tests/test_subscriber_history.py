"""The subscriber keeps every accepted reading in the history store: real broker, real
publisher and subscriber processes, a real SQLite file read back through the dashboard's
read-only reader. A reading is acknowledged only once it is shown AND recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homewatch.envelope import seal
from homewatch.history.sqlite import SqliteHistoryReader
from homewatch.secrets import load_keyring
from tests.helpers import Broker, clean_env, paho_client, password, running, stop_client
from tests.test_end_to_end import publisher_cmd, read_lines, subscriber_cmd, wait_subscribed

pytestmark = pytest.mark.broker


def reader(path: Path) -> SqliteHistoryReader:
    return SqliteHistoryReader(path)


def test_accepted_readings_land_in_the_history_with_their_demo_mark(
        broker: Broker, workdir: Path) -> None:
    """Temperature, presence, scanner and availability from a --demo publisher are in
    the history db; Now shows the Pi's temperature and its people, all marked demo."""
    known = workdir / "known"
    known.write_text("88:29:9C:00:61:A9 Franks Phone\n5C:F9:38:12:34:56 Annas Watch\n")
    db = workdir / "hist.db"
    with running(subscriber_cmd(broker, workdir, "--history", str(db)), cwd=workdir) as sub:
        wait_subscribed(sub)
        subprocess.run(publisher_cmd(broker, workdir, "--count", "3", "--interval", "0.3",
                                     "--known-devices", str(known), "--demo"),
                       cwd=workdir, env=clean_env(), check=True, capture_output=True,
                       timeout=60)
        statuses: list[str] = []
        read_lines(sub, 7, statuses=statuses)
        if not any('"offline"' in line for line in statuses):  # the publisher's goodbye
            assert sub.stdout is not None
            deadline = time.monotonic() + 20
            for line in sub.stdout:  # (the publisher exited: its status is on its way)
                if '"offline"' in line or time.monotonic() > deadline:
                    break
        sub.send_signal(signal.SIGTERM)
        sub.communicate(timeout=20)
    assert sub.returncode == 0
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    r = reader(db)
    try:
        now = r.now(time.time())
        (pi,) = [p for p in now.pis if p.name == "pi-kitchen"]
        assert pi.temperature is not None and 15 <= pi.temperature <= 28
        assert pi.simulated == "demo" and pi.scanner_state == "ok"
        assert pi.online is False  # the publisher stopped: its last will said offline
        people = {p.name: p for p in now.people}
        assert set(people) == {"Franks Phone", "Annas Watch"}
        assert all(p.simulated == "demo" for p in people.values())
        buckets = r.temperature("pi-kitchen", time.time() - 3600, time.time() + 60)
        assert sum(b.count for b in buckets) == 3
        assert all(b.simulated == "demo" for b in buckets)
        (report,) = [d for d in r.devices() if d.name == "pi-kitchen"]
        assert report.readings >= 7 and report.key_updated_at is not None
    finally:
        r.close()


def test_rejected_messages_are_counted_in_the_history_per_device_and_reason(
        broker: Broker, workdir: Path, certs: Path) -> None:
    """An old token sent again from a device's own account is counted under that device
    and its reason (expired)."""
    db = workdir / "hist.db"
    ring = load_keyring(certs / "clients" / "pi-kitchen" / "fernet.key")
    old = seal(ring, topic="home/pi-kitchen/temperature", device="pi-kitchen",
               seq=int(time.time() * 1000) + 7 * 10**9, data={"temperature": 1.0},
               now=int(time.time()) - 30 * 86400)
    with running(subscriber_cmd(broker, workdir, "--history", str(db)), cwd=workdir) as sub:
        wait_subscribed(sub)
        client, _ = paho_client(broker, certs, "pi-kitchen", password(certs, "pi-kitchen"))
        try:
            client.publish("home/pi-kitchen/temperature", old, qos=1).wait_for_publish(5)
        finally:
            stop_client(client)
        deadline = time.monotonic() + 15
        counts: dict[tuple[str | None, str], int] = {}
        while time.monotonic() < deadline and not counts:
            time.sleep(0.3)
            if db.exists():
                r = reader(db)
                counts = dict(r.rejections())
                r.close()
    assert counts == {("pi-kitchen", "expired"): 1}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root in CI): a disk that fills up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def temperature_lines(output: str | list[str]) -> list[str]:
    """The temperature readings a subscriber showed (each names its own timestamp)."""
    lines = output.splitlines() if isinstance(output, str) else output
    return [line for line in lines if "/temperature,Payload:" in line]


def recorded(db: Path) -> int:
    """How many temperature readings the history holds."""
    r = reader(db)
    try:
        return sum(b.count for b in r.temperature("pi-kitchen", time.time() - 3600,
                                                  time.time() + 60))
    finally:
        r.close()


def test_a_full_disk_stops_the_subscriber_unacknowledged_and_nothing_is_lost(
        broker: Broker, workdir: Path, small_disk: Path) -> None:
    """History on a disk that fills up: the subscriber exits 1 with one line naming the
    file; nothing unrecorded was acknowledged, so after space is freed a restart shows
    and records every reading: none lost, none recorded twice, and none shown twice but
    those it had shown and could not record before it stopped (the README's limit)."""
    db = small_disk / "hist.db"
    cmd = subscriber_cmd(broker, workdir, "--history", str(db), "--client-id",
                         f"sub-disk-{os.getpid()}")
    with running(cmd, cwd=workdir) as sub:
        wait_subscribed(sub)  # the session exists: the broker keeps what comes next
        filler = fill(small_disk)
        pub = subprocess.run(publisher_cmd(broker, workdir, "--count", "20", "--interval",
                                           "0.05", "--scanner", "none"),
                             cwd=workdir, env=clean_env(), capture_output=True, text=True,
                             timeout=60)
        assert pub.returncode == 0, pub.stderr
        out, err = sub.communicate(timeout=30)
    assert sub.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("subscriber: error:")]
    assert len(errors) == 1 and str(db) in errors[0], err
    assert "Traceback" not in err
    first = temperature_lines(out)
    assert len(set(first)) == len(first), first
    kept_before = recorded(db)  # acknowledged: the broker must not send these again
    assert kept_before < 20  # (the disk really was full)
    filler.unlink()
    with running(cmd, cwd=workdir) as sub:
        second = temperature_lines(read_lines(sub, 20 - kept_before, timeout=30))
        deadline = time.monotonic() + 10
        while recorded(db) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # anything sent again would show by now
        sub.send_signal(signal.SIGTERM)
        rest, err = sub.communicate(timeout=20)
    assert sub.returncode == 0, err
    second += temperature_lines(rest)
    assert len(set(second)) == len(second), second  # none twice after the restart
    assert len(set(first) | set(second)) == 20  # none lost
    # Shown again: exactly those shown before the stop and not recorded (never the
    # recorded, acknowledged ones).
    assert len(set(first) & set(second)) == len(first) - kept_before, (first, second)
    assert len(second) == 20 - kept_before
    assert recorded(db) == 20  # each kept once


def test_no_history_keeps_no_database(broker: Broker, workdir: Path) -> None:
    """--no-history: console lines only, no history file anywhere in the state dir."""
    with running(subscriber_cmd(broker, workdir, "--no-history"), cwd=workdir) as sub:
        wait_subscribed(sub)
        subprocess.run(publisher_cmd(broker, workdir, "--count", "1"), cwd=workdir,
                       env=clean_env(), check=True, capture_output=True, timeout=60)
        read_lines(sub, 3)
    assert not list((workdir / "sub-state").rglob("*.db"))


def test_an_unusable_history_path_is_one_line_and_exit_1(workdir: Path,
                                                          broker: Broker) -> None:
    """A history path that cannot be made (under a file) is a one-line error."""
    blocker = workdir / "file"
    blocker.write_text("x")
    r = subprocess.run(subscriber_cmd(broker, workdir, "--history", str(blocker / "h.db")),
                       cwd=workdir, env=clean_env(), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1, r.stderr  # a storage failure, as a full disk is
    lines = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and str(blocker) in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_authenticated_garbage_is_shown_not_kept_and_stops_nothing(
        broker: Broker, workdir: Path, certs: Path) -> None:
    """Readings from a real device's key whose values the history refuses (a huge or
    out-of-range temperature, a huge last-seen time, too many or too long names) are
    shown, not kept, and stop nothing: a good reading after them is recorded and the
    subscriber stops cleanly (no crash that the broker's redelivery would repeat)."""
    db = workdir / "hist.db"
    ring = load_keyring(certs / "clients" / "pi-kitchen" / "fernet.key")
    seq = int(time.time() * 1000) + 9 * 10**9
    now = time.time()
    bad = [("temperature", {"temperature": 1e300}),
           ("temperature", {"temperature": 10**400}),
           ("temperature", {"temperature": -500.0}),
           ("devices", [{"name": "Anna", "state": "home", "last_seen": 10**400}]),
           # (the broker takes packets of up to 16 KiB)
           ("devices", [{"name": f"p{i}", "state": "home"} for i in range(100)]),
           ("devices", [{"name": "x" * 2000, "state": "home"}]),
           ("scanner", {"state": "error", "detail": "y" * 5000})]
    good = ("temperature", {"temperature": 19.5, "timestamp": now})
    messages = [seal(ring, topic=f"home/pi-kitchen/{kind}", device="pi-kitchen", seq=seq + i,
                     data=data, taken=now + i / 100) for i, (kind, data) in
                enumerate([*bad, good])]
    cmd = subscriber_cmd(broker, workdir, "--history", str(db))
    with running(cmd, cwd=workdir) as sub:
        wait_subscribed(sub)
        client, _ = paho_client(broker, certs, "pi-kitchen", password(certs, "pi-kitchen"))
        try:
            for (kind, _), payload in zip([*bad, good], messages, strict=True):
                client.publish(f"home/pi-kitchen/{kind}", payload, qos=1).wait_for_publish(5)
        finally:
            stop_client(client)
        lines = read_lines(sub, len(messages), timeout=30)
        sub.send_signal(signal.SIGTERM)
        _, err = sub.communicate(timeout=20)
    assert sub.returncode == 0, err
    assert "Traceback" not in err and "not kept in the history" in err
    assert len(lines) == len(messages) and "19.5" in lines[-1]
    r = reader(db)
    try:
        buckets = r.temperature("pi-kitchen", now - 60, now + 60)
        people = {p.name for p in r.now(time.time()).people}
        (pi,) = [p for p in r.now(time.time()).pis if p.name == "pi-kitchen"]
    finally:
        r.close()
    assert [(b.count, b.min) for b in buckets] == [(1, 19.5)]
    # Anna's unusable last-seen time is dropped, her sighting kept; the other reports
    # (too many entries, a name too long) are not kept at all
    assert people == {"Anna"}
    assert pi.scanner_state == "error" and len(pi.scanner_detail) == 256
