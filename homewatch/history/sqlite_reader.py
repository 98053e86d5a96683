"""The read-only side of the SQLite history store (the dashboard's): see
:mod:`homewatch.history.sqlite` for why it works on a read-only mount.

Each call is one short read transaction on a ``mode=ro`` + ``query_only`` connection,
so it sees one consistent state and holds the shared lock (which the writer's commit
waits for) only while it runs.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from homewatch.history import (
    Bucket,
    DeviceReport,
    Interval,
    Now,
    PersonNow,
    PiNow,
    schema,
)
from homewatch.history.fusion import decode_ids


class SqliteHistoryReader:
    """The read-only side (:class:`~homewatch.history.HistoryReader`). Each call is one
    short read transaction; safe to share between threads (calls take turns)."""

    def __init__(self, path: Path | str, *,
                 busy_timeout: float = schema.READER_BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self._db = schema.open_reader(self.path, busy_timeout=busy_timeout)
        self._lock = threading.Lock()

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
                "scanner_state, scanner_detail, last_sim FROM device ORDER BY name"))
            people = tuple(_person_now(db, person, name, names)
                           for person, name in db.execute(
                               "SELECT id, name FROM person ORDER BY name").fetchall())
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
            return {name: _intervals(db, person, start, end, names)
                    for person, name in db.execute(
                        "SELECT id, name FROM person ORDER BY name").fetchall()}

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
    name, online, since, centi, temp_at, last, scanner, detail, sim = row
    return PiNow(name=name, online=None if online is None else bool(online),
                 status_since=since, temperature=None if centi is None else centi / 100,
                 temperature_at=temp_at, last_reading_at=last, scanner_state=scanner,
                 scanner_detail=detail, simulated=schema.SIM_NAMES.get(sim or 0))


def _person_now(db: sqlite3.Connection, person: int, name: str,
                names: Mapping[int, str]) -> PersonNow:
    rows = db.execute("SELECT device_id, home, last_seen, sim FROM presence_state WHERE "
                      "person_id = ?", (person,)).fetchall()
    since = db.execute("SELECT max(ts) FROM person_change WHERE person_id = ?",
                       (person,)).fetchone()[0]
    seen_by = tuple(sorted(names[d] for d, home, _, _ in rows if home))
    last_seen = max((s for _, _, s, _ in rows if s is not None), default=None)
    return PersonNow(name=name, home=bool(seen_by), since=since, seen_by=seen_by,
                     last_seen=last_seen,
                     simulated=schema.SIM_NAMES[max((s for *_, s in rows), default=0)])


def _intervals(db: sqlite3.Connection, person: int, start: float, end: float,
               names: Mapping[int, str]) -> list[Interval]:
    """A person's stretches over [start, end): the one in force at ``start`` and those
    that begin in the range, neighbours in the same state merged."""
    rows = db.execute(
        "SELECT ts, home, seen_by, sim FROM person_change WHERE person_id = ?1 AND "
        "ts >= coalesce((SELECT max(ts) FROM person_change WHERE person_id = ?1 AND "
        "ts <= ?2), ?2) AND ts < ?3 ORDER BY ts", (person, start, end)).fetchall()
    after = db.execute("SELECT min(ts) FROM person_change WHERE person_id = ? AND ts >= ?",
                       (person, end)).fetchone()[0]
    merged: list[list[Any]] = []  # [ts, home, seen ids, sim]
    for ts, home, seen_by, sim in rows:
        if merged and merged[-1][1] == home:
            merged[-1][2] |= decode_ids(seen_by)
            merged[-1][3] = max(merged[-1][3], sim)
        else:
            merged.append([ts, home, decode_ids(seen_by), sim])
    out = []
    for i, (ts, home, seen, sim) in enumerate(merged):
        stop = merged[i + 1][0] if i + 1 < len(merged) else after
        out.append(Interval(start=max(ts, start), end=None if stop is None else min(stop, end),
                            state="home" if home else "away",
                            seen_by=tuple(sorted(names[d] for d in seen)),
                            simulated=schema.SIM_NAMES[sim]))
    return out
