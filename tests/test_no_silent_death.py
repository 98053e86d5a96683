"""No silent death: a failure in any thread or task of a program (paho's network thread,
the publisher's pump) is reported once, turns the health check unhealthy and ends the
program with exit code 1, so Docker or systemd restarts it, and nothing is lost.

A disk that fills up is made real with a file size limit on the running program
(``prlimit``): from then on each write to a file fails as on a full disk (EFBIG).
"""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import clean_env, python_m
from tests.test_faults import Proc, Scenario, finish

pytestmark = pytest.mark.broker

EXIT_WITHIN = 15.0  # seconds: the failure is noticed within a tick, the stop is bounded


@pytest.fixture
def scenario(certs: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Scenario(certs, tmp_path)
    yield s
    s.close()


def disk_full(proc: Proc) -> None:
    """Every further write of ``proc`` to a file fails (EFBIG), as on a full disk."""
    resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (0, 0))


def subscriber(s: Scenario, *extra: str) -> Proc:
    p = Proc(python_m("subscriber", s.url(), "--json", "--state-dir",
                      str(s.tmp / "sub-state"), "--client-id", "fault-subscriber", *extra),
             s.tmp)
    p.wait_err("subscribed to home/#")
    s.subs.append(p)
    return p


def wait_shown(s: Scenario, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(s.shown()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} readings shown"
        time.sleep(0.1)


def health(file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(python_m("homewatch.cli", "health", str(file)), env=clean_env(),
                          capture_output=True, text=True, timeout=30)


def assert_died_observed(proc: Proc, prog: str, *words: str) -> str:
    """Exit code 1 within EXIT_WITHIN seconds, one error line naming the cause, no
    traceback."""
    rc = proc.proc.wait(EXIT_WITHIN)
    proc.stop()
    errors = [line for line in proc.err if line.startswith(f"{prog}: error:")]
    assert rc == 1, "\n".join(proc.err[-10:])
    assert len(errors) == 1, proc.err[-10:]
    assert not any("Traceback" in line for line in proc.err), "\n".join(proc.err)
    assert all(word in errors[0] for word in words), errors[0]
    return errors[0]


def test_subscriber_whose_state_disk_fills_up_exits_1_unhealthy_and_loses_nothing(
        scenario: Scenario) -> None:
    """The subscriber's replay journal can no longer be written mid-stream: it exits 1
    with one line and an unhealthy health check, acknowledging nothing it could not
    record; restarted, it shows every reading."""
    s = scenario
    s.broker.start()
    health_file = s.tmp / "sub-health"
    # (no history here: it would meet the full disk first; tests/test_subscriber_history.py
    # fills the history's disk)
    sub = subscriber(s, "--health-file", str(health_file), "--no-history")
    pub = s.publisher()
    wait_shown(s, 10)
    assert health(health_file).returncode == 0
    disk_full(sub)
    line = assert_died_observed(sub, "subscriber", "replay journal", "File too large")
    assert "delivers it again" in line
    checked = health(health_file)  # (the full disk takes the failure's reason too)
    assert checked.returncode == 1 and checked.stdout.startswith("unhealthy:")
    subscriber(s)
    stored, lost, _ = finish(s, pub)
    assert stored > 10
    assert lost == 0, sorted(s.stored() - set(s.shown()))[:5]


def test_subscriber_whose_output_fails_exits_1_and_the_broker_keeps_the_readings(
        scenario: Scenario) -> None:
    """A subscriber whose output cannot be written (stdout on /dev/full) receives the
    readings queued for it, exits 1 with one line, acknowledges none of them, and a
    restarted subscriber shows each one once."""
    s = scenario
    s.broker.start()
    subscriber(s).stop()  # its persistent session now queues readings in the broker
    pub = s.publisher()
    pub.wait_err_count("stored", 20)
    health_file = s.tmp / "sub-health"
    with open("/dev/full", "w") as full:
        failing = subprocess.Popen(
            python_m("subscriber", s.url(), "--json", "--state-dir", str(s.tmp / "sub-state"),
                     "--client-id", "fault-subscriber", "--health-file", str(health_file)),
            cwd=s.tmp, env=clean_env(), stdout=full, stderr=subprocess.PIPE, text=True)
        try:
            rc = failing.wait(EXIT_WITHIN)
        finally:
            failing.kill()
            _, err = failing.communicate()
    errors = [line for line in err.splitlines() if line.startswith("subscriber: error:")]
    assert rc == 1, err
    assert len(errors) == 1 and "writing the output failed" in errors[0], err
    assert "Traceback" not in err, err
    checked = health(health_file)
    assert checked.returncode == 1 and "unhealthy: failed: writing the output" in checked.stdout
    subscriber(s)
    stored, lost, twice = finish(s, pub)
    assert stored > 20
    assert (lost, twice) == (0, 0), sorted(s.stored() - set(s.shown()))[:5]


def test_publisher_whose_outbox_disk_fills_up_exits_1_and_keeps_what_it_committed(
        scenario: Scenario) -> None:
    """The publisher's outbox can no longer be written mid-stream (an SQLite error in its
    pump): it exits 1 with one line naming the outbox and an unhealthy health check;
    restarted, it sends every reading it had committed."""
    s = scenario
    s.broker.start()
    subscriber(s)
    health_file = s.tmp / "pub-health"
    pub = s.publisher("--health-file", str(health_file))
    pub.wait_err_count("stored", 20)
    assert health(health_file).returncode == 0
    disk_full(pub)
    assert_died_observed(pub, "publisher", "outbox", "sent after a restart")
    assert health(health_file).returncode == 1
    pub = s.publisher()
    pub.wait_err_count("stored", 5)
    stored, lost, twice = finish(s, pub)
    assert stored > 20
    assert (lost, twice) == (0, 0), sorted(s.stored() - set(s.shown()))[:5]
