"""The history store in one SQLite file: the subscriber writes it, the dashboard reads it.

:class:`SqliteHistory` is the writer (:class:`~homewatch.history.HistoryWriter`), one per
database; :class:`SqliteHistoryReader` (or :func:`open_reader`, both from
:mod:`homewatch.history.sqlite_reader`, importable from here) the read-only side
(:class:`~homewatch.history.HistoryReader`), as many as wanted. The schema and how each
side opens the file are in :mod:`homewatch.history.schema`.

Writing
    Temperature readings go into the raw table (filed under the time they were taken), all
    of a batch in one statement at its commit, and into 5-minute, hourly and daily rollups
    (min, max, sum, count), merged into the buckets once per commit; a late reading lands in
    its own buckets the same way. A repeated reading (same Pi, same millisecond) is kept
    once. Presence, availability and scanner status are kept as changes plus the latest
    state. Nothing is durable before :meth:`SqliteHistory.commit`; any SQLite error (full
    disk, read-only file, locked for longer than the busy timeout, damaged file) is a
    :class:`~homewatch.errors.StorageError` naming the file, after which the open
    transaction is rolled back, so the caller acknowledges nothing that was not recorded.

Retention
    Raw points and 5-minute rollups older than ``retention_days`` are deleted by
    :meth:`SqliteHistory.commit`, at most once an hour and at most ``RETENTION_BATCH``
    rows per Pi and table at a time (a backlog is worked off every ``RETENTION_CATCHUP``
    seconds), so no commit stalls. Hourly and daily rollups and the change tables are
    kept: they are a few MB a year.

Concurrency and a read-only mount: rollback journal, not WAL (decided by experiment)
    In Docker Compose the subscriber writes the database on a named volume and the
    dashboard mounts that volume read-only (``:ro``, enforced by the kernel). Tried on
    this project's hosts (SQLite 3.40.1 on the host and in the Python image; the reader
    in a ``docker run -v VOLUME:/h:ro`` container and in an ``unshare -m`` read-only bind
    mount), with the writer committing on the read-write side:

    * WAL: a reader on the read-only mount works, and sees every commit, while the
      writer has the database open (it maps the writer's ``-shm`` read-only). But a
      writer that closes cleanly, with no reader connected, deletes ``-wal`` and
      ``-shm``, and from then on a read-only reader cannot open the database at all
      ("unable to open database file") until the writer runs again: the dashboard would
      fail whenever the subscriber is stopped or restarted.
    * Rollback journal (``journal_mode=DELETE``): a reader on the read-only mount opens
      and reads the database whether or not the writer runs, and sees each commit at
      once (30 of 30 commits seen by a long-lived reader right after each; this
      module's reader in the Python image with the directory mounted ``:ro``, 10 of 10,
      and still after the writer closed). Readers hold
      a shared lock only while a query runs; the writer's commit waits for it (busy
      timeout ``WRITER_BUSY_TIMEOUT``), and a reader waits out the writer's commit
      (``READER_BUSY_TIMEOUT``). A writer killed (``kill -9``) inside a transaction
      leaves a journal whose header is still zero, which readers ignore; only a kill in
      the middle of writing a commit leaves a "hot" journal, which a read-only reader
      cannot roll back: it then gets a StorageError saying so until the subscriber
      starts again (its first open rolls it back).

    So: rollback journal, ``synchronous=FULL``; the writer takes its write lock at the
    first write of a batch (``BEGIN IMMEDIATE``) and keeps batches short; readers open
    ``file:...?mode=ro`` with ``PRAGMA query_only`` and run each call in one short read
    transaction. The file is 0600 and its directory 0700: the dashboard runs as the
    subscriber's user. ``tests/test_history.py`` proves it with a reader on a read-only
    bind mount while the writer commits.
"""

from __future__ import annotations

import functools
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from homewatch.errors import ConfigError
from homewatch.history import (
    ALERT_DELIVERIES,
    DEFAULT_RETENTION_DAYS,
    AlertDelivery,
    Sighting,
    Simulated,
    schema,
)
from homewatch.history.fusion import Change, decode_ids, encode_ids, sweep
from homewatch.history.sqlite_reader import SqliteHistoryReader, open_reader, resolution

__all__ = ["SqliteHistory", "SqliteHistoryReader", "open_reader", "resolution"]

log = logging.getLogger(__name__)

RETENTION_EVERY = 3600.0  # seconds between retention passes
RETENTION_CATCHUP = 10.0  # ... while a backlog is worked off
RETENTION_BATCH = 10_000  # rows per Pi and table deleted in one pass at most

SAME_MS_SLOTS = 16  # different readings of one Pi filed within one millisecond
# What one Pi may put in the history (its readings are authenticated, but a Pi can be
# buggy or stolen): a call beyond these raises ValueError before it writes anything.
TIME_RANGE = (0.0, 4_102_444_800.0)  # 1970 .. 2100, Unix seconds
CELSIUS_RANGE = (-100.0, 200.0)
MAX_NAME = 64  # characters of a Pi's or a person's name
MAX_SIGHTINGS = 64  # entries in one presence report
MAX_PERSONS = 256  # people the history keeps; new names beyond it are not recorded
MAX_DETAIL = 256  # characters of a scanner status detail (longer ones are cut)
MAX_MESSAGE = 512  # characters of an alert's message


def _check_time(what: str, at: float) -> None:
    if not (isinstance(at, int | float) and TIME_RANGE[0] <= at <= TIME_RANGE[1]):
        raise ValueError(f"{what} {at!r} is not a time between 1970 and 2100")


def _check_name(what: str, name: str) -> None:
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME):
        raise ValueError(f"{what} name must be 1 to {MAX_NAME} characters")
INSERT_TEMPERATURE = ("INSERT INTO temperature (device_id, ts, centi, sim) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT DO NOTHING")
UPSERT_ROLLUP = (
    "INSERT INTO rollup (device_id, step, start, lo, hi, total, n, sim) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, step, start) DO UPDATE SET "
    "lo = min(lo, excluded.lo), hi = max(hi, excluded.hi), total = total + excluded.total, "
    "n = n + excluded.n, sim = max(sim, excluded.sim)")

P = ParamSpec("P")
T = TypeVar("T")
W = TypeVar("W", bound="SqliteHistory")


def _storage(method: Callable[Concatenate[W, P], T]) -> Callable[Concatenate[W, P], T]:
    """SQLite errors of a writer method become StorageError; the batch is rolled back."""

    @functools.wraps(method)
    def wrapper(self: W, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            self._abort()
            raise schema.storage_error(self.path, exc) from None

    return wrapper


@dataclass
class _Pair:
    """A (Pi, person)'s latest report: state, since when, report time."""

    home: bool
    since: float
    at: float
    last_seen: float | None
    sim: int


@dataclass
class _Delta:
    """What a batch changes in a Pi's row, written once per commit."""

    readings: int = 0
    first_seen: float = math.inf
    last_seen: float = -math.inf
    last_sim: int = 0  # the mark of the last reading received (at last_sim_at)
    last_sim_at: float = -math.inf
    temp: tuple[float, int, int] | None = None  # the newest by taken time: at, centi, sim


class SqliteHistory:
    """The writer (:class:`~homewatch.history.HistoryWriter`): one per database file.

    ``clock`` gives the receive times (a Pi's first/last seen, retention). Callers pass
    only devices they know (a key ring, a verified reading); :meth:`rejected` never
    makes a device from a name. Use from one thread at a time."""

    def __init__(self, path: Path | str, retention_days: float = DEFAULT_RETENTION_DAYS, *,
                 clock: Callable[[], float] = time.time,
                 busy_timeout: float = schema.WRITER_BUSY_TIMEOUT,
                 retention: bool = True) -> None:
        if not retention_days > 0:
            raise ConfigError(f"history retention must be a positive number of days, "
                              f"not {retention_days}")
        self.path = Path(path)
        self.retention_days = retention_days
        self._clock = clock
        self._db = schema.open_writer(self.path, busy_timeout=busy_timeout)
        # retention=False: a second writer of the same file (the alerts') deletes nothing
        self._next_retention = 0.0 if retention else math.inf
        self._persons_refused = 0
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        """Forget every cache (after a rollback they may name rows that are gone)."""
        self._devices: dict[str, int] = {}
        self._rooms: dict[str, str] = {}  # device -> the room last written for it
        self._persons: dict[str, int] = {}
        self._pairs: dict[tuple[int, int], _Pair] | None = None
        self._dirty_pairs: set[tuple[int, int]] = set()
        self._rollups: dict[tuple[int, int, int], list[int]] = {}
        self._deltas: dict[int, _Delta] = {}
        # the batch's temperature readings: Pi id, ms, centi, sim, received, taken at
        self._points: list[tuple[int, int, int, int, float, float]] = []

    def _abort(self) -> None:
        """Roll the open batch back after a failure (best effort) and drop the caches."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("history rollback after a failure also failed: %s", exc)
        self._reset()

    def __enter__(self) -> SqliteHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer's calls -------------------------------------------------------

    @_storage
    def temperature(self, device: str, at: float, celsius: float, *,
                    simulated: Simulated = None) -> None:
        """A temperature reading (stored to 0.01 °C) of ``device``, taken at ``at``.
        ValueError (nothing written) for a time or value out of range."""
        _check_time("temperature taken at", at)
        _check_name("Pi", device)
        if not (isinstance(celsius, int | float) and
                CELSIUS_RANGE[0] <= celsius <= CELSIUS_RANGE[1]):
            raise ValueError(f"temperature {celsius!r} is outside {CELSIUS_RANGE} °C")
        self._points.append((self._device(device), round(at * 1000), round(celsius * 100),
                             schema.SIM_CODES[simulated], self._clock(), at))

    def _write_points(self) -> None:
        """The batch's raw points, and what they add to the rollups and the Pis' rows.
        Usually none of them is recorded yet: one ``executemany``. Otherwise (a copy
        delivered again after a crash, two readings in one millisecond) that is undone
        and each point goes in by itself (:meth:`_insert_point`)."""
        points, self._points = self._points, []
        if not points:
            return
        rows = [(dev, ts, centi, sim) for dev, ts, centi, sim, _, _ in points]
        kept = points
        if len({(dev, ts) for dev, ts, _, _ in rows}) == len(rows):
            self._db.execute("SAVEPOINT points")
            before = self._db.total_changes
            self._db.executemany(INSERT_TEMPERATURE, rows)
            if self._db.total_changes - before != len(rows):
                self._db.execute("ROLLBACK TO points")
                kept = []
            self._db.execute("RELEASE points")
        else:
            kept = []
        if not kept:
            kept = [p for p in points if self._insert_point(*p[:4])]
        rollups = self._rollups
        for dev, _, centi, sim, received, at in kept:
            for step in schema.ROLLUP_STEPS:
                key = (dev, step, int(at // step) * step)
                acc = rollups.get(key)
                if acc is None:
                    rollups[key] = [centi, centi, centi, 1, sim]
                else:
                    acc[0], acc[1] = min(acc[0], centi), max(acc[1], centi)
                    acc[2], acc[3], acc[4] = acc[2] + centi, acc[3] + 1, max(acc[4], sim)
            delta = self._touch(dev, sim, received)
            if delta.temp is None or at >= delta.temp[0]:
                delta.temp = (at, centi, sim)

    def _insert_point(self, dev: int, ts: int, centi: int, sim: int) -> bool:
        """Insert a raw point; False when this very reading is already there (a copy
        delivered again after a crash). A different reading taken in the same
        millisecond is kept too, a millisecond later (up to SAME_MS_SLOTS of them: a Pi
        that sends more is misbehaving, and is not allowed to stop the subscriber)."""
        for _ in range(SAME_MS_SLOTS):
            if self._db.execute(INSERT_TEMPERATURE, (dev, ts, centi, sim)).rowcount == 1:
                return True
            row = self._db.execute("SELECT centi, sim FROM temperature WHERE device_id = ? "
                                   "AND ts = ?", (dev, ts)).fetchone()
            if row is not None and tuple(row) == (centi, sim):
                log.debug("history: a reading of Pi id %d taken at %d ms is already recorded",
                          dev, ts)
                return False
            ts += 1
        log.warning("history: more than %d different readings taken within one millisecond "
                    "from one Pi (id %d): this one is not kept", SAME_MS_SLOTS, dev)
        return False

    @_storage
    def presence(self, device: str, at: float, sightings: Sequence[Sighting], *,
                 simulated: Simulated = None) -> None:
        """A Pi's full presence report: a person it no longer lists is away there. A
        report older than the last one for a (Pi, person) is superseded and ignored.
        ValueError (nothing written) for more than MAX_SIGHTINGS entries, a name longer
        than MAX_NAME or a time out of range; a new person beyond MAX_PERSONS is left
        out (logged)."""
        _check_time("presence report at", at)
        _check_name("Pi", device)
        if len(sightings) > MAX_SIGHTINGS:
            raise ValueError(f"a presence report lists at most {MAX_SIGHTINGS} devices")
        for s in sightings:
            _check_name("person", s.name)
            if s.last_seen is not None:
                _check_time("last seen", s.last_seen)
        dev, sim = self._device(device), schema.SIM_CODES[simulated]
        self._touch(dev, sim)
        reported: dict[int, tuple[bool, float | None]] = {}
        for s in sightings:  # one person, several entries: home if any says so
            person = self._person(s.name)
            if person is None:
                continue
            home, seen = reported.get(person, (False, None))
            last = s.last_seen if seen is None else max(seen, s.last_seen or seen)
            reported[person] = (home or s.state == "home", last)
        pairs = self._load_pairs()
        for (d, person), pair in list(pairs.items()):
            if d == dev and person not in reported and pair.home:
                reported[person] = (False, None)
        for person, (home, last_seen) in reported.items():
            self._report(dev, person, at, home, last_seen, sim)

    @_storage
    def scanner(self, device: str, at: float, state: str, detail: str = "", *,
                simulated: Simulated = None) -> None:
        """A Pi's scanner status; a change of state or detail is kept as a change (a
        detail is cut to MAX_DETAIL characters)."""
        _check_time("scanner status at", at)
        _check_name("Pi", device)
        if not (isinstance(state, str) and 0 < len(state) <= MAX_NAME):
            raise ValueError(f"a scanner state must be 1 to {MAX_NAME} characters")
        detail = detail[:MAX_DETAIL]
        dev, sim = self._device(device), schema.SIM_CODES[simulated]
        self._touch(dev, sim)
        old_state, old_detail, old_at = self._db.execute(
            "SELECT scanner_state, scanner_detail, scanner_at FROM device WHERE id = ?",
            (dev,)).fetchone()
        if old_at is not None and at < old_at:
            return
        if (state, detail) != (old_state, old_detail):
            self._db.execute("INSERT OR REPLACE INTO scanner_change VALUES (?, ?, ?, ?, ?)",
                             (dev, at, state, detail, sim))
            self._db.execute("UPDATE device SET scanner_state = ?, scanner_detail = ?, "
                             "scanner_since = ? WHERE id = ?", (state, detail, at, dev))
        self._db.execute("UPDATE device SET scanner_at = ? WHERE id = ?", (at, dev))

    @_storage
    def availability(self, device: str, at: float, online: bool) -> None:
        """The broker-kept online/offline status of a Pi, kept as changes."""
        dev = self._device(device)
        old, old_at = self._db.execute("SELECT online, status_at FROM device WHERE id = ?",
                                       (dev,)).fetchone()
        if old_at is not None and at < old_at:
            return
        if old is None or bool(old) != online:
            self._db.execute("INSERT OR REPLACE INTO availability_change VALUES (?, ?, ?)",
                             (dev, at, int(online)))
            self._db.execute("UPDATE device SET online = ?, status_since = ? WHERE id = ?",
                             (int(online), at, dev))
        self._db.execute("UPDATE device SET status_at = ? WHERE id = ?", (at, dev))

    @_storage
    def key_rings(self, devices: Collection[str], at: float) -> None:
        """The Pis that have a key ring now: every other Pi this store knows was removed
        (no reading of it can be accepted any more) and is recorded offline at ``at``,
        unless it is already: it no longer vouches for anyone."""
        _check_time("key rings at", at)
        present = set(devices)
        known = self._db.execute("SELECT name FROM device WHERE online IS NOT 0").fetchall()
        for (name,) in known:
            if name not in present:
                log.info("history: %s has no key ring any more (removed): recorded offline",
                         name)
                self.availability(name, at, False)

    @_storage
    def rejected(self, device: str | None, reason: str, at: float) -> None:
        """A rejected message, counted per UTC day, device and reason. A name the store
        does not know (no reading, status or key recorded) counts as unknown (None)."""
        self._begin()
        dev = self._known_device(device) if device is not None else None
        self._db.execute(
            "INSERT INTO rejection VALUES (?, ?, ?, 1) ON CONFLICT DO UPDATE SET "
            "count = count + 1",
            (int(at // 86400), schema.UNKNOWN_DEVICE if dev is None else dev, reason[:64]))

    @_storage
    def key_updated(self, device: str, at: float) -> None:
        """When ``device``'s key ring was last written."""
        self._db.execute("UPDATE device SET key_updated_at = ? WHERE id = ?",
                         (at, self._device(device)))

    @_storage
    def pi_room(self, device: str, at: float, room: str) -> None:
        """The room Pi ``device`` says it stands in (kept when it changes). ValueError
        (nothing written) for a room name that is not 1 to MAX_NAME characters."""
        _check_time("room at", at)
        _check_name("Pi", device)
        _check_name("room", room)
        if self._rooms.get(device) == room:
            return  # (every reading names its room: most name the same one again)
        dev = self._device(device)
        self._db.execute("UPDATE device SET room = ? WHERE id = ? AND room IS NOT ?",
                         (room, dev, room))
        self._rooms[device] = room

    @_storage
    def person_room(self, name: str, at: float, room: str | None,
                    device: str | None = None) -> None:
        """Person ``name``'s room from ``at`` on (None: not home), as a change; one older
        than the latest recorded, or of a person no presence report has named (kept),
        is ignored. ValueError (nothing written) for a name or room that is not 1 to
        MAX_NAME characters or a time out of range."""
        _check_time("room change at", at)
        _check_name("person", name)
        if room is not None:
            _check_name("room", room)
        if device is not None:
            _check_name("Pi", device)
        self._begin()
        person = self._persons.get(name)
        if person is None:
            row = self._db.execute("SELECT id FROM person WHERE name = ?", (name,)).fetchone()
            if row is None:
                return  # people come from presence reports, within their bounds
            person = self._persons[name] = int(row[0])
        old_room, old_since, old_at = self._db.execute(
            "SELECT room, room_since, room_at FROM person WHERE id = ?", (person,)).fetchone()
        if old_at is not None and at < old_at:
            return
        dev = self._device(device) if device is not None else None
        self._db.execute("INSERT OR REPLACE INTO room_change VALUES (?, ?, ?, ?)",
                         (person, at, room, dev))
        since = old_since if room == old_room and old_at is not None else at
        self._db.execute("UPDATE person SET room = ?, room_since = ?, room_at = ? "
                         "WHERE id = ?", (room, since, at, person))

    @_storage
    def alert(self, rule: str, kind: str, message: str, at: float, subject: str = "", *,
              delivery: AlertDelivery = "pending", simulated: Simulated = None) -> int:
        """An alert raised; its id. ValueError (nothing written) for a time out of
        range, an unknown delivery state, or a rule, kind, subject or message that is
        empty or longer than MAX_NAME (the message: MAX_MESSAGE) characters."""
        _check_time("alert at", at)
        for what, text, limit in (("rule", rule, MAX_NAME), ("kind", kind, MAX_NAME),
                                  ("message", message, MAX_MESSAGE)):
            if not (isinstance(text, str) and 0 < len(text) <= limit):
                raise ValueError(f"an alert's {what} must be 1 to {limit} characters")
        if not (isinstance(subject, str) and len(subject) <= MAX_NAME):
            raise ValueError(f"an alert's subject must be at most {MAX_NAME} characters")
        if delivery not in ALERT_DELIVERIES:
            raise ValueError(f"an alert's delivery must be one of {ALERT_DELIVERIES}")
        self._begin()
        cur = self._db.execute(
            "INSERT INTO alert (at, rule, kind, message, subject, sim, delivery) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, rule, kind, message, subject, schema.SIM_CODES[simulated], delivery))
        return int(cur.lastrowid or 0)

    @_storage
    def alert_delivery(self, alert_id: int, delivery: AlertDelivery, at: float) -> None:
        """What became of an alert's delivery (``delivered_at`` = ``at`` when delivered)."""
        _check_time("alert delivery at", at)
        if delivery not in ALERT_DELIVERIES:
            raise ValueError(f"an alert's delivery must be one of {ALERT_DELIVERIES}")
        self._begin()
        self._db.execute("UPDATE alert SET delivery = ?, delivered_at = ? WHERE id = ?",
                         (delivery, at if delivery == "delivered" else None, alert_id))

    @_storage
    def commit(self) -> None:
        """Write the batch's rollups and states, delete what retention says is due, and
        make it all durable in one commit."""
        self._write_points()  # (before retention: it may delete some of them)
        if self._clock() >= self._next_retention:
            self._begin()
            self._retention()
        if not self._db.in_transaction:
            return
        self._flush()
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close (again: nothing); what was not committed is rolled back."""
        if self._closed:
            return
        if self._db.in_transaction:
            log.info("history %s: closing with an uncommitted batch; it is rolled back",
                     self.path)
        self._abort()
        self._db.close()
        self._closed = True

    # -- helpers ------------------------------------------------------------------

    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")

    def _device(self, name: str) -> int:
        """The id of Pi ``name``, made on first sight; opens the batch's transaction."""
        self._begin()
        dev = self._known_device(name)
        if dev is None:
            cur = self._db.execute("INSERT INTO device (name) VALUES (?)", (name,))
            dev = self._devices[name] = int(cur.lastrowid or 0)
        return dev

    def _known_device(self, name: str) -> int | None:
        dev = self._devices.get(name)
        if dev is None:
            row = self._db.execute("SELECT id FROM device WHERE name = ?", (name,)).fetchone()
            if row is not None:
                dev = self._devices[name] = int(row[0])
        return dev

    def _person(self, name: str) -> int | None:
        """The id of person ``name``, made on first sight; None (and a log line) for a
        new name once MAX_PERSONS are known."""
        person = self._persons.get(name)
        if person is None:
            row = self._db.execute("SELECT id FROM person WHERE name = ?", (name,)).fetchone()
            if row is None:
                known = self._db.execute("SELECT count(*) FROM person").fetchone()[0]
                if known >= MAX_PERSONS:
                    self._persons_refused += 1
                    if self._persons_refused in (1, 10, 100, 1000, 10000):
                        log.warning("history: %d people are known already; new names are "
                                    "not recorded (%d so far)", MAX_PERSONS,
                                    self._persons_refused)
                    return None
                row = (self._db.execute("INSERT INTO person (name) VALUES (?)",
                                        (name,)).lastrowid,)
            person = self._persons[name] = int(row[0])
        return person

    def _touch(self, dev: int, sim: int, now: float | None = None) -> _Delta:
        """Count a reading of ``dev`` received ``now`` (default: now)."""
        delta = self._deltas.setdefault(dev, _Delta())
        if now is None:
            now = self._clock()
        delta.readings += 1
        delta.first_seen, delta.last_seen = min(delta.first_seen, now), max(delta.last_seen,
                                                                            now)
        if now >= delta.last_sim_at:  # (temperatures are counted at the commit)
            delta.last_sim, delta.last_sim_at = sim, now
        return delta

    def _load_pairs(self) -> dict[tuple[int, int], _Pair]:
        if self._pairs is None:
            self._pairs = {(d, p): _Pair(bool(home), since, at, seen, sim)
                           for d, p, home, since, at, seen, sim in self._db.execute(
                               "SELECT device_id, person_id, home, since, at, last_seen, sim "
                               "FROM presence_state")}
        return self._pairs

    def _report(self, dev: int, person: int, at: float, home: bool,
                last_seen: float | None, sim: int) -> None:
        """One (Pi, person) entry of a report: a change is kept and fused."""
        pairs = self._load_pairs()
        old = pairs.get((dev, person))
        if old is not None and at < old.at:
            log.debug("history: an older presence report (%.3f) than the last one ignored", at)
            return
        changed = old is None or old.home != home
        since = at if old is None or changed else old.since
        if old is not None and old.last_seen is not None:
            last_seen = old.last_seen if last_seen is None else max(old.last_seen, last_seen)
        pairs[(dev, person)] = _Pair(home, since, at, last_seen, sim)
        self._dirty_pairs.add((dev, person))
        if changed or self._went_offline(dev, old.at if old else at, at):
            # (the first report since the Pi went offline is kept even when it repeats
            # the last one: from it on the Pi vouches again; the fused stretch is as it was)
            self._db.execute("INSERT OR REPLACE INTO presence_change VALUES (?, ?, ?, ?, ?)",
                             (person, dev, at, int(home), sim))
            self._fuse(person, at, sim)

    def _went_offline(self, dev: int, after: float, until: float) -> bool:
        """Whether ``dev`` went offline in (after, until]."""
        return self._db.execute(
            "SELECT 1 FROM availability_change WHERE device_id = ? AND online = 0 AND "
            "ts > ? AND ts <= ? LIMIT 1", (dev, after, until)).fetchone() is not None

    def _fuse(self, person: int, at: float, sim: int) -> None:
        """Keep ``person_change`` right after a change at ``at``: in order (nothing newer
        known for the person) one row is added or extended; a late change recomputes the
        person's stretches from the one it falls into."""
        pairs = [(d, pair) for (d, p), pair in self._load_pairs().items() if p == person]
        if max(pair.since for _, pair in pairs) > at:
            self._refuse(person, at, [d for d, _ in pairs])
            return
        home_at = {d for d, pair in pairs if pair.home}
        last = self._last_stretch(person)
        if last is not None and last[0] == at and bool(last[1]) != bool(home_at):
            # undone at the same moment (one Pi's report of it, then another's): no stretch
            self._db.execute("DELETE FROM person_change WHERE person_id = ? AND ts = ?",
                             (person, at))
            last = self._last_stretch(person)
        if last is None or bool(last[1]) != bool(home_at):
            self._db.execute("INSERT OR REPLACE INTO person_change VALUES (?, ?, ?, ?, ?)",
                             (person, at, int(bool(home_at)), encode_ids(home_at), sim))
        else:
            self._db.execute("UPDATE person_change SET seen_by = ?, sim = ? WHERE "
                             "person_id = ? AND ts = ?",
                             (encode_ids(decode_ids(last[2]) | home_at), max(last[3], sim),
                              person, last[0]))

    def _last_stretch(self, person: int) -> tuple[float, int, str, int] | None:
        row: tuple[float, int, str, int] | None = self._db.execute(
            "SELECT ts, home, seen_by, sim FROM person_change WHERE person_id = ? "
            "ORDER BY ts DESC LIMIT 1", (person,)).fetchone()
        return row

    def _refuse(self, person: int, at: float, devices: list[int]) -> None:
        """Recompute ``person``'s stretches from the one that holds ``at``."""
        row = self._db.execute("SELECT max(ts) FROM person_change WHERE person_id = ? AND "
                               "ts <= ?", (person, at)).fetchone()
        begin = at if row[0] is None else float(row[0])
        before: dict[int, bool] = {}
        changes: list[Change] = []
        for dev in devices:
            prior = self._db.execute(
                "SELECT home FROM presence_change WHERE person_id = ? AND device_id = ? AND "
                "ts < ? ORDER BY ts DESC LIMIT 1", (person, dev, begin)).fetchone()
            if prior is not None:
                before[dev] = bool(prior[0])
            changes += [Change(ts, dev, bool(home), s) for ts, home, s in self._db.execute(
                "SELECT ts, home, sim FROM presence_change WHERE person_id = ? AND "
                "device_id = ? AND ts >= ?", (person, dev, begin))]
        self._db.execute("DELETE FROM person_change WHERE person_id = ? AND ts >= ?",
                         (person, begin))
        self._db.executemany(
            "INSERT INTO person_change VALUES (?, ?, ?, ?, ?)",
            [(person, s.ts, int(s.home), encode_ids(s.seen_by), s.sim)
             for s in sweep(before, changes)])

    def _flush(self) -> None:
        """The batch's rollups, Pi rows and (Pi, person) states, written once each."""
        self._db.executemany(UPSERT_ROLLUP, [(*key, *acc) for key, acc in self._rollups.items()])
        self._db.executemany(
            "UPDATE device SET readings = readings + ?, first_seen = coalesce(first_seen, ?), "
            "last_seen = max(coalesce(last_seen, ?), ?), last_sim = ? WHERE id = ?",
            [(d.readings, d.first_seen, d.last_seen, d.last_seen, d.last_sim, dev)
             for dev, d in self._deltas.items() if d.readings])
        self._db.executemany(
            "UPDATE device SET temp_at = ?, temp_centi = ?, temp_sim = ? WHERE id = ? AND "
            "(temp_at IS NULL OR temp_at <= ?)",
            [(*d.temp, dev, d.temp[0]) for dev, d in self._deltas.items() if d.temp])
        pairs = self._load_pairs()
        states = [(d, p, pairs[d, p]) for d, p in self._dirty_pairs]
        self._db.executemany(
            "INSERT OR REPLACE INTO presence_state VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(d, p, int(s.home), s.since, s.at, s.last_seen, s.sim) for d, p, s in states])
        self._rollups.clear()
        self._deltas.clear()
        self._dirty_pairs.clear()

    def _retention(self) -> None:
        """Delete raw points and 5-minute rollups older than the retention, bounded."""
        now = self._clock()
        cutoff = int(now - self.retention_days * 86400)
        full = False
        for (dev,) in self._db.execute("SELECT id FROM device").fetchall():
            full |= self._delete_before(
                "temperature WHERE device_id = ? AND ts < ?", "ts", (dev, cutoff * 1000))
            for step in schema.ROLLUP_STEPS:
                if step < schema.ROLLUPS_KEPT_FOREVER:
                    full |= self._delete_before(
                        "rollup WHERE device_id = ? AND step = ? AND start < ?", "start",
                        (dev, step, cutoff))
        self._db.execute("INSERT INTO meta VALUES ('kept_from', ?) ON CONFLICT DO UPDATE "
                         "SET value = max(value, excluded.value)", (cutoff,))
        self._next_retention = now + (RETENTION_CATCHUP if full else RETENTION_EVERY)
        if full:
            log.info("history %s: deleting readings older than %g days, a batch at a time",
                     self.path, self.retention_days)

    def _delete_before(self, where: str, column: str, args: tuple[int, ...]) -> bool:
        """Delete the oldest rows matching ``where`` (its last ``?`` is the cutoff), at
        most RETENTION_BATCH; True when more are left."""
        row = self._db.execute(f"SELECT {column} FROM {where} ORDER BY {column} "  # noqa: S608
                               "LIMIT 1 OFFSET ?", (*args, RETENTION_BATCH)).fetchone()
        bound = args if row is None else (*args[:-1], row[0])
        self._db.execute(f"DELETE FROM {where}", bound)  # noqa: S608
        return row is not None
