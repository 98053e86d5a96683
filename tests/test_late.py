"""Late readings: a subscriber that was away longer than any TTL shows every reading the
broker kept for it, once, in order, marked late; replays stay rejected, with its replay
state and without it (a fresh volume)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from homewatch.envelope import Opener, ReplayGuard, StaticKeys, seal
from homewatch.errors import EnvelopeError
from homewatch.fernet import KeyRing
from homewatch.secrets import load_keyring
from subscriber.app import ReplayState
from subscriber.sinks.console import format_reading
from tests.helpers import paho_client, stop_client
from tests.test_faults import Proc, Scenario

NOW = 1_800_000_000
T = "home/pi-kitchen/temperature"
DATA = {"temperature": 21.5, "timestamp": 1.0}
RING = KeyRing([Fernet.generate_key()])


@pytest.fixture
def scenario(certs: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Scenario(certs, tmp_path)
    yield s
    s.close()


def opener(guard: ReplayGuard | None = None, now: float = NOW) -> Opener:
    return Opener(StaticKeys({"pi-kitchen": RING}), base="home", ttl=300, skew=60,
                  max_late=86400, replay=guard, clock=lambda: now)


def token(seq: int, at: int, **extra: object) -> bytes:
    return seal(RING, topic=T, device="pi-kitchen", seq=seq, data=DATA, now=at,
                **extra)  # type: ignore[arg-type]


def reason(o: Opener, payload: bytes) -> str:
    with pytest.raises(EnvelopeError) as info:
        o.open(T, payload)
    return info.value.reason


def test_late_readings_continuing_the_stream_are_accepted_and_marked() -> None:
    """After the subscriber showed seq 1 (sent an hour ago), what the device sent since
    arrives late and is accepted, each marked with how late it is."""
    guard = ReplayGuard(created=NOW - 7200)
    o = opener(guard, now=NOW - 3600)
    assert o.open(T, token(1, NOW - 3600)).late is None
    o = opener(guard)  # an hour later: the subscriber is back
    r = o.open(T, token(2, NOW - 3500, taken=NOW - 3550))
    assert r.late == pytest.approx(3550) and r.taken_at == NOW - 3550
    assert o.open(T, token(3, NOW - 10)).late is None
    assert reason(o, token(2, NOW - 3500)) == "duplicate"


def test_a_late_token_older_than_what_was_shown_is_a_possible_replay() -> None:
    """A late token sent more than the TTL before the newest one shown is refused."""
    guard = ReplayGuard(created=NOW - 7200)
    o = opener(guard)
    o.open(T, token(100, NOW - 3600))
    assert reason(o, token(50, NOW - 3600 - 361)) == "expired"
    assert o.open(T, token(60, NOW - 3600 - 300)).seq == 60  # within the TTL of it


def test_a_fresh_state_refuses_late_readings_and_keeps_fresh_ones() -> None:
    """Without replay state (a fresh volume) nothing says a late token was not shown
    before: late ones are refused, fresh ones accepted."""
    o = opener(ReplayGuard(created=NOW))
    assert reason(o, token(5, NOW - 400)) == "expired"
    assert o.open(T, token(6, NOW - 30)).seq == 6


def test_late_readings_beyond_max_late_are_refused() -> None:
    """Older than --max-late is refused, whatever the state says."""
    o = opener(ReplayGuard(created=NOW - 10 * 86400))
    assert reason(o, token(1, NOW - 86401)) == "expired"


def test_replay_state_keeps_when_it_began_and_the_newest_send_times(tmp_path: Path) -> None:
    """The snapshot and the journal carry the floor across a restart; a new state is
    saved at once, so its start survives a crash."""
    state = ReplayState(tmp_path / "s" / "replay.json")
    guard = state.load()
    assert state.path.is_file()
    created = guard.created
    state.record("pi-kitchen", 7, NOW - 100)
    state.flush()
    again = ReplayState(tmp_path / "s" / "replay.json").load()
    assert again.created == created and again.floor("pi-kitchen") == NOW - 100
    assert again.floor("pi-garage") == created
    state.snapshot(again)
    assert ReplayState(state.path).load().floor("pi-kitchen") == NOW - 100


def test_output_marks_simulated_and_late_readings() -> None:
    """Console lines end in [demo]/[simulated] and [late ...: taken <UTC>]; --json says
    the same in fields."""
    o = opener(ReplayGuard(created=NOW - 7200))
    o.open(T, token(1, NOW - 4000))
    r = o.open(T, token(2, NOW - 3700, taken=NOW - 3725, simulated="demo"))
    line = format_reading(r, as_json=False)
    assert line == ('Topic:home/pi-kitchen/temperature,Payload:{"temperature": 21.5, '
                    '"timestamp": 1.0} [demo] [late 1h02m: taken 2027-01-15T06:57:55Z]')
    record = json.loads(format_reading(r, as_json=True))
    assert (record["simulated"], record["late"], record["taken_at"]) == (
        "demo", 3725.0, NOW - 3725)
    plain = o.open(T, token(3, NOW))
    assert format_reading(plain, as_json=False).endswith('"timestamp": 1.0}')


SHORT_TTL = ("--ttl", "1", "--clock-skew", "1")


def subscriber_away(s: Scenario, seconds: float, *, lose_state: bool = False,
                    ) -> tuple[Proc, Proc, float]:
    """A publisher every 0.5 s and a subscriber with a 1 s TTL (+ 1 s skew), killed -9
    and started again ``seconds`` later (with its replay state deleted, if asked):
    (subscriber, publisher, when the outage began)."""
    s.broker.start()
    sub = s.subscriber(*SHORT_TTL)
    pub = s.publisher("--interval", "0.5")
    time.sleep(1.5)
    sub.stop(signal.SIGKILL)
    outage_from = time.time()
    time.sleep(seconds)
    if lose_state:
        for f in (s.tmp / "sub-state").iterdir():
            f.unlink()
    return s.subscriber(*SHORT_TTL), pub, outage_from


@pytest.mark.broker
def test_subscriber_away_longer_than_the_ttl_shows_every_reading_once_in_order(
        scenario: Scenario, certs: Path) -> None:
    """The subscriber (TTL 1 s + skew 1 s) is killed for 8 s while the publisher goes on:
    when it comes back it shows every reading it missed, once, in order, marked late;
    an old token replayed afterwards is rejected."""
    s = scenario
    sub, pub, outage_from = subscriber_away(s, 8.0)
    time.sleep(1.0)
    assert pub.stop() == 0, "\n".join(pub.err[-20:])
    s.settle(s.stored())
    stored, lost, twice = s.report()
    assert stored > 20 and (lost, twice) == (0, 0)
    shown = s.shown()
    assert shown == sorted(shown)
    records = [json.loads(line) for p in s.subs for line in p.out]
    late = [r for r in records if r.get("late") and r["sent_at"] >= outage_from + 1]
    assert len(late) >= 10, records[-5:]
    assert all(r["simulated"] == "simulated" for r in records if r["kind"] != "status")
    # A token sent long before (an attacker holding the device's password, or the broker,
    # replaying what it kept) is refused: the newest shown from pi-kitchen is later.
    ring = load_keyring(certs / "clients" / "pi-kitchen" / "fernet.key")
    old = seal(ring, topic=T, device="pi-kitchen", seq=max(shown) + 10, data=DATA,
               now=int(outage_from) - 600)
    pw = (certs / "clients" / "pi-kitchen" / "password").read_text().strip()
    client, rc = paho_client(s.broker, certs, "pi-kitchen", pw)
    assert rc is not None and not rc.is_failure
    client.publish(T, old, qos=1).wait_for_publish(5)
    stop_client(client)
    sub.wait_err("rejected message on home/pi-kitchen/temperature: expired")
    assert sub.stop() == 0
    assert "1 rejected (expired=1)" in "\n".join(sub.err)


@pytest.mark.broker
def test_a_subscriber_with_a_fresh_state_refuses_the_late_readings(scenario: Scenario) -> None:
    """Its replay state lost (a fresh volume), the subscriber cannot tell late readings
    from replays of what it showed before: it refuses them (counted, logged), then shows
    fresh ones."""
    sub, pub, _ = subscriber_away(scenario, 5.0, lose_state=True)
    sub.wait_err("rejected message on home/pi-kitchen/temperature: expired")
    before = len(sub.out)
    deadline = time.monotonic() + 20
    while len(sub.out) < before + 4:
        assert time.monotonic() < deadline, "no fresh readings after the refusals"
        time.sleep(0.1)
    assert pub.stop() == 0
    assert sub.stop() == 0
    summary = next(line for line in sub.err if "stopped:" in line)
    assert "expired=" in summary


def test_a_taken_time_far_from_the_send_time_is_malformed() -> None:
    """`taken` after the send time (beyond the skew), before --max-late, infinite or not
    a number is rejected as malformed, before anything is recorded."""
    o = opener(ReplayGuard(created=NOW - 7200))
    for seq, taken in enumerate((NOW + 61, NOW - 86401, -1e20, float("inf"), float("nan"),
                                 "yesterday", True), start=1):
        body = json.dumps({"v": 1, "topic": T, "device": "pi-kitchen", "seq": seq,
                           "taken": taken, "data": {}})  # NaN and Infinity as JSON allows
        assert reason(o, RING.encrypt_at_time(body.encode(), NOW)) == "malformed", taken
    assert o.replay.highest("pi-kitchen") is None
    assert o.open(T, token(1, NOW, taken=NOW - 5)).taken_at == NOW - 5


def test_a_torn_journal_line_is_skipped_and_never_wedges_the_state(tmp_path: Path) -> None:
    """A crash mid-write can leave `pi-kitchen 17324` for `pi-kitchen 1732400000123 ...`:
    loading skips it (no line end), and a number far behind the window changes nothing."""
    state = ReplayState(tmp_path / "replay.json")
    state.load()
    state.journal.write_text(f"pi-kitchen 1732400000123 {NOW}\npi-kitchen 17324")
    guard = ReplayState(tmp_path / "replay.json").load()
    assert guard.highest("pi-kitchen") == 1_732_400_000_123
    guard.commit("pi-kitchen", 17324)  # far behind the window: a no-op
    assert guard.highest("pi-kitchen") == 1_732_400_000_123


def test_a_state_from_before_send_times_were_kept_uses_when_it_was_saved(
        tmp_path: Path) -> None:
    """An older state file (no "created", no "sent") takes its file's time as the floor:
    what the broker kept since is late, not refused; what is older still is."""
    path = tmp_path / "replay.json"
    path.write_text(json.dumps({"window": 4096, "devices": {"pi-kitchen": [5, "1"]}}))
    saved = path.stat().st_mtime
    guard = ReplayState(path).load()
    assert guard.created == saved and guard.floor("pi-kitchen") == saved
