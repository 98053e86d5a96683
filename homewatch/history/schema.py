"""The SQLite history database's schema, its versions, and how it is opened.

The schema version is ``PRAGMA user_version``. :data:`MIGRATIONS` holds, for each version
``v``, the statements that take a database from ``v`` to ``v + 1`` (version 0 is a new,
empty file). The writer applies the missing steps in one transaction when it opens the
file; a reader only reads a database at exactly :data:`SCHEMA_VERSION` and otherwise says
which side must be upgraded.

Compact by design (the raw table holds one row per reading, about 16 million a year for
five Pis): tables keyed by what they are queried by are ``WITHOUT ROWID``, names are
integer ids, a raw point's time is integer milliseconds and its temperature integer
hundredths of a degree (2 bytes), and the simulated mark is a small integer
(:data:`SIM_CODES`; 0 takes no space in a record).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from homewatch.errors import StorageError
from homewatch.history import Simulated

SCHEMA_VERSION = 3

SIM_CODES: Mapping[Simulated, int] = {None: 0, "simulated": 1, "demo": 2}
SIM_NAMES: Mapping[int, Simulated] = {v: k for k, v in SIM_CODES.items()}

ROLLUP_STEPS = (300, 3600, 86400)  # seconds: 5-minute, hourly, daily
ROLLUPS_KEPT_FOREVER = 3600  # hourly and daily rollups are never deleted (tiny)
UNKNOWN_DEVICE = 0  # rejections from a device the store does not know

_V1 = (
    """CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID""",
    # A Pi. first/last_seen and last_sim: its readings as received (the writer's clock);
    # temp_*: its latest temperature by taken time; online/scanner_*: its latest status.
    """CREATE TABLE device (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        first_seen REAL, last_seen REAL, readings INTEGER NOT NULL DEFAULT 0,
        last_sim INTEGER, key_updated_at REAL,
        temp_at REAL, temp_centi INTEGER, temp_sim INTEGER,
        online INTEGER, status_since REAL, status_at REAL,
        scanner_state TEXT, scanner_detail TEXT NOT NULL DEFAULT '',
        scanner_since REAL, scanner_at REAL)""",
    """CREATE TABLE person (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)""",
    # Raw points: ts = taken time in ms, centi = hundredths of a degree Celsius.
    """CREATE TABLE temperature (
        device_id INTEGER NOT NULL, ts INTEGER NOT NULL,
        centi INTEGER NOT NULL, sim INTEGER NOT NULL,
        PRIMARY KEY (device_id, ts)) WITHOUT ROWID""",
    # Rollups of the raw points per step (ROLLUP_STEPS) and bucket start (Unix seconds).
    """CREATE TABLE rollup (
        device_id INTEGER NOT NULL, step INTEGER NOT NULL, start INTEGER NOT NULL,
        lo INTEGER NOT NULL, hi INTEGER NOT NULL, total INTEGER NOT NULL,
        n INTEGER NOT NULL, sim INTEGER NOT NULL,
        PRIMARY KEY (device_id, step, start)) WITHOUT ROWID""",
    # Per (Pi, person): the latest report's state, and every change of it.
    """CREATE TABLE presence_state (
        device_id INTEGER NOT NULL, person_id INTEGER NOT NULL,
        home INTEGER NOT NULL, since REAL NOT NULL, at REAL NOT NULL,
        last_seen REAL, sim INTEGER NOT NULL,
        PRIMARY KEY (device_id, person_id)) WITHOUT ROWID""",
    """CREATE TABLE presence_change (
        person_id INTEGER NOT NULL, device_id INTEGER NOT NULL, ts REAL NOT NULL,
        home INTEGER NOT NULL, sim INTEGER NOT NULL,
        PRIMARY KEY (person_id, device_id, ts)) WITHOUT ROWID""",
    # Per person, all Pis fused: a row where home/away changes; seen_by lists the ids of
    # the Pis that had them home during the stretch ("1,3").
    """CREATE TABLE person_change (
        person_id INTEGER NOT NULL, ts REAL NOT NULL, home INTEGER NOT NULL,
        seen_by TEXT NOT NULL, sim INTEGER NOT NULL,
        PRIMARY KEY (person_id, ts)) WITHOUT ROWID""",
    """CREATE TABLE availability_change (
        device_id INTEGER NOT NULL, ts REAL NOT NULL, online INTEGER NOT NULL,
        PRIMARY KEY (device_id, ts)) WITHOUT ROWID""",
    """CREATE TABLE scanner_change (
        device_id INTEGER NOT NULL, ts REAL NOT NULL, state TEXT NOT NULL,
        detail TEXT NOT NULL, sim INTEGER NOT NULL,
        PRIMARY KEY (device_id, ts)) WITHOUT ROWID""",
    # Rejected messages per UTC day (Unix day number), device (UNKNOWN_DEVICE) and reason.
    """CREATE TABLE rejection (
        day INTEGER NOT NULL, device_id INTEGER NOT NULL, reason TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (day, device_id, reason)) WITHOUT ROWID""",
)

# Rooms (several Pis): the room each Pi says it stands in, and each person's room as the
# subscriber's fusion chose it (subscriber/rooms.py): the latest on the person's row, and
# every change (room NULL: not home; device_id: the Pi that heard them best in it).
_V2 = (
    """ALTER TABLE device ADD COLUMN room TEXT""",
    """ALTER TABLE person ADD COLUMN room TEXT""",
    """ALTER TABLE person ADD COLUMN room_since REAL""",
    """ALTER TABLE person ADD COLUMN room_at REAL""",
    """CREATE TABLE room_change (
        person_id INTEGER NOT NULL, ts REAL NOT NULL, room TEXT, device_id INTEGER,
        PRIMARY KEY (person_id, ts)) WITHOUT ROWID""",
)


# Version 3: the alerts the subscriber raised (subscriber/sinks/alerts.py). ``subject``:
# the person or Pi it is about; ``delivery``: pending, delivered, failed (given up),
# dropped (its queue was full), none (no webhook configured); ``sim`` as elsewhere.
_V3 = (
    """CREATE TABLE alert (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, rule TEXT NOT NULL,
        kind TEXT NOT NULL, message TEXT NOT NULL, subject TEXT NOT NULL DEFAULT '',
        sim INTEGER NOT NULL, delivery TEXT NOT NULL, delivered_at REAL)""",
    """CREATE INDEX alert_at ON alert (at)""",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _V1,
    _V2,
    _V3,
)  # MIGRATIONS[v]: from version v to v + 1
assert len(MIGRATIONS) == SCHEMA_VERSION

WRITER_BUSY_TIMEOUT = 10.0  # seconds a commit waits for readers (their queries are short)
READER_BUSY_TIMEOUT = 5.0  # seconds a query waits for the writer's commit


def _hint(exc: sqlite3.Error) -> str:
    """A short hint for the errors a user can do something about."""
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return "; the disk is full"
    if name.startswith("SQLITE_READONLY_ROLLBACK"):
        return ("; a write was interrupted: the subscriber rolls it back when it starts "
                "again")
    if name.startswith("SQLITE_READONLY"):
        return "; the file or its directory is read-only"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "; it stayed locked longer than the busy timeout (a second subscriber?)"
    if name.startswith("SQLITE_IOERR"):
        return "; a write to the disk failed (is it full, or failing?)"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return "; the file is damaged: move it away to start a new history"
    return ""


def storage_error(path: Path, exc: BaseException) -> StorageError:
    """One line that names the file: what failed and, where it helps, what to do."""
    hint = _hint(exc) if isinstance(exc, sqlite3.Error) else ""
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return StorageError(f"history database {path}: {detail}{hint}")


def private_dir(directory: Path) -> None:
    """Make ``directory`` and any missing parents, 0700 (existing ones are left as they are)."""
    if directory.is_dir():
        return
    private_dir(directory.parent)
    directory.mkdir(mode=0o700)


def open_writer(path: Path, *, busy_timeout: float = WRITER_BUSY_TIMEOUT
                ) -> sqlite3.Connection:
    """The writer's connection: the file (0600) and its directory (0700) made if missing,
    rollback journal, full sync, schema migrated to :data:`SCHEMA_VERSION`."""
    try:
        private_dir(path.parent)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        path.chmod(0o600)
        db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                             check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise storage_error(path, exc) from None
    try:
        mode = db.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        if mode != "delete":
            raise sqlite3.OperationalError(f"journal mode {mode} instead of delete")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA cache_size=-16384")  # 16 MiB: a batch never spills mid-way
        migrate(db, path)
    except StorageError:
        db.close()
        raise
    except sqlite3.Error as exc:
        db.close()
        raise storage_error(path, exc) from None
    return db


def migrate(db: sqlite3.Connection, path: Path,
            migrations: tuple[tuple[str, ...], ...] = MIGRATIONS) -> None:
    """Bring the schema to the last version of ``migrations``, all steps in one
    transaction (an interrupted migration leaves the previous version intact)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(migrations):
            raise StorageError(f"history database {path}: schema version {version} is newer "
                               f"than this Homewatch's ({len(migrations)}); upgrade it")
        for step in migrations[version:]:
            for statement in step:
                db.execute(statement)
        db.execute(f"PRAGMA user_version={len(migrations)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def open_reader(path: Path, *, busy_timeout: float = READER_BUSY_TIMEOUT
                ) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro`` (works on a read-only mount) and
    ``query_only``; refused unless the schema is exactly :data:`SCHEMA_VERSION`."""
    if not path.exists():
        raise StorageError(f"history database {path} does not exist (yet): the subscriber "
                           "makes it when it starts")
    uri = "file:" + quote(str(path.absolute())) + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA query_only=1")
        check_version(db, path)
    except sqlite3.Error as exc:
        raise storage_error(path, exc) from None
    return db


def check_version(db: sqlite3.Connection, path: Path) -> None:
    """A reader reads only the schema it was written for."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version != SCHEMA_VERSION:
        side = "the subscriber has not migrated it yet" if version < SCHEMA_VERSION else (
            "upgrade the dashboard")
        raise StorageError(f"history database {path}: schema version {version}, this "
                           f"reader needs {SCHEMA_VERSION} ({side})")
