"""The publisher's durable outbox: every reading is committed here before it is sent, and
stays until the broker acknowledged it (QoS 1 PUBACK) and a redelivery window passed.

Why keep acknowledged readings a little: the broker writes what it holds to disk every
10 s, not after every message (that cost grew with every queued message). A broker
killed (``kill -9``, power cut) can forget what it acknowledged in its last 10 s, so
acknowledged readings stay here for ``REDELIVERY_WINDOW`` seconds of connected time and
are sent again after every reconnection; the subscriber drops the copies it already
showed, by sequence number.

SQLite in WAL mode with ``synchronous=FULL``: a committed reading survives ``kill -9``
and power loss. The outbox also owns the per-device sequence number, assigned in the same
transaction as the insert, so numbers are never reused and never skipped. A fresh outbox
starts numbering at the current time in milliseconds, so a device whose state was lost
(a new SD card) still continues above what the subscriber has seen.

Bounded: when ``limit`` readings wait, the oldest is dropped for each new one, with a
counted warning; never silently.

With a RAM journal in front (``publisher.journal``, on a tmpfs) only the readings the
broker did not acknowledge promptly come here; the journal is this same class with
``durable=False``.

An SQLite error after opening (a full or read-only disk, an I/O error) is a StorageError:
the publisher stops and exits non-zero; what was committed stays for the next start.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from homewatch.errors import ConfigError, StorageError
from homewatch.secrets import ensure_private_dir

log = logging.getLogger(__name__)

REDELIVERY_WINDOW = 30.0  # seconds; well above the broker's autosave_interval (10 s)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    taken_at REAL NOT NULL,
    acked_at REAL,
    sim TEXT,
    held REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


P = ParamSpec("P")
T = TypeVar("T")


def _storage(method: Callable[P, T]) -> Callable[P, T]:
    """SQLite errors of an outbox method, translated where they enter."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            outbox = args[0]
            assert isinstance(outbox, Outbox)
            raise StorageError(f"outbox {outbox.path}: {exc}") from None

    return wrapper


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str
    data: Any
    taken_at: float
    sim: str | None = None  # "simulated"/"demo": invented by a simulated source


# A row as stored: seq, kind, data (JSON text), taken_at, acked_at, sim, held
Row = tuple[int, str, str, float, float | None, str | None, float | None]


class Outbox:
    """``durable`` False: no disk syncs (``synchronous=OFF``), for the RAM journal on a
    tmpfs (``publisher.journal``), where a sync has nothing to wait for; such a file
    survives ``kill -9`` of the process, not a power cut. ``syncs`` counts the
    transactions committed with a disk sync."""

    def __init__(self, path: Path, *, limit: int = 100_000,
                 clock: Callable[[], float] = time.time, durable: bool = True) -> None:
        if limit < 1:
            raise ConfigError("the outbox limit must be at least 1")
        ensure_private_dir(path.parent)
        self.path = path
        self.limit = limit
        self.dropped = 0
        self.durable = durable
        self.syncs = 0
        self._clock = clock
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            path.chmod(0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
            self._db.executescript(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
            if "acked_at" not in columns:  # an outbox from before the redelivery window
                self._db.execute("ALTER TABLE outbox ADD COLUMN acked_at REAL")
            if "sim" not in columns:  # ... from before readings said they were simulated
                self._db.execute("ALTER TABLE outbox ADD COLUMN sim TEXT")
            if "held" not in columns:  # ... from before the RAM journal
                self._db.execute("ALTER TABLE outbox ADD COLUMN held REAL")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"outbox {path} is unusable ({exc}); move it away to start "
                              "a new one") from None
        row = self._db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        self._next = max(row[0] if row else 0, int(clock() * 1000))
        self._count = int(self._db.execute(
            "SELECT count(*) FROM outbox WHERE acked_at IS NULL").fetchone()[0])
        if self._count:
            log.info("outbox %s holds %d unsent reading(s) from before; sending them first",
                     path, self._count)

    def __len__(self) -> int:
        """Readings not acknowledged yet."""
        return self._count

    @property
    def last_seq(self) -> int:
        """The newest sequence number handed out (below any stored one when none was)."""
        return self._next - 1

    def add(self, kind: str, data: Any, sim: str | None = None,
            taken_at: float | None = None) -> int:
        """Commit one reading; returns its sequence number."""
        return self.add_many([(kind, data, sim, taken_at)])[0]

    @_storage
    def add_many(self, readings: Sequence[tuple[str, Any, str | None, float | None]]
                 ) -> list[int]:
        """Commit readings ``(kind, data, sim, taken_at)`` in one transaction (one disk
        sync for all); returns their sequence numbers, in order. ``taken_at`` None: now.
        Each keeps its own time: readings that wait for one commit are not merged in
        time (the history files them by it)."""
        if not readings:
            return []
        first = self._next
        seqs = list(range(first, first + len(readings)))
        now = self._clock()
        held = time.monotonic()
        with self._transaction():
            self._db.executemany(
                "INSERT INTO outbox (seq, kind, data, taken_at, sim, held) "
                "VALUES (?,?,?,?,?,?)",
                [(seq, kind, json.dumps(data), now if taken is None else taken, sim, held)
                 for seq, (kind, data, sim, taken) in zip(seqs, readings, strict=True)])
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?)",
                             (first + len(readings),))
            self._count += len(readings)
            if self._count > self.limit:
                excess = self._count - self.limit
                self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
                                 "WHERE acked_at IS NULL ORDER BY seq LIMIT ?)", (excess,))
                self._count -= excess
                self.dropped += excess
                log.warning("outbox full (%d readings): dropped the oldest %d; %d dropped "
                            "in all", self.limit, excess, self.dropped)
        self._next = first + len(readings)
        return seqs

    @_storage
    def after(self, seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` readings above ``seq``, in order: waiting ones, and after a
        reconnection (``seq`` back at -1) also those kept for redelivery."""
        rows = self._db.execute("SELECT seq, kind, data, taken_at, sim FROM outbox "
                                "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [Entry(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]

    @_storage
    def acknowledge(self, seqs: list[int]) -> int:
        """Mark readings acknowledged now (again, for a redelivered one: its window starts
        over); returns how many were waiting until now."""
        if not seqs:
            return 0
        now = self._clock()
        rows = [(now, s) for s in seqs]
        with self._transaction():
            self._db.executemany("UPDATE outbox SET acked_at = ? WHERE seq = ? "
                                 "AND acked_at IS NOT NULL", rows)
            fresh = self._db.executemany("UPDATE outbox SET acked_at = ? WHERE seq = ? "
                                         "AND acked_at IS NULL", rows).rowcount
            self._count -= fresh
        return fresh

    @_storage
    def kept(self) -> int:
        """Acknowledged readings still kept for redelivery."""
        return int(self._db.execute(
            "SELECT count(*) FROM outbox WHERE acked_at IS NOT NULL").fetchone()[0])

    @_storage
    def prune(self) -> None:
        """Forget readings acknowledged more than the redelivery window ago."""
        gone = self._db.execute("DELETE FROM outbox WHERE acked_at < ?",
                                (self._clock() - REDELIVERY_WINDOW,)).rowcount
        if gone and self.durable:
            self.syncs += 1
            log.debug("disk sync: %s", self.path.name)

    @_storage
    def close(self) -> None:
        self._db.close()

    # -- for the two tiers (publisher.journal) ----------------------------------------
    def continue_from(self, seq: int) -> None:
        """Hand out sequence numbers from ``seq`` on (or above, where already higher)."""
        self._next = max(self._next, seq)

    @_storage
    def rows(self, *, held_before: float, acked_too: bool) -> list[Row]:
        """Rows held here since before ``held_before`` (``time.monotonic``): the
        unacknowledged ones, and with ``acked_too`` those kept for redelivery too."""
        return list(self._db.execute(
            "SELECT seq, kind, data, taken_at, acked_at, sim, held FROM outbox "
            "WHERE (held IS NULL OR held < ?) AND (? OR acked_at IS NULL) ORDER BY seq",
            (held_before, acked_too)))

    @_storage
    def holding(self, seqs: Sequence[int]) -> list[int]:
        """Which of ``seqs`` are here (a read: no disk write)."""
        found: list[int] = []
        for seq in seqs:
            if self._db.execute("SELECT 1 FROM outbox WHERE seq = ?", (seq,)).fetchone():
                found.append(seq)
        return found

    def spill(self, connected: bool) -> None:
        """Nothing to move: this outbox is the durable one (see ``publisher.journal``)."""

    @_storage
    def put(self, rows: Sequence[Row]) -> None:
        """Take over rows from the other tier, as they were (a row already here, from a
        move interrupted by ``kill -9``, is kept once); one transaction."""
        if not rows:
            return
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (seq, kind, data, taken_at, acked_at, sim, "
                "held) VALUES (?,?,?,?,?,?,NULL)", [r[:6] for r in rows])
            added = self._db.total_changes - before
            waiting = sum(r[4] is None for r in rows)
            # (a duplicate of a waiting row was counted already)
            self._count += min(waiting, added)

    @_storage
    def remove(self, seqs: Sequence[int]) -> None:
        """Forget these rows (moved to the other tier)."""
        if not seqs:
            return
        with self._transaction():
            waiting = self._db.executemany(
                "DELETE FROM outbox WHERE seq = ? AND acked_at IS NULL",
                [(s,) for s in seqs]).rowcount
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._count -= int(waiting)

    @_storage
    def drop_oldest(self, n: int) -> int:
        """Drop up to ``n`` of the oldest unacknowledged readings; returns how many."""
        with self._transaction():
            gone = self._db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE acked_at "
                "IS NULL ORDER BY seq LIMIT ?)", (n,)).rowcount
            self._count -= gone
            self.dropped += gone
        return int(gone)

    @_storage
    def meta(self, key: str) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else int(row[0])

    @_storage
    def set_meta(self, **values: int) -> None:
        """Write meta values in one transaction."""
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 list(values.items()))

    def _transaction(self) -> _Tx:
        return _Tx(self)


class _Tx:
    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def __enter__(self) -> None:
        self._outbox._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._outbox._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        if exc_type is None and self._outbox.durable:
            self._outbox.syncs += 1
            log.debug("disk sync: %s", self._outbox.path.name)
