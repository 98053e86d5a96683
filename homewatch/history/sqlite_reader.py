"""The read-only side of the SQLite history store (the dashboard's): see
:mod:`homewatch.history.sqlite` for why it works on a read-only mount.

Each call is one short read transaction on a ``mode=ro`` + ``query_only`` connection,
so it sees one consistent state and holds the shared lock (which the writer's commit
waits for) only while it runs.
"""

from __future__ import annotations

import bisect
import math
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homewatch.history import (
    AlertRecord,
    Bucket,
    DeviceReport,
    Interval,
    Now,
    PersonNow,
    PiNow,
    PresenceState,
    schema,
)
from homewatch.history.fusion import Event, PiView, Span, Views, extend, timeline


class SqliteHistoryReader:
    """The read-only side (:class:`~homewatch.history.HistoryReader`). Each call is one
    short read transaction; safe to share between threads (calls take turns)."""

    def __init__(self, path: Path | str, *,
                 busy_timeout: float = schema.READER_BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self._db = schema.open_reader(self.path, busy_timeout=busy_timeout)
        self._lock = threading.Lock()
        self._timelines: dict[int, _Timeline] = {}  # person id -> spans so far

    def __enter__(self) -> SqliteHistoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction (a consistent view), SQLite errors as StorageError."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    schema.check_version(self._db, self.path)
                    yield self._db
                finally:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise schema.storage_error(self.path, exc) from None

    def now(self, at: float) -> Now:
        """Each person and each Pi as last recorded; ``at`` is the caller's now."""
        with self._read() as db:
            names = _names(db, "device")
            pis = tuple(_pi_now(row) for row in db.execute(
                "SELECT name, online, status_since, temp_centi, temp_at, last_seen, "
                "scanner_state, scanner_detail, last_sim, room FROM device ORDER BY name"))
            people = tuple(_person_now(db, person, name, names, room, room_since)
                           for person, name, room, room_since in db.execute(
                               "SELECT id, name, room, room_since FROM person "
                               "ORDER BY name").fetchall())
        return Now(at=at, people=people, pis=pis)

    def temperature(self, device: str, start: float, end: float, *,
                    max_points: int = 400) -> list[Bucket]:
        """Buckets over [start, end) (see :func:`resolution`); a stored bucket or raw
        point is in the range when it starts in it."""
        if not end > start or max_points < 1:
            return []
        with self._read() as db:
            row = db.execute("SELECT id FROM device WHERE name = ?", (device,)).fetchone()
            if row is None:
                return []
            kept = db.execute("SELECT value FROM meta WHERE key = 'kept_from'").fetchone()
            step, width = resolution(start, end, max_points,
                                     kept_from=None if kept is None else float(kept[0]))
            if step == 0:
                rows = db.execute(
                    "SELECT ts / ?1, min(centi), max(centi), sum(centi), count(*), max(sim) "
                    "FROM temperature WHERE device_id = ?2 AND ts >= ?3 AND ts < ?4 "
                    "GROUP BY 1 ORDER BY 1",
                    (width * 1000, row[0], math.ceil(start * 1000), math.ceil(end * 1000)))
            else:
                rows = db.execute(
                    "SELECT start / ?1, min(lo), max(hi), sum(total), sum(n), max(sim) "
                    "FROM rollup WHERE device_id = ?2 AND step = ?3 AND start >= ?4 AND "
                    "start < ?5 GROUP BY 1 ORDER BY 1",
                    (width, row[0], step, math.ceil(start), math.ceil(end)))
            return [Bucket(start=float(b * width), end=float((b + 1) * width), min=lo / 100,
                           max=hi / 100, mean=total / n / 100, count=n,
                           simulated=schema.SIM_NAMES[sim])
                    for b, lo, hi, total, n, sim in rows]

    def presence(self, start: float, end: float) -> Mapping[str, list[Interval]]:
        """Per known person, their fused stretches over [start, end), clipped to it;
        ``end`` is None for a stretch that lasts (nothing recorded after it)."""
        with self._read() as db:
            names = _names(db, "device")
            return {name: _intervals(db, person, self._spans(db, person), start, end, names)
                    for person, name in db.execute(
                        "SELECT id, name FROM person ORDER BY name").fetchall()}

    def people(self) -> list[str]:
        """The known people's names."""
        with self._read() as db:
            return [name for (name,) in db.execute("SELECT name FROM person ORDER BY name")]

    def warm(self, person: str) -> int:
        """Work out ``person``'s whole timeline now (or bring it up to date), as
        :meth:`presence` would, and keep it: the dashboard does this for each person in
        the background as it starts, so that its first presence request adds only what
        is new. Returns :attr:`timelines`."""
        with self._read() as db:
            row = db.execute("SELECT id FROM person WHERE name = ?", (person,)).fetchone()
            if row is not None:
                self._spans(db, row[0])
        return self.timelines

    @property
    def timelines(self) -> int:
        """How many people's timelines the reader keeps between calls."""
        return len(self._timelines)

    def _spans(self, db: sqlite3.Connection, person: int) -> list[Span]:
        """The person's whole timeline, kept between calls and extended with what was
        recorded since (a dashboard asks for the same timelines again and again; a year
        is tens of thousands of changes). Worked out again from the start when something
        was recorded at or before the last change it took in (a late report), or a new
        Pi reports the person."""
        pis = tuple(_pis_of(db, person))
        cached = self._timelines.get(person)
        if cached is not None and cached.pis == pis and \
                _changes_until(db, person, cached.upto) == cached.seen:
            new = _events(db, person, cached.upto, math.inf)
        else:
            cached = self._timelines[person] = _Timeline(
                [], Views({dev: PiView() for dev in pis}), -math.inf, 0, pis)
            new = _events(db, person, -math.inf, math.inf)
        if new:
            extend(cached.spans, cached.views, new)
            cached.upto = max(e.ts for e in new)
            cached.seen += len(new)
        return cached.spans

    def devices(self) -> list[DeviceReport]:
        with self._read() as db:
            rejected: dict[int, dict[str, int]] = {}
            for dev, reason, count in db.execute(
                    "SELECT device_id, reason, sum(count) FROM rejection GROUP BY 1, 2"):
                rejected.setdefault(dev, {})[reason] = count
            return [DeviceReport(name=name, first_seen=first, last_seen=last,
                                 key_updated_at=key, online=None if online is None
                                 else bool(online), readings=readings,
                                 rejected=rejected.get(dev, {}))
                    for dev, name, first, last, key, online, readings in db.execute(
                        "SELECT id, name, first_seen, last_seen, key_updated_at, online, "
                        "readings FROM device ORDER BY name")]

    def rejections(self) -> Mapping[tuple[str | None, str], int]:
        """Rejected messages since the history began, per (device, reason)."""
        with self._read() as db:
            names: dict[int, str | None] = {**_names(db, "device"),
                                            schema.UNKNOWN_DEVICE: None}
            return {(names.get(dev), reason): count for dev, reason, count in db.execute(
                "SELECT device_id, reason, sum(count) FROM rejection GROUP BY 1, 2")}

    def alerts(self, limit: int = 20) -> list[AlertRecord]:
        """The latest ``limit`` alerts, newest first."""
        with self._read() as db:
            return [AlertRecord(id=i, at=at, rule=rule, kind=kind, message=message,
                                subject=subject, delivery=delivery, delivered_at=delivered,
                                simulated=schema.SIM_NAMES.get(sim))
                    for i, at, rule, kind, message, subject, sim, delivery, delivered
                    in db.execute("SELECT id, at, rule, kind, message, subject, sim, "
                                  "delivery, delivered_at FROM alert ORDER BY at DESC, "
                                  "id DESC LIMIT ?", (max(0, min(limit, 1000)),))]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_reader(path: Path | str) -> SqliteHistoryReader:
    """The dashboard's read-only view of the history database at ``path``."""
    return SqliteHistoryReader(path)


def resolution(start: float, end: float, max_points: int, *,
               kept_from: float | None = None) -> tuple[int, int]:
    """``(step, width)`` for a chart of [start, end): ``step`` is the stored resolution
    (0: raw points), the coarsest whose buckets number at least ``max_points / 2`` over
    the range; ``width`` (seconds) merges whole stored buckets so that at most about
    ``max_points`` remain. Raw points and 5-minute rollups older than ``kept_from`` are
    gone (retention), so such a range uses hourly rollups at least."""
    span = end - start
    step = next((s for s in reversed(schema.ROLLUP_STEPS) if span / s >= max_points / 2), 0)
    if kept_from is not None and start < kept_from and step < schema.ROLLUPS_KEPT_FOREVER:
        step = schema.ROLLUPS_KEPT_FOREVER
    if step == 0:
        return 0, max(1, math.ceil(span / max_points))
    return step, step * max(1, math.ceil(span / step / max_points))


def _names(db: sqlite3.Connection, table: str) -> dict[int, str]:
    return {i: n for i, n in db.execute(f"SELECT id, name FROM {table}")}  # noqa: S608


def _pi_now(row: Any) -> PiNow:
    name, online, since, centi, temp_at, last, scanner, detail, sim, room = row
    return PiNow(name=name, online=None if online is None else bool(online),
                 status_since=since, temperature=None if centi is None else centi / 100,
                 temperature_at=temp_at, last_reading_at=last, scanner_state=scanner,
                 scanner_detail=detail, simulated=schema.SIM_NAMES.get(sim or 0),
                 room=room)


NOW_LOOKBACK = 86400.0  # now(): the first window searched for when the state began


def _person_now(db: sqlite3.Connection, person: int, name: str,
                names: Mapping[int, str], room: str | None = None,
                room_since: float | None = None) -> PersonNow:
    """The person's state after everything recorded (a report taken a little ahead of
    the caller's clock counts); ``since`` is when the current span began, found by
    widening a window back from the latest change until the span starts inside it.
    ``room``: the latest the subscriber recorded, shown only while they are home."""
    rows = db.execute("SELECT last_seen, sim FROM presence_state WHERE person_id = ?",
                      (person,)).fetchall()
    last_seen = max((s for s, _ in rows if s is not None), default=None)
    first, latest = db.execute("SELECT min(ts), max(ts) FROM presence_change WHERE "
                               "person_id = ?", (person,)).fetchone()
    state: PresenceState = "away"
    since, now = None, None
    if latest is not None:
        latest = max(latest, _latest_status(db, person) or latest)
        width = NOW_LOOKBACK
        while True:
            begin = latest - width
            views = _views_at(db, person, begin)
            spans = timeline(begin, views, _events(db, person, begin, math.inf))
            if begin < first or (spans and (len(spans) > 1 or spans[0].ts > begin)):
                break
            width *= 4
        now = views.fused()
        if spans and now is not None:
            state, since = now.state, spans[-1].ts

    def pis(ids: set[int]) -> tuple[str, ...]:
        return tuple(sorted(names[d] for d in ids))
    return PersonNow(name=name, state=state, home=state == "home", since=since,
                     seen_by=pis(now.seen_by) if now else (), last_seen=last_seen,
                     unconfirmed_by=pis(now.unconfirmed_by) if now else (),
                     simulated=schema.SIM_NAMES[max((s for _, s in rows), default=0)],
                     room=room if state == "home" else None,
                     room_since=room_since if state == "home" and room else None)


def _pis_of(db: sqlite3.Connection, person: int) -> list[int]:
    """The Pis that ever reported ``person``."""
    return [d for (d,) in db.execute("SELECT DISTINCT device_id FROM presence_state WHERE "
                                     "person_id = ?", (person,))]


def _latest_status(db: sqlite3.Connection, person: int) -> float | None:
    row = db.execute("SELECT max(ts) FROM availability_change WHERE device_id IN (SELECT "
                     "device_id FROM presence_state WHERE person_id = ?)", (person,)).fetchone()
    return None if row[0] is None else float(row[0])


def _views_at(db: sqlite3.Connection, person: int, at: float) -> Views:
    """Each Pi's view of ``person`` just after ``at`` (what was recorded at or before)."""
    views: dict[int, PiView] = {}
    for dev in _pis_of(db, person):
        report = db.execute(
            "SELECT ts, home, sim FROM presence_change WHERE person_id = ? AND device_id = ? "
            "AND ts <= ? ORDER BY ts DESC LIMIT 1", (person, dev, at)).fetchone()
        status = db.execute(
            "SELECT online FROM availability_change WHERE device_id = ? AND ts <= ? "
            "ORDER BY ts DESC LIMIT 1", (dev, at)).fetchone()
        off = db.execute(
            "SELECT max(ts) FROM availability_change WHERE device_id = ? AND online = 0 "
            "AND ts <= ?", (dev, at)).fetchone()[0]
        view = PiView(online=None if status is None else bool(status[0]))
        if report is not None:
            view.home, view.sim = bool(report[1]), report[2]
            view.fresh = off is None or report[0] >= off
        views[dev] = view
    return Views(views)


def _events(db: sqlite3.Connection, person: int, start: float, end: float) -> list[Event]:
    """The reports of ``person`` and the status changes of the Pis that report them, in
    (start, end)."""
    events = [Event(ts, dev, "report", bool(home), sim) for dev, ts, home, sim in db.execute(
        "SELECT device_id, ts, home, sim FROM presence_change WHERE person_id = ? AND "
        "ts > ? AND ts < ?", (person, start, end))]
    events += [Event(ts, dev, "status", bool(online)) for dev, ts, online in db.execute(
        "SELECT device_id, ts, online FROM availability_change WHERE device_id IN (SELECT "
        "device_id FROM presence_state WHERE person_id = ?) AND ts > ? AND ts < ?",
        (person, start, end))]
    return events


def _changes_until(db: sqlite3.Connection, person: int, upto: float) -> int:
    """How many of the person's reports and their Pis' status changes are at or before
    ``upto``."""
    row = db.execute(
        "SELECT (SELECT count(*) FROM presence_change WHERE person_id = ?1 AND ts <= ?2) + "
        "(SELECT count(*) FROM availability_change WHERE device_id IN (SELECT device_id "
        "FROM presence_state WHERE person_id = ?1) AND ts <= ?2)", (person, upto)).fetchone()
    return int(row[0])


@dataclass
class _Timeline:
    """A person's spans from the start of the history up to ``upto``, the Pis' views
    after it, and how many changes went into it."""

    spans: list[Span]
    views: Views
    upto: float
    seen: int
    pis: tuple[int, ...]


def _intervals(db: sqlite3.Connection, person: int, spans: list[Span], start: float,
               end: float, names: Mapping[int, str]) -> list[Interval]:
    """A person's spans over [start, end) (see :mod:`homewatch.history.fusion`): the one
    in force at ``start`` (from ``start``) and those that begin in the range; the last
    one's end is None when nothing is recorded after it."""
    first = max(bisect.bisect_right([s.ts for s in spans], start) - 1, 0)
    chosen = [s for s in spans[first:] if s.ts < end]
    after = db.execute(
        "SELECT 1 FROM presence_change WHERE person_id = ?1 AND ts >= ?2 UNION ALL "
        "SELECT 1 FROM availability_change WHERE device_id IN (SELECT device_id FROM "
        "presence_state WHERE person_id = ?1) AND ts >= ?2 LIMIT 1",
        (person, end)).fetchone()
    out = []
    for i, span in enumerate(chosen):
        if i + 1 < len(chosen):
            stop: float | None = chosen[i + 1].ts
        elif first + i + 1 < len(spans):
            stop = spans[first + i + 1].ts if spans[first + i + 1].ts < end else end
        else:
            stop = None if after is None else end
        out.append(Interval(start=max(span.ts, start), end=stop, state=span.state,
                            seen_by=tuple(sorted(names[d] for d in span.seen_by)),
                            unconfirmed_by=tuple(sorted(names[d] for d in span.unconfirmed_by)),
                            simulated=schema.SIM_NAMES[span.sim]))
    return out
