"""Fault tests: numbered readings flow publisher -> real broker -> subscriber while the
broker, the publisher or the subscriber is killed (kill -9) and restarted, and while the
broker stays away long enough to overflow the outbox. The publisher keeps its RAM journal
on a tmpfs, as on a Pi (``publisher.journal``). Every reading the publisher stored
is counted at the subscriber: 0 lost and 0 shown twice (apart from the reported overflow).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import Broker, clean_env, free_port, python_m

pytestmark = pytest.mark.broker

STORED = re.compile(r"stored \w+ seq (\d+)")


class Proc:
    """A program whose output lines are collected in the background."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(env), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(s, d), daemon=True)
                         for s, d in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line.rstrip("\n"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return rc

    def wait_err_count(self, text: str, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.err) < count:
            assert time.monotonic() < deadline, f"{text!r} x{count} not in:\n" + "\n".join(
                self.err[-30:])
            time.sleep(0.05)

    def wait_err(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.err):
            assert time.monotonic() < deadline, f"{text!r} not in:\n" + "\n".join(self.err)
            time.sleep(0.05)


class Scenario:
    def __init__(self, certs: Path, tmp: Path) -> None:
        self.certs = certs
        self.tmp = tmp
        (tmp / "certs").symlink_to(certs)
        self.broker = Broker(certs=certs, workdir=tmp / "broker", port=free_port())
        self.subs: list[Proc] = []
        self.pubs: list[Proc] = []
        # The publisher's RAM journal, on a tmpfs as on a Pi (/run/homewatch there)
        self.journal = Path(tempfile.mkdtemp(prefix="homewatch-journal-", dir="/dev/shm"))

    def url(self) -> str:
        return self.broker.url("localhost")

    def subscriber(self, *extra: str) -> Proc:
        p = Proc(python_m("subscriber", self.url(), "--json", "--state-dir",
                          str(self.tmp / "sub-state"), "--client-id", "fault-subscriber",
                          *extra),
                 self.tmp)
        p.wait_err("subscribed to home/#")
        self.subs.append(p)
        return p

    def publisher(self, *extra: str) -> Proc:
        p = Proc(python_m("publisher", self.url(), "--device", "pi-kitchen", "--temperature",
                          "simulated", "--scanner", "simulated", "--interval", "0.1",
                          "--state-dir", str(self.tmp / "pub-state"),
                          "--journal-dir", str(self.journal), *extra),
                 self.tmp, {"HOMEWATCH_LOG_LEVEL": "debug"})
        self.pubs.append(p)
        return p

    def stored(self) -> set[int]:
        return {int(m.group(1)) for p in self.pubs for line in p.err
                if (m := STORED.search(line))}

    def shown(self) -> list[int]:
        seqs = []
        for p in self.subs:
            for line in p.out:
                record = json.loads(line)
                if record["kind"] != "status" and record["device"] == "pi-kitchen":
                    seqs.append(record["seq"])
        return seqs

    def settle(self, expected: set[int], timeout: float = 60) -> None:
        """Wait until the subscriber showed everything expected (or time out)."""
        deadline = time.monotonic() + timeout
        while not expected <= set(self.shown()) and time.monotonic() < deadline:
            time.sleep(0.2)

    def report(self) -> tuple[int, int, int]:
        stored, shown = self.stored(), self.shown()
        lost = len(stored - set(shown))
        twice = sum(n - 1 for n in Counter(shown).values() if n > 1)
        return len(stored), lost, twice

    def close(self) -> None:
        for p in self.pubs + self.subs:
            p.stop(signal.SIGKILL)
        self.broker.stop()
        shutil.rmtree(self.journal, ignore_errors=True)


@pytest.fixture
def scenario(certs: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Scenario(certs, tmp_path)
    yield s
    s.close()


def finish(s: Scenario, pub: Proc) -> tuple[int, int, int]:
    assert pub.stop() == 0, "\n".join(pub.err[-20:])
    s.settle(s.stored())
    return s.report()


def test_broker_killed_and_restarted_three_times_loses_and_repeats_nothing(
        scenario: Scenario) -> None:
    """kill -9 of the broker three times during a stream: 0 lost, 0 shown twice."""
    s = scenario
    s.broker.start()
    sub = s.subscriber()
    s.broker.stop()  # a clean stop saves: the subscriber's session is on disk from here
    s.broker.start()
    sub.wait_err("reconnected to", timeout=45)
    pub = s.publisher()
    for n in range(1, 4):
        time.sleep(1.5)
        s.broker.kill()
        time.sleep(1.0)  # readings keep being taken meanwhile
        s.broker.start()
        pub.wait_err_count("reconnected to", n, timeout=45)
    time.sleep(1.0)
    stored, lost, twice = finish(s, pub)
    assert stored > 50
    missing = sorted(s.stored() - set(s.shown()))
    assert (lost, twice) == (0, 0), (missing[:2], missing[-2:], [
        line for line in s.pubs[0].err if "Sending PUBLISH" not in line and "PUBACK" not in line
        and ("connect" in line or str(missing[0]) in line or str(missing[-1]) in line)],
        s.subs[0].err[-12:])
    assert any("lost connection" in line for line in pub.err)
    assert any("reconnecting in" in line for line in pub.err)


def test_readings_a_crashed_broker_never_saved_are_sent_again(
        scenario: Scenario, tmp_path: Path) -> None:
    """The broker saves every 10 s; here it never saves on its own (autosave an hour),
    so a kill -9 takes every reading it acknowledged and queued for the absent
    subscriber. The publisher sends the readings acknowledged in the 30 s before the
    connection dropped again: the subscriber still gets each one once."""
    s = scenario
    conf = tmp_path / "never-autosaves.conf"
    text = s.broker.conf.read_text()
    assert "autosave_interval 10\n" in text
    conf.write_text(text.replace("autosave_interval 10\n", "autosave_interval 3600\n"))
    s.broker.conf = conf
    s.broker.start()
    sub = s.subscriber()
    s.broker.stop()  # a clean stop saves: the subscriber's session is on disk from here
    s.broker.start()
    sub.wait_err("reconnected to", timeout=45)
    sub.stop(signal.SIGKILL)  # away: the broker queues for its session, in memory only
    pub = s.publisher()
    time.sleep(2.0)
    queued = len(s.stored())
    s.broker.kill()
    s.broker.start()
    pub.wait_err("in case the broker lost them", timeout=45)
    s.subscriber()
    stored, lost, twice = finish(s, pub)
    assert queued > 10 and stored >= queued
    assert (lost, twice) == (0, 0), sorted(s.stored() - set(s.shown()))[:5]


def test_publisher_killed_and_restarted_resumes_from_its_outbox(scenario: Scenario) -> None:
    """kill -9 of the publisher twice: its outbox resends what was not acknowledged."""
    s = scenario
    s.broker.start()
    s.subscriber()
    for _ in range(2):
        pub = s.publisher()
        time.sleep(1.5)
        pub.stop(signal.SIGKILL)
    pub = s.publisher()
    time.sleep(1.5)
    stored, lost, twice = finish(s, pub)
    assert stored > 30
    assert (lost, twice) == (0, 0)


def test_subscriber_killed_and_restarted_shows_each_reading_once(scenario: Scenario) -> None:
    """kill -9 of the subscriber twice: its persistent session gets what was published
    meanwhile, and redeliveries are shown once."""
    s = scenario
    s.broker.start()
    sub = s.subscriber()
    pub = s.publisher()
    for _ in range(2):
        time.sleep(1.5)
        sub.stop(signal.SIGKILL)
        time.sleep(1.0)
        sub = s.subscriber()
    time.sleep(1.0)
    stored, lost, twice = finish(s, pub)
    assert stored > 30
    assert (lost, twice) == (0, 0)


def test_long_outage_overflows_the_outbox_and_reports_the_exact_drop(
        scenario: Scenario) -> None:
    """With the broker away, a 10-reading outbox drops the oldest, counts them exactly,
    and delivers the rest once the broker is back."""
    s = scenario
    s.broker.start()
    s.subscriber()  # its persistent session waits for it in the broker
    s.broker.stop()
    pub = s.publisher("--outbox-limit", "10")
    time.sleep(2.5)
    s.broker.start()
    time.sleep(2.0)
    assert pub.stop() == 0
    s.settle(s.stored())
    stored, shown = s.stored(), s.shown()
    summary = next(line for line in pub.err if "stopped:" in line)
    dropped = int(re.search(r"(\d+) dropped", summary).group(1))  # type: ignore[union-attr]
    assert dropped > 10
    assert len(set(shown)) == len(stored) - dropped
    assert len(shown) == len(set(shown))
    missing = sorted(stored - set(shown))
    assert missing == sorted(stored)[:dropped]  # exactly the oldest ones
    assert any("outbox full" in line for line in pub.err)
