"""The history store (homewatch.history.sqlite): what the subscriber writes is what the
dashboard reads, on real SQLite files; failures are StorageErrors naming the file; a
reader on a read-only mount sees every commit and never stops the writer.

Read-only mounts and a full disk are real: a child process runs in its own mount
namespace (``unshare -m``, as root) with a read-only bind mount or a tiny tmpfs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from homewatch.errors import StorageError
from homewatch.history import DEFAULT_RETENTION_DAYS, Interval, Sighting, schema
from homewatch.history import sqlite as store
from homewatch.history.sqlite import SqliteHistory, open_reader, resolution
from tests.helpers import ROOT, clean_env

T0 = 20254 * 86400.0  # a UTC midnight (2025-06-15)
DAY = 86400.0


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + DAY)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "history.db"


@pytest.fixture
def writer(db: Path, clock: Clock) -> Iterator[SqliteHistory]:
    w = SqliteHistory(db, clock=clock)
    yield w
    w.close()


def rows(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Straight from the file, with plain sqlite3."""
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def python_child(code: str, *args: str, mount: str | None = None,
                 **kw: object) -> subprocess.Popen[str]:
    """``code`` in a child Python; with ``mount`` (a shell command) first run in a mount
    namespace of its own, so the mount is the child's alone."""
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    if mount is not None:  # as root a mount namespace; otherwise one of a user namespace
        ns = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
        cmd = ["unshare", *ns, "sh", "-c", f'{mount} && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), text=True,  # type: ignore[call-overload, no-any-return]
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def read_only_bind(src: Path, dst: Path) -> str:
    dst.mkdir(exist_ok=True)
    return f"mount --bind -o ro {src} {dst}"


# -- writing and reading back -------------------------------------------------------


def test_database_and_directory_are_private(writer: SqliteHistory, db: Path) -> None:
    """The history file is 0600 and the directories made for it 0700."""
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o700


def test_temperature_round_trip_raw_and_rollups(writer: SqliteHistory, db: Path) -> None:
    """Readings come back per raw point (to 0.01 °C) and per 5-minute bucket with
    min, max, mean and count."""
    for i in range(60):  # 10 minutes, one reading every 10 s
        writer.temperature("pi-a", T0 + 10 * i, 20 + i / 100)
    writer.commit()
    with open_reader(db) as r:
        raw = r.temperature("pi-a", T0, T0 + 600, max_points=600)
        assert [(b.start, b.min, b.count) for b in raw[:2]] == [(T0, 20.0, 1), (T0 + 10, 20.01, 1)]
        assert len(raw) == 60 and raw[-1].max == 20.59
        five = r.temperature("pi-a", T0, T0 + DAY, max_points=400)
    assert [(b.start, b.end, b.count) for b in five] == [(T0, T0 + 300, 30),
                                                         (T0 + 300, T0 + 600, 30)]
    assert five[0].min == 20.0 and five[0].max == 20.29
    assert five[0].mean == pytest.approx(20.145)
    assert five[1].simulated is None


def test_temperature_keeps_what_a_celsius_value_is(writer: SqliteHistory, db: Path) -> None:
    """Negative, sub-degree and DS18B20 values are kept to 0.01 °C; a non-finite value is
    refused, not stored."""
    for i, value in enumerate((-12.3456, 0.0625, 85.0)):
        writer.temperature("pi-a", T0 + i, value)
    with pytest.raises(ValueError, match="outside"):
        writer.temperature("pi-a", T0 + 9, float("nan"))
    writer.commit()
    with open_reader(db) as r:
        assert [b.mean for b in r.temperature("pi-a", T0, T0 + 3, max_points=10)] == [
            -12.35, 0.06, 85.0]


def test_late_reading_lands_in_its_bucket_and_rollups(writer: SqliteHistory, db: Path) -> None:
    """A reading taken an hour ago that arrives now is filed under its taken time, in
    the raw table and in each rollup, and does not become the Pi's temperature now."""
    writer.temperature("pi-a", T0 + 7200, 21.0)
    writer.commit()
    writer.temperature("pi-a", T0 + 3600 + 5, 15.0)  # late
    writer.commit()
    with open_reader(db) as r:
        (pi,) = r.now(T0 + 7200).pis
        assert (pi.temperature, pi.temperature_at) == (21.0, T0 + 7200)
        assert [(b.start, b.mean) for b in r.temperature("pi-a", T0, T0 + 3 * 3600, max_points=36)
                ] == [(T0 + 3600, 15.0), (T0 + 7200, 21.0)]
    for step in schema.ROLLUP_STEPS:
        start = (T0 + 3600) // step * step
        assert rows(db, "SELECT lo, hi, n FROM rollup WHERE step = ? AND start = ?", step,
                    start)[0][:2] == (1500, 2100 if step == 86400 else 1500)


def test_rollups_equal_the_raw_points_whatever_the_arrival_order(
        writer: SqliteHistory, db: Path) -> None:
    """Every rollup bucket holds exactly the min, max, sum and count of the raw points in
    it, with readings arriving out of order over several commits."""
    rng = random.Random(12)
    times = [T0 + rng.uniform(0, 3 * DAY) for _ in range(3000)]
    for i, at in enumerate(times):
        writer.temperature(rng.choice(("pi-a", "pi-b")), at, rng.uniform(-5, 35))
        if i % 250 == 0:
            writer.commit()
    writer.commit()
    for step in schema.ROLLUP_STEPS:
        expected = rows(db, "SELECT device_id, ts / 1000 / ?1 * ?1, min(centi), max(centi), "
                        "sum(centi), count(*) FROM temperature GROUP BY 1, 2 ORDER BY 1, 2", step)
        assert rows(db, "SELECT device_id, start, lo, hi, total, n FROM rollup WHERE step = ? "
                    "ORDER BY 1, 2", step) == expected


def test_a_repeated_reading_is_kept_once(writer: SqliteHistory, db: Path) -> None:
    """The same Pi's reading at the same time, recorded twice (a redelivery after a
    crash), is one point and counts once in the rollups."""
    for _ in range(2):
        writer.temperature("pi-a", T0 + 1.5, 20.0)
        writer.commit()
    assert rows(db, "SELECT count(*) FROM temperature") == [(1,)]
    assert rows(db, "SELECT DISTINCT n FROM rollup") == [(1,)]


def test_a_pis_mark_is_that_of_its_last_reading_received_in_a_batch(
        db: Path, clock: Clock) -> None:
    """A Pi with a real sensor and a simulated scanner: the mark on its card is that of
    the reading received last, also when a batch holds both (temperatures are written
    at the commit, after the presence report that came later)."""
    with SqliteHistory(db, clock=clock) as w:
        clock.now = T0 + 1
        w.temperature("pi-a", T0, 20.0)
        clock.now = T0 + 2
        w.presence("pi-a", T0 + 1, [Sighting(name="Anna", state="home")],
                   simulated="simulated")
        w.commit()
        with open_reader(db) as r:
            assert [p.simulated for p in r.now(T0 + 3).pis] == ["simulated"]
        clock.now = T0 + 12
        w.presence("pi-a", T0 + 11, [Sighting(name="Anna", state="home")],
                   simulated="simulated")
        clock.now = T0 + 13
        w.temperature("pi-a", T0 + 12, 20.0)
        w.commit()
        with open_reader(db) as r:
            assert [p.simulated for p in r.now(T0 + 14).pis] == [None]


def test_a_copy_among_new_readings_leaves_the_new_ones_whole(writer: SqliteHistory,
                                                             db: Path) -> None:
    """A batch that holds a copy of a recorded reading besides new ones (what a crash
    before the acknowledgement redelivers, followed by fresh readings) keeps each
    reading once: in the raw points, the rollups and the Pi's reading count."""
    writer.temperature("pi-a", T0 + 1, 20.0)
    writer.temperature("pi-a", T0 + 11, 21.0)
    writer.commit()
    writer.temperature("pi-a", T0 + 11, 21.0)  # the copy
    writer.temperature("pi-a", T0 + 21, 22.0)
    writer.temperature("pi-b", T0 + 21, 23.0)
    writer.commit()
    assert rows(db, "SELECT device_id, ts - ?, centi FROM temperature ORDER BY 1, 2",
                round(T0 * 1000)) == [(1, 1000, 2000), (1, 11000, 2100), (1, 21000, 2200),
                                      (2, 21000, 2300)]
    assert rows(db, "SELECT name, readings FROM device ORDER BY 1") == [("pi-a", 3),
                                                                         ("pi-b", 1)]
    assert rows(db, "SELECT device_id, lo, hi, total, n FROM rollup WHERE step = 86400 "
                "ORDER BY 1") == [(1, 2000, 2200, 6300, 3), (2, 2300, 2300, 2300, 1)]


def test_different_readings_in_one_millisecond_are_all_kept(writer: SqliteHistory,
                                                            db: Path) -> None:
    """Two different readings filed under the same millisecond are both kept (the
    second a millisecond later); only an identical copy is dropped."""
    for value in (20.0, 20.5, 20.0, 21.0):
        writer.temperature("pi-a", T0 + 1.5, value)
    writer.commit()
    assert rows(db, "SELECT ts - ?, centi FROM temperature ORDER BY ts",
                round((T0 + 1.5) * 1000)) == [(0, 2000), (1, 2050), (2, 2100)]
    assert rows(db, "SELECT DISTINCT n FROM rollup") == [(3,)]


def test_simulated_marks_are_kept_everywhere(writer: SqliteHistory, db: Path) -> None:
    """Demo and simulated readings keep their mark in raw points, rollups, the Pi's and
    the person's state now and their presence intervals."""
    writer.temperature("pi-a", T0, 20.0, simulated="demo")
    writer.temperature("pi-a", T0 + 10, 20.0)
    writer.temperature("pi-b", T0, 20.0, simulated="simulated")
    writer.presence("pi-b", T0, [Sighting(name="Anna", state="home")], simulated="simulated")
    writer.commit()
    with open_reader(db) as r:
        assert [b.simulated for b in r.temperature("pi-a", T0, T0 + 20, max_points=20)] == [
            "demo", None]
        assert [b.simulated for b in r.temperature("pi-a", T0, T0 + DAY)] == ["demo"]
        now = r.now(T0 + 20)
        assert [(p.name, p.simulated) for p in now.pis] == [("pi-a", None),
                                                            ("pi-b", "simulated")]
        assert now.people[0].simulated == "simulated"
        assert r.presence(T0, T0 + DAY)["Anna"][0].simulated == "simulated"


def test_resolution_is_the_coarsest_that_still_fills_the_chart() -> None:
    """24 h: 5-minute buckets; 7 days: 5-minute rollups merged to 30 min; 30 days: hourly
    merged to 2 h; a year: daily; an hour: raw points; never more than max_points."""
    assert resolution(T0, T0 + DAY, 400) == (300, 300)
    assert resolution(T0, T0 + 7 * DAY, 400) == (300, 1800)
    assert resolution(T0, T0 + 30 * DAY, 400) == (3600, 7200)
    assert resolution(T0, T0 + 365 * DAY, 400) == (86400, 86400)
    assert resolution(T0, T0 + 3600, 400) == (0, 9)
    assert resolution(T0, T0 + DAY, 400, kept_from=T0 + 1) == (3600, 3600)
    for span in (60, 3600, DAY, 7 * DAY, 30 * DAY, 365 * DAY, 3000 * DAY):
        for points in (1, 50, 400, 1000):
            _, width = resolution(T0, T0 + span, points)
            assert span / width <= points


def test_presence_fused_across_two_pis(writer: SqliteHistory, db: Path) -> None:
    """A person is home while any Pi has them home: one home stretch seen by both Pis,
    then away; now() names the Pis whose latest report has them home."""
    def report(pi: str, at: float, state: str) -> None:
        writer.presence(pi, at, [Sighting(name="Anna", state=state, last_seen=at)])  # type: ignore[arg-type]

    report("pi-a", T0, "away")
    report("pi-b", T0, "away")
    report("pi-a", T0 + 100, "home")
    report("pi-b", T0 + 200, "home")
    report("pi-a", T0 + 300, "away")
    writer.commit()
    with open_reader(db) as r:
        now = r.now(T0 + 350).people[0]
        assert (now.home, now.since, now.seen_by, now.last_seen) == (
            True, T0 + 100, ("pi-b",), T0 + 300)
    report("pi-b", T0 + 500, "away")
    writer.commit()
    with open_reader(db) as r:
        assert r.presence(T0, T0 + 1000)["Anna"] == [
            Interval(start=T0, end=T0 + 100, state="away"),
            Interval(start=T0 + 100, end=T0 + 500, state="home", seen_by=("pi-a", "pi-b")),
            Interval(start=T0 + 500, end=None, state="away")]
        assert r.presence(T0 + 150, T0 + 400)["Anna"] == [
            Interval(start=T0 + 150, end=T0 + 400, state="home", seen_by=("pi-a", "pi-b"))]
        now = r.now(T0 + 600).people[0]
        assert (now.home, now.since, now.seen_by) == (False, T0 + 500, ())


def test_a_move_between_rooms_reported_at_one_moment_is_no_away_stretch(
        writer: SqliteHistory, db: Path) -> None:
    """Pi A's report that a person left and Pi B's that they arrived, both of the same
    moment, written one after the other, leave one home stretch seen by both."""
    writer.presence("pi-a", T0, [Sighting(name="Anna", state="home")])
    writer.presence("pi-b", T0, [Sighting(name="Anna", state="away")])
    writer.presence("pi-a", T0 + 60, [Sighting(name="Anna", state="away")])
    writer.presence("pi-b", T0 + 60, [Sighting(name="Anna", state="home")])
    writer.commit()
    with open_reader(db) as r:
        assert r.presence(T0, T0 + 100)["Anna"] == [
            Interval(start=T0, end=None, state="home", seen_by=("pi-a", "pi-b"))]
    assert rows(db, "SELECT count(*) FROM person_change") == [(1,)]


def expected_presence(reports: list[tuple[str, float, bool]]) -> list[tuple[float, bool,
                                                                             tuple[str, ...]]]:
    """Brute force: the fused state after every report time, as (start, home, seen_by)."""
    latest: dict[str, bool] = {}
    out: list[tuple[float, bool, set[str]]] = []
    for at in sorted({at for _, at, _ in reports}):
        for pi, t, home in reports:
            if t == at:
                latest[pi] = home
        home_at = {pi for pi, home in latest.items() if home}
        if out and out[-1][1] == bool(home_at):
            out[-1][2].update(home_at)
        else:
            out.append((at, bool(home_at), set(home_at)))
    return [(at, home, tuple(sorted(seen))) for at, home, seen in out]


def test_presence_from_a_late_pi_is_fused_into_the_past(writer: SqliteHistory, db: Path) -> None:
    """Pis whose reports arrive hours late (each Pi's own in order) give the same
    stretches as if every report had come in time order."""
    rng = random.Random(7)
    reports = {pi: [(pi, T0 + 60 * i + rng.random(), rng.random() < 0.3) for i in range(300)]
               for pi in ("pi-a", "pi-b", "pi-c")}
    queues = {pi: list(rs) for pi, rs in reports.items()}
    while queues:  # interleave the Pis at random: whole runs of one Pi arrive late
        pi = rng.choice(sorted(queues))
        for _ in range(rng.randint(1, 80)):
            if queues[pi]:
                name, at, home = queues[pi].pop(0)
                writer.presence(name, at, [Sighting(name="Bo", state="home" if home
                                                    else "away")])
        if not queues[pi]:
            del queues[pi]
        writer.commit()
    everything = [r for rs in reports.values() for r in rs]
    with open_reader(db) as r:
        got = [(i.start, i.state == "home", i.seen_by) for i in r.presence(0, 2 * T0)["Bo"]]
    assert got == expected_presence(everything)


def test_a_reader_kept_open_gives_what_a_new_one_gives(writer: SqliteHistory,
                                                       db: Path) -> None:
    """The reader keeps each person's timeline between calls and extends it: after new
    reports, a late report (before the last it took in), a Pi going offline and a new
    Pi, a reader kept open answers exactly as a new reader does."""
    rng = random.Random(11)
    kept = open_reader(db)

    def same() -> None:
        with open_reader(db) as fresh:
            for lo, hi in ((0, 2 * T0), (T0 + 600, T0 + 3000), (T0 + 2000, T0 + 2100)):
                assert kept.presence(lo, hi) == fresh.presence(lo, hi)

    try:
        for i in range(50):
            writer.presence("pi-a", T0 + 60 * i, [Sighting(
                name="Bo", state="home" if rng.random() < 0.5 else "away")])
        writer.commit()
        same()
        for i in range(50, 60):  # more, after what the kept reader took in
            writer.presence("pi-a", T0 + 60 * i, [Sighting(name="Bo", state="home")])
        writer.commit()
        same()
        writer.presence("pi-b", T0 + 60 * 20 + 1, [Sighting(name="Bo", state="home")])
        writer.commit()  # a new Pi, late: before the last change taken in
        same()
        writer.presence("pi-b", T0 + 60 * 30 + 1, [Sighting(name="Bo", state="away")])
        writer.commit()  # late again, from a Pi the timeline knows
        same()
        writer.availability("pi-a", T0 + 60 * 61, False)
        writer.commit()
        same()
    finally:
        kept.close()


def test_a_person_a_pi_no_longer_lists_is_away_there(writer: SqliteHistory, db: Path) -> None:
    """A full report without a person (taken off that Pi's known devices) ends their home
    state on that Pi."""
    writer.presence("pi-a", T0, [Sighting(name="Anna", state="home")])
    writer.presence("pi-a", T0 + 10, [])
    writer.commit()
    with open_reader(db) as r:
        assert [(i.start, i.state) for i in r.presence(T0, T0 + 20)["Anna"]] == [
            (T0, "home"), (T0 + 10, "away")]


def test_an_older_presence_report_is_superseded(writer: SqliteHistory, db: Path) -> None:
    """A report older than the last one from the same Pi changes nothing."""
    writer.presence("pi-a", T0 + 10, [Sighting(name="Anna", state="home")])
    writer.presence("pi-a", T0 + 5, [Sighting(name="Anna", state="away")])
    writer.commit()
    with open_reader(db) as r:
        assert r.now(T0 + 20).people[0].home
    assert rows(db, "SELECT count(*) FROM presence_change") == [(1,)]


def anna(writer: SqliteHistory, pi: str, at: float, state: str) -> None:
    writer.presence(pi, at, [Sighting(name="Anna", state=state, last_seen=at)])  # type: ignore[arg-type]


def test_a_pi_gone_offline_leaves_its_person_unknown_not_home_not_away(
        writer: SqliteHistory, db: Path) -> None:
    """Pi A has Anna home, then goes offline: two hours later she is neither home nor
    away but unknown since the moment it went offline, last had home by Pi A; the
    timeline's home stretch ends there and an unknown one lasts."""
    writer.availability("pi-a", T0, True)
    anna(writer, "pi-a", T0 + 10, "home")
    writer.availability("pi-a", T0 + 100, False)
    writer.commit()
    with open_reader(db) as r:
        now = r.now(T0 + 100 + 7200).people[0]
        assert (now.state, now.home, now.since, now.seen_by, now.unconfirmed_by) == (
            "unknown", False, T0 + 100, (), ("pi-a",))
        assert r.presence(T0, T0 + 8000)["Anna"] == [
            Interval(start=T0 + 10, end=T0 + 100, state="home", seen_by=("pi-a",)),
            Interval(start=T0 + 100, end=None, state="unknown", unconfirmed_by=("pi-a",))]


def test_an_online_pi_that_sees_the_person_keeps_them_home(writer: SqliteHistory,
                                                           db: Path) -> None:
    """Pi A goes offline while Pi B (whose status was never received) has Anna home:
    she stays home, seen by Pi B only, in one home stretch."""
    writer.availability("pi-a", T0, True)
    anna(writer, "pi-a", T0 + 10, "home")
    anna(writer, "pi-b", T0 + 20, "home")
    writer.availability("pi-a", T0 + 100, False)
    writer.commit()
    with open_reader(db) as r:
        now = r.now(T0 + 7200).people[0]
        assert (now.state, now.home, now.since, now.seen_by, now.unconfirmed_by) == (
            "home", True, T0 + 10, ("pi-b",), ())
        assert r.presence(T0, T0 + 8000)["Anna"] == [
            Interval(start=T0 + 10, end=None, state="home", seen_by=("pi-a", "pi-b"))]


def test_a_pi_back_online_vouches_again_from_its_next_report(writer: SqliteHistory,
                                                             db: Path) -> None:
    """Pi A back online is not believed before it reports: Anna stays unknown until
    then; its report that she is away makes her away from that report on; a later
    outage and a report repeating "home" afterwards make her home again from it."""
    writer.availability("pi-a", T0, True)
    anna(writer, "pi-a", T0 + 10, "home")
    writer.availability("pi-a", T0 + 100, False)
    writer.availability("pi-a", T0 + 200, True)
    writer.commit()
    with open_reader(db) as r:
        assert r.now(T0 + 205).people[0].state == "unknown"
    anna(writer, "pi-a", T0 + 210, "away")
    writer.commit()
    with open_reader(db) as r:
        now = r.now(T0 + 300).people[0]
        assert (now.state, now.home, now.since, now.unconfirmed_by) == (
            "away", False, T0 + 210, ())
        assert [(i.start, i.end, i.state) for i in r.presence(T0, T0 + 300)["Anna"]] == [
            (T0 + 10, T0 + 100, "home"), (T0 + 100, T0 + 210, "unknown"),
            (T0 + 210, None, "away")]
    anna(writer, "pi-a", T0 + 400, "home")
    writer.availability("pi-a", T0 + 500, False)
    writer.availability("pi-a", T0 + 600, True)
    anna(writer, "pi-a", T0 + 610, "home")  # the same as its last report
    writer.commit()
    with open_reader(db) as r:
        now = r.now(T0 + 700).people[0]
        assert (now.state, now.since, now.seen_by) == ("home", T0 + 610, ("pi-a",))
        assert [(i.start, i.state) for i in r.presence(T0 + 300, T0 + 700)["Anna"]] == [
            (T0 + 300, "away"), (T0 + 400, "home"), (T0 + 500, "unknown"),
            (T0 + 610, "home")]


def test_a_pi_gone_offline_with_the_person_away_leaves_them_away(
        writer: SqliteHistory, db: Path) -> None:
    """Only a Pi that last had the person home makes them unknown when it goes offline."""
    anna(writer, "pi-a", T0, "home")
    anna(writer, "pi-a", T0 + 10, "away")
    writer.availability("pi-a", T0 + 100, False)
    writer.commit()
    with open_reader(db) as r:
        assert r.now(T0 + 200).people[0].state == "away"
        assert [i.state for i in r.presence(T0, T0 + 200)["Anna"]] == ["home", "away"]


def test_a_removed_pi_no_longer_vouches(writer: SqliteHistory, db: Path) -> None:
    """A Pi the key rings no longer name (removed) is recorded offline once: the person
    it had home becomes unknown; the Pis that still have a ring are left as they are."""
    writer.availability("pi-a", T0, True)
    writer.availability("pi-b", T0, True)
    anna(writer, "pi-a", T0 + 10, "home")
    writer.key_rings({"pi-b"}, T0 + 100)
    writer.key_rings({"pi-b"}, T0 + 200)
    writer.commit()
    with open_reader(db) as r:
        now = r.now(T0 + 300)
        assert [(p.name, p.online, p.status_since) for p in now.pis] == [
            ("pi-a", False, T0 + 100), ("pi-b", True, T0)]
        assert (now.people[0].state, now.people[0].since) == ("unknown", T0 + 100)


def test_the_subscriber_records_a_pi_whose_key_ring_is_gone_offline(
        writer: SqliteHistory, db: Path, tmp_path: Path, clock: Clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The history sink looks at the key rings: once pi-a's is deleted (make
    remove-device), the history has pi-a offline and Anna unknown."""
    from subscriber.sinks import history as sink_module

    monkeypatch.setattr(sink_module, "KEYS_RECHECK", 0.0)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "pi-a.key").write_text("ring")
    sink = sink_module.HistorySink(writer, keys_dir=keys, clock=clock)
    anna(writer, "pi-a", T0 + 10, "home")
    sink.flush()
    with open_reader(db) as r:
        assert r.now(clock.now).people[0].state == "home"
    (keys / "pi-a.key").unlink()
    sink.flush()
    with open_reader(db) as r:
        now = r.now(clock.now)
        assert now.pis[0].online is False
        assert (now.people[0].state, now.people[0].unconfirmed_by) == ("unknown", ("pi-a",))


def test_now_shows_each_pi(writer: SqliteHistory, db: Path, clock: Clock) -> None:
    """now(): each Pi's status and since when, temperature now and when it was taken,
    when its last reading was received, its scanner state and detail."""
    writer.availability("pi-a", T0 + 1, True)
    writer.availability("pi-a", T0 + 2, True)
    writer.scanner("pi-a", T0 + 3, "error", "no Bluetooth adapter")
    writer.temperature("pi-a", T0 + 4, 19.5)
    writer.availability("pi-b", T0 + 5, False)
    writer.commit()
    with open_reader(db) as r:
        a, b = r.now(clock.now + 7).pis
    assert a.name == "pi-a" and a.online is True and a.status_since == T0 + 1
    assert (a.temperature, a.temperature_at, a.last_reading_at) == (19.5, T0 + 4, clock.now)
    assert (a.scanner_state, a.scanner_detail) == ("error", "no Bluetooth adapter")
    assert (b.online, b.temperature, b.last_reading_at, b.scanner_state) == (False, None,
                                                                             None, None)


def test_each_persons_room_and_each_pis_room_are_kept(writer: SqliteHistory, db: Path,
                                                      clock: Clock) -> None:
    """A Pi's room and a person's room changes (from the subscriber's rooms fusion) are
    kept: now() shows the person's room and since when while they are home, none once
    they are not; every change is a row (no room: not home)."""
    writer.pi_room("pi-a", T0, "Kitchen")
    writer.pi_room("pi-b", T0, "Garage")
    anna(writer, "pi-a", T0 + 10, "home")
    anna(writer, "pi-b", T0 + 10, "home")
    writer.person_room("Anna", T0 + 10, "Kitchen", "pi-a")
    writer.person_room("Anna", T0 + 20, "Kitchen", "pi-a")  # again: still since T0 + 10
    writer.commit()
    with open_reader(db) as r:
        now = r.now(clock.now)
    assert [(p.name, p.room) for p in now.pis] == [("pi-a", "Kitchen"), ("pi-b", "Garage")]
    assert (now.people[0].state, now.people[0].room, now.people[0].room_since) == (
        "home", "Kitchen", T0 + 10)
    writer.person_room("Anna", T0 + 60, "Garage", "pi-b")
    writer.person_room("Anna", T0 + 50, "Hall", "pi-b")  # older than the latest: ignored
    writer.commit()
    with open_reader(db) as r:
        assert (r.now(clock.now).people[0].room, r.now(clock.now).people[0].room_since) == (
            "Garage", T0 + 60)
    anna(writer, "pi-a", T0 + 200, "away")
    anna(writer, "pi-b", T0 + 200, "away")
    writer.person_room("Anna", T0 + 200, None)
    writer.commit()
    with open_reader(db) as r:
        person = r.now(clock.now).people[0]
    assert (person.state, person.room, person.room_since) == ("away", None, None)
    assert rows(db, "SELECT ts - ?, room, device_id FROM room_change ORDER BY ts", T0) == [
        (10.0, "Kitchen", 1), (20.0, "Kitchen", 1), (60.0, "Garage", 2), (200.0, None, None)]


def test_a_room_is_shown_only_while_the_history_has_them_home(
        writer: SqliteHistory, db: Path, clock: Clock) -> None:
    """When the history's own fusion has the person unknown (their Pi went offline),
    the last recorded room is not shown."""
    anna(writer, "pi-a", T0 + 10, "home")
    writer.person_room("Anna", T0 + 10, "Kitchen", "pi-a")
    writer.availability("pi-a", T0 + 20, False)
    writer.commit()
    with open_reader(db) as r:
        person = r.now(clock.now).people[0]
    assert (person.state, person.room) == ("unknown", None)


def test_a_version_1_database_is_upgraded_in_place(db: Path, clock: Clock) -> None:
    """A history written by the version before rooms (schema 1) is migrated when the
    subscriber opens it: everything in it is kept and rooms can be recorded."""
    db.parent.mkdir(mode=0o700)
    con = sqlite3.connect(db, isolation_level=None)
    schema.migrate(con, db, schema.MIGRATIONS[:1])
    assert con.execute("PRAGMA user_version").fetchone() == (1,)
    con.close()
    with SqliteHistory(db, clock=clock) as old:  # the v1 data, written through v1 tables
        old.temperature("pi-a", T0, 20.5)
        anna(old, "pi-a", T0 + 1, "home")
        old.commit()
    # Put it back to exactly version 1's shape: as an old subscriber left it.
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript("DROP TABLE alert; "  # (version 3)
                      "DROP TABLE room_change; ALTER TABLE device DROP COLUMN room; "
                      "ALTER TABLE person DROP COLUMN room; "
                      "ALTER TABLE person DROP COLUMN room_since; "
                      "ALTER TABLE person DROP COLUMN room_at; PRAGMA user_version = 1;")
    con.close()
    with pytest.raises(StorageError, match="not migrated it yet"):
        open_reader(db)
    with SqliteHistory(db, clock=clock) as writer:
        assert rows(db, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]
        writer.pi_room("pi-a", T0 + 2, "Kitchen")
        writer.person_room("Anna", T0 + 2, "Kitchen", "pi-a")
        writer.commit()
    with open_reader(db) as r:
        now = r.now(clock.now)
        assert r.temperature("pi-a", T0, T0 + 60)[0].mean == 20.5
    assert (now.pis[0].temperature, now.pis[0].room) == (20.5, "Kitchen")
    assert (now.people[0].state, now.people[0].room) == ("home", "Kitchen")


def test_the_history_sink_records_room_changes_from_the_fusion(
        writer: SqliteHistory, db: Path, clock: Clock) -> None:
    """The subscriber's history sink keeps each fused person change's room (none unless
    home); a name or room the store refuses is counted, not written, and the sink goes
    on."""
    from subscriber.rooms import Person
    from subscriber.sinks.history import HistorySink

    sink = HistorySink(writer, clock=clock)
    anna(writer, "pi-a", T0 + 1, "home")
    sink.person(Person("Anna", "home", "Kitchen", "pi-a", T0 + 1))
    sink.person(Person("x" * 65, "home", "Kitchen", "pi-a", T0 + 2))
    sink.person(Person("Bob", "home", "Kitchen", "pi-a", T0 + 2))  # in no presence report
    sink.person(Person("Anna", "unknown", None, None, T0 + 3))
    sink.flush()
    assert rows(db, "SELECT ts - ?, room FROM room_change", T0) == [(1.0, "Kitchen"),
                                                                    (3.0, None)]
    assert sink.unrecorded["room"] == 1
    assert rows(db, "SELECT name FROM person") == [("Anna",)]


def test_availability_and_scanner_are_kept_as_changes(writer: SqliteHistory, db: Path) -> None:
    """Repeated statuses are one change; an older status than the latest changes
    nothing."""
    for at, online in ((1, True), (2, True), (3, False), (4, False), (5, True), (0.5, False)):
        writer.availability("pi-a", T0 + at, online)
    for at, state, detail in ((1, "ok", ""), (2, "ok", ""), (3, "error", "gone"),
                              (4, "error", "gone"), (5, "error", "other"), (0, "ok", "")):
        writer.scanner("pi-a", T0 + at, state, detail)
    writer.commit()
    assert rows(db, "SELECT ts - ?, online FROM availability_change ORDER BY ts", T0) == [
        (1, 1), (3, 0), (5, 1)]
    assert rows(db, "SELECT ts - ?, state, detail FROM scanner_change ORDER BY ts", T0) == [
        (1, "ok", ""), (3, "error", "gone"), (5, "error", "other")]
    with open_reader(db) as r:
        (pi,) = r.now(T0 + 6).pis
    assert (pi.online, pi.status_since, pi.scanner_detail) == (True, T0 + 5, "other")


def test_rejections_are_counted_and_no_unknown_name_is_stored(
        writer: SqliteHistory, db: Path) -> None:
    """Rejected messages count per day, device and reason; a name the store does not
    know (say, from an attacker's topic) is counted as unknown and never stored."""
    writer.key_updated("pi-a", T0)
    for at, device, reason in ((T0, "pi-a", "replay"), (T0 + DAY, "pi-a", "replay"),
                               (T0, None, "decrypt"), (T0, "<script>x", "unknown-device"),
                               (T0, "pi-a", "expired")):
        writer.rejected(device, reason, at)
    writer.commit()
    with open_reader(db) as r:
        assert r.rejections() == {("pi-a", "replay"): 2, ("pi-a", "expired"): 1,
                                  (None, "decrypt"): 1, (None, "unknown-device"): 1}
        (report,) = r.devices()
    assert report.rejected == {"replay": 2, "expired": 1}
    assert rows(db, "SELECT name FROM device") == [("pi-a",)]
    assert rows(db, "SELECT count(*) FROM rejection") == [(5,)]  # two days of pi-a replay


def test_devices_report_key_readings_and_first_last_seen(
        writer: SqliteHistory, db: Path, clock: Clock) -> None:
    """devices(): per Pi its readings count, when first and last seen (received),
    when its key was updated and whether it is online."""
    writer.key_updated("pi-a", T0 - 5 * DAY)
    first = clock.now
    writer.temperature("pi-a", T0, 20.0)
    writer.commit()
    clock.now += 60
    writer.presence("pi-a", T0 + 60, [Sighting(name="Anna", state="away")])
    writer.scanner("pi-a", T0 + 60, "ok")
    writer.availability("pi-a", T0 + 60, True)
    writer.commit()
    with open_reader(db) as r:
        (report,) = r.devices()
    assert (report.name, report.readings, report.first_seen, report.last_seen,
            report.key_updated_at, report.online) == ("pi-a", 3, first, clock.now,
                                                      T0 - 5 * DAY, True)


def test_nothing_is_durable_before_commit(writer: SqliteHistory, db: Path) -> None:
    """What was written since the last commit is gone when the writer closes without
    committing, and a reader never sees half a batch."""
    writer.temperature("pi-a", T0, 20.0)
    writer.commit()
    writer.temperature("pi-a", T0 + 10, 21.0)
    writer.presence("pi-a", T0 + 10, [Sighting(name="Anna", state="home")])
    with open_reader(db) as r:
        assert r.now(T0).people == ()
    writer.close()
    assert rows(db, "SELECT count(*) FROM temperature") == [(1,)]


# -- retention ----------------------------------------------------------------------


def test_default_retention_keeps_at_least_a_year() -> None:
    """Raw points are kept at least a year by default."""
    assert DEFAULT_RETENTION_DAYS >= 366


def test_retention_deletes_old_raw_points_in_batches_and_keeps_rollups(
        db: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw points and 5-minute rollups older than retention_days go, a bounded batch per
    pass, passes no more often than due; hourly and daily rollups stay, and a chart of
    the old days is drawn from them."""
    monkeypatch.setattr(store, "RETENTION_BATCH", 100)
    clock.now = T0 + 3 * DAY
    with SqliteHistory(db, retention_days=1, clock=clock) as w:
        for i in range(360):  # an hour on day 0, every 10 s
            w.temperature("pi-a", T0 + 10 * i, 20.0)
        w.temperature("pi-a", clock.now - 60, 22.0)
        w.commit()  # the first pass runs at once
        assert rows(db, "SELECT count(*) FROM temperature") == [(361 - 100,)]
        w.temperature("pi-a", clock.now - 30, 22.0)
        w.commit()  # not due yet
        assert rows(db, "SELECT count(*) FROM temperature") == [(262 - 100 + 100,)]
        for _ in range(4):
            clock.now += store.RETENTION_CATCHUP
            w.commit()
        assert rows(db, "SELECT count(*) FROM temperature") == [(2,)]
        assert rows(db, "SELECT step, count(*) FROM rollup WHERE start < ? GROUP BY 1",
                    T0 + DAY) == [(3600, 1), (86400, 1)]
    with open_reader(db) as r:
        (old,) = r.temperature("pi-a", T0, T0 + DAY)
    assert (old.start, old.end, old.count, old.mean) == (T0, T0 + 3600, 360, 20.0)


# -- failures -----------------------------------------------------------------------


def test_a_read_only_location_is_a_storage_error_naming_the_file(
        tmp_path: Path, db: Path, clock: Clock) -> None:
    """A history on a read-only mount, and a new one there: each raises StorageError
    with one line naming the file, and the file is left as it was."""
    with SqliteHistory(db, clock=clock) as w:
        w.temperature("pi-a", T0, 20.0)
        w.commit()
    ro = tmp_path / "ro"
    child = python_child("""
        import sys
        from pathlib import Path
        from homewatch.errors import StorageError
        from homewatch.history.sqlite import SqliteHistory
        for path in (Path(sys.argv[1]) / "history.db", Path(sys.argv[1]) / "new" / "h.db"):
            try:
                SqliteHistory(path)
            except StorageError as exc:
                print(exc)
        """, str(ro), mount=read_only_bind(db.parent, ro))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out + err
    for line, path in zip(lines, (ro / "history.db", ro / "new" / "h.db"), strict=True):
        assert line.startswith(f"history database {path}: ")
        assert "read-only" in line.lower()
    assert rows(db, "SELECT count(*) FROM temperature") == [(1,)]


def test_a_full_disk_is_a_storage_error_and_loses_nothing_committed(tmp_path: Path) -> None:
    """On a full disk (a 512 KiB tmpfs) a write or commit raises StorageError ("the disk
    is full", naming the file); what was committed before stays readable."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    child = python_child("""
        import sys, time
        from homewatch.errors import StorageError
        from homewatch.history.sqlite import SqliteHistory, open_reader
        path = sys.argv[1] + "/h.db"
        w = SqliteHistory(path)
        committed, base = 0, time.time() - 86400
        try:
            for i in range(10**6):
                w.temperature("pi-a", base + i, 20.0)
                if i % 100 == 99:
                    w.commit()
                    committed = i + 1
        except StorageError as exc:
            print(exc)
        w.close()
        with open_reader(path) as r:
            print(committed, sum(b.count for b in r.temperature("pi-a", 0, 2e9, max_points=5)))
        """, str(mnt), mount=f"mount -t tmpfs -o size=512k tmpfs {mnt}")
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    message, counts = out.splitlines()
    assert message.startswith(f"history database {mnt}/h.db: ") and "disk is full" in message
    committed, read = counts.split()
    assert int(committed) > 1000 and read == committed


def test_a_database_locked_too_long_is_a_storage_error_then_recovers(
        db: Path, clock: Clock) -> None:
    """A writer that cannot get the lock within its busy timeout raises StorageError;
    once the lock is gone the same writer records again."""
    with SqliteHistory(db, clock=clock, busy_timeout=0.2) as w:
        w.temperature("pi-a", T0, 20.0)
        w.commit()
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageError, match=rf"^history database {db}: .*locked"):
            w.temperature("pi-a", T0 + 10, 21.0)
        other.execute("ROLLBACK")
        other.close()
        w.temperature("pi-a", T0 + 10, 21.0)
        w.commit()
    assert rows(db, "SELECT count(*), sum(n) FROM temperature, rollup WHERE step = 86400") == [
        (2, 4)]


def test_a_damaged_file_is_a_storage_error(db: Path) -> None:
    """A file that is not an SQLite database is refused with a StorageError naming it."""
    db.parent.mkdir()
    db.write_bytes(b"not a database" * 100)
    with pytest.raises(StorageError, match=rf"^history database {db}: .*damaged"):
        SqliteHistory(db)
    with pytest.raises(StorageError, match=rf"^history database {db}: "):
        open_reader(db)


def test_the_reader_refuses_to_write(writer: SqliteHistory, db: Path) -> None:
    """The reader's connection is read-only (mode=ro and query_only): no write gets
    through, even with query_only switched off."""
    writer.temperature("pi-a", T0, 20.0)
    writer.commit()
    with open_reader(db) as r:
        con = r._db
        assert con.execute("PRAGMA query_only").fetchone() == (1,)
        with pytest.raises(sqlite3.OperationalError):
            con.execute("DELETE FROM temperature")
        con.execute("PRAGMA query_only=0")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            con.execute("DELETE FROM temperature")
    assert rows(db, "SELECT count(*) FROM temperature") == [(1,)]


def test_a_reader_of_a_missing_database_says_so(tmp_path: Path) -> None:
    """Opening a reader before the subscriber made the database is a clear
    StorageError, and makes no file."""
    with pytest.raises(StorageError, match="does not exist"):
        open_reader(tmp_path / "h.db")
    assert not (tmp_path / "h.db").exists()


# -- schema versions ----------------------------------------------------------------


def test_schema_version_and_migration_path(writer: SqliteHistory, db: Path) -> None:
    """A new database is at SCHEMA_VERSION (PRAGMA user_version); a later migration step
    is applied in one transaction keeping the data; a database newer than the code is
    refused by the writer and by a reader, an older one by a reader."""
    writer.temperature("pi-a", T0, 20.0)
    writer.commit()
    writer.close()
    assert rows(db, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]
    con = sqlite3.connect(db, isolation_level=None)
    schema.migrate(con, db, (*schema.MIGRATIONS, ("CREATE TABLE extra (x)",)))
    con.close()
    assert rows(db, "PRAGMA user_version") == [(schema.SCHEMA_VERSION + 1,)]
    assert rows(db, "SELECT count(*) FROM temperature, extra") == [(0,)]
    with pytest.raises(StorageError, match="newer than this Homewatch"):
        SqliteHistory(db)
    with pytest.raises(StorageError, match="upgrade the dashboard"):
        open_reader(db)
    old = db.parent / "old.db"
    sqlite3.connect(old).close()
    with pytest.raises(StorageError, match="not migrated it yet"):
        open_reader(old)


# -- crashes and concurrency --------------------------------------------------------

WRITING_CHILD = """
    import sys
    from homewatch.history import Sighting
    from homewatch.history.sqlite import SqliteHistory
    w = SqliteHistory(sys.argv[1])
    i, base = int(sys.argv[2]), float(sys.argv[3])
    while True:
        for _ in range(50):
            i += 1
            w.temperature("pi-a", base + i, 20.0 + i % 7)
            w.presence("pi-a", base + i, [Sighting(name="Anna", state="home" if i % 3 else "away")])
        w.commit()
        print(i, flush=True)
"""


def test_kill_9_of_a_writing_process_leaves_a_readable_database(db: Path) -> None:
    """A writer killed (-9) at random moments leaves a database that passes
    integrity_check and holds whole batches only: all it said it committed, and at most
    the one batch it committed but had not said yet; a read-only reader reads it (or,
    after a kill inside a commit, says the subscriber must roll it back)."""
    rng = random.Random(3)
    committed, base = 0, time.time() - DAY
    for _ in range(6):
        child = python_child(WRITING_CHILD, str(db), str(committed), str(base))
        assert child.stdout is not None
        for _ in range(rng.randint(1, 40)):
            committed = int(child.stdout.readline())
        time.sleep(rng.uniform(0, 0.05))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        said = int(out.split()[-1]) if out.split() else committed
        try:
            with open_reader(db) as r:
                readable = sum(b.count for b in r.temperature("pi-a", 0, 2e9, max_points=5))
            assert readable in (said, said + 50)
        except StorageError as exc:
            assert "interrupted" in str(exc)
        SqliteHistory(db).close()  # the subscriber's restart: rolls an interrupted commit back
        assert rows(db, "PRAGMA integrity_check") == [("ok",)]
        ((committed,),) = rows(db, "SELECT count(*) FROM temperature")
        assert committed in (said, said + 50)
        with open_reader(db) as r:
            assert r.now(0).pis[0].temperature == 20.0 + committed % 7
            assert r.devices()[0].readings == 2 * committed


def test_a_commit_cut_off_by_kill_9_is_rolled_back_by_the_next_writer(
        db: Path, clock: Clock) -> None:
    """A write killed half-way into the file leaves a hot journal: a read-only reader
    then says, in a StorageError, that the subscriber rolls it back when it starts; the
    next writer does, and the reader reads what was committed before."""
    with SqliteHistory(db, clock=clock) as w:
        w.temperature("pi-a", T0, 20.0)
        w.commit()
    child = python_child("""
        import os, signal, sqlite3, sys
        db = sqlite3.connect(sys.argv[1], isolation_level=None)
        db.execute("PRAGMA cache_size=10")  # a big batch must spill into the file
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO temperature VALUES (1, ?, 2000, 0)",
                       [(i,) for i in range(10**5)])
        os.kill(os.getpid(), signal.SIGKILL)
        """, str(db))
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert db.with_name(db.name + "-journal").stat().st_size > 0
    with pytest.raises(StorageError, match=rf"^history database {db}: .*interrupted.*"
                       "subscriber rolls it back"), open_reader(db) as r:
        r.now(T0)
    SqliteHistory(db, clock=clock).close()
    with open_reader(db) as r:
        assert [b.count for b in r.temperature("pi-a", T0, T0 + 10, max_points=10)] == [1]
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]


READER_CHILD = """
    import errno, json, sys, time
    from homewatch.errors import StorageError
    from homewatch.history.sqlite import open_reader
    path, last = sys.argv[1], float(sys.argv[2])
    try:
        open(path, "r+b")
        print(json.dumps({"writable": True}), flush=True)
    except OSError as exc:
        print(json.dumps({"writable": exc.errno != errno.EROFS}), flush=True)
    r = open_reader(path)
    for line in sys.stdin:
        if line.strip() == "hammer":  # query without pause for 3 s
            queries = errors = 0
            end = time.monotonic() + 3
            while time.monotonic() < end:
                try:
                    r.now(0)
                    for span in (86400, 7 * 86400, 365 * 86400):
                        r.temperature("pi-a", last - span, last)
                    r.presence(0, 2e9)
                    queries += 1
                except StorageError as exc:
                    errors += 1
                    print(exc, file=sys.stderr)
            print(json.dumps({"queries": queries, "errors": errors}), flush=True)
            continue
        pi = r.now(0).pis
        count = sum(b.count for b in r.temperature("pi-a", 0, 2e9, max_points=5))
        print(json.dumps({"temperature": pi[0].temperature if pi else None,
                          "count": count}), flush=True)
"""


def test_a_reader_on_a_read_only_mount_sees_each_commit_and_never_stops_the_writer(
        tmp_path: Path, db: Path, clock: Clock) -> None:
    """A dashboard-like reader on a read-only bind mount of the history's directory
    (kernel-enforced, as a Compose ``:ro`` volume) opens it whether or not the writer
    runs, sees each commit at once, and queries without pause while the writer keeps
    committing: neither side fails."""
    with SqliteHistory(db, clock=clock) as w:
        w.temperature("pi-a", T0, 20.0)
        w.commit()
    ro = tmp_path / "ro"
    reader = python_child(READER_CHILD, str(ro / db.name), str(clock.now),
                          mount=read_only_bind(db.parent, ro))
    assert reader.stdin is not None and reader.stdout is not None

    def ask(line: str = "query") -> dict[str, object]:
        assert reader.stdin is not None and reader.stdout is not None
        reader.stdin.write(line + "\n")
        reader.stdin.flush()
        reply: dict[str, object] = json.loads(reader.stdout.readline())
        return reply

    try:
        assert json.loads(reader.stdout.readline()) == {"writable": False}
        assert ask() == {"temperature": 20.0, "count": 1}  # the writer is not running
        with SqliteHistory(db, clock=clock) as w:
            for i in range(1, 21):
                w.temperature("pi-a", T0 + 10 * i, 20.0 + i / 100)
                w.commit()
                assert ask() == {"temperature": 20.0 + i / 100, "count": i + 1}
            reader.stdin.write("hammer\n")
            reader.stdin.flush()
            commits, readings, slowest = 0, 0, 0.0
            end = time.monotonic() + 2.5
            while time.monotonic() < end:
                for _ in range(10):
                    readings += 1
                    w.temperature("pi-a", T0 + 1000 + readings, 19.0)
                started = time.monotonic()
                w.commit()
                commits += 1
                slowest = max(slowest, time.monotonic() - started)
            hammered = json.loads(reader.stdout.readline())
        print(f"{commits} commits while the reader ran {hammered['queries']} query rounds; "
              f"slowest commit {1000 * slowest:.1f} ms")
        assert commits > 10 and hammered["queries"] > 10 and hammered["errors"] == 0
        assert ask() == {"temperature": 19.0, "count": 21 + readings}
    finally:
        _, err = reader.communicate(timeout=30)  # closes its stdin: the reader ends
    assert reader.returncode == 0, err


# -- layering -----------------------------------------------------------------------


def test_the_history_package_holds_no_key() -> None:
    """Importing the store (as the dashboard does) loads no module that holds keys or
    talks MQTT: secrets, fernet, envelope, mqtt, provision, pki, paho, cryptography."""
    forbidden = ("homewatch.secrets", "homewatch.fernet", "homewatch.envelope",
                 "homewatch.mqtt", "homewatch.provision", "homewatch.pki", "paho",
                 "cryptography")
    code = ("import sys, json, homewatch.history.sqlite, homewatch.history.sqlite_reader; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(),
                         capture_output=True, text=True, check=True).stdout
    loaded: list[str] = json.loads(out)
    assert [m for m in loaded if m.startswith(forbidden)] == []


def test_reader_and_writer_satisfy_the_interface(writer: SqliteHistory, db: Path) -> None:
    """SqliteHistory is a HistoryWriter and SqliteHistoryReader a HistoryReader (checked
    by mypy through these assignments, and here at run time by method names)."""
    from homewatch.history import HistoryReader, HistoryWriter

    w: HistoryWriter = writer
    writer.commit()
    with open_reader(db) as reader:
        r: HistoryReader = reader
        for proto, obj in ((HistoryWriter, w), (HistoryReader, r)):
            names = [n for n in vars(proto) if not n.startswith("_")]
            assert all(callable(getattr(obj, n)) for n in names)




@pytest.mark.parametrize(("call", "args"), [
    ("temperature", ("pi-a", T0, 1e300)),
    ("temperature", ("pi-a", T0, 10**400)),
    ("temperature", ("pi-a", T0, float("nan"))),
    ("temperature", ("pi-a", 1e20, 20.0)),
    ("temperature", ("p" * 65, T0, 20.0)),
    ("presence", ("pi-a", T0, [Sighting(name="x" * 65, state="home")])),
    ("presence", ("pi-a", T0, [Sighting(name=f"p{i}", state="home") for i in range(65)])),
    ("presence", ("pi-a", T0, [Sighting(name="Anna", state="home", last_seen=1e300)])),
    ("scanner", ("pi-a", T0, "s" * 65)),
    ("pi_room", ("pi-a", T0, "r" * 65)),
    ("pi_room", ("pi-a", T0, "")),
    ("person_room", ("x" * 65, T0, "Kitchen", "pi-a")),
    ("person_room", ("Anna", T0, "r" * 65, "pi-a")),
    ("person_room", ("Anna", 1e20, "Kitchen", "pi-a")),
    ("person_room", ("Anna", T0, "Kitchen", "p" * 65)),
])
def test_values_out_of_range_are_refused_before_anything_is_written(
        writer: SqliteHistory, db: Path, call: str, args: tuple[Any, ...]) -> None:
    """What a buggy or stolen Pi could send (huge or non-finite numbers, times beyond
    2100, too many or too long names) is a ValueError and writes nothing: the batch's
    other readings are still committed."""
    writer.temperature("pi-b", T0, 21.0)
    with pytest.raises(ValueError):
        getattr(writer, call)(*args)
    writer.commit()
    assert rows(db, "SELECT count(*) FROM temperature") == [(1,)]
    assert rows(db, "SELECT name FROM device") == [("pi-b",)]
    assert rows(db, "SELECT count(*) FROM person") == [(0,)]


def test_people_and_scanner_details_are_bounded(writer: SqliteHistory, db: Path) -> None:
    """At most MAX_PERSONS people are ever recorded (a Pi inventing names cannot grow the
    history without end); a scanner detail is cut to MAX_DETAIL characters."""
    for start in range(0, store.MAX_PERSONS + 40, store.MAX_SIGHTINGS):
        writer.presence("pi-a", T0 + start, [Sighting(name=f"p{i}", state="home")
                                             for i in range(start, start + 64)])
        writer.commit()
    assert rows(db, "SELECT count(*) FROM person") == [(store.MAX_PERSONS,)]
    writer.scanner("pi-a", T0, "error", "d" * 10_000)
    writer.commit()
    assert rows(db, "SELECT length(scanner_detail) FROM device") == [(store.MAX_DETAIL,)]
