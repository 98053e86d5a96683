"""The RAM tier in front of the durable outbox: gentle on a Raspberry Pi's SD card.

New readings go to a journal on a tmpfs (``--journal-dir``; under systemd the service's
RuntimeDirectory, /run/homewatch): RAM that outlives the process, so ``kill -9`` or a
restart of the service loses nothing. The journal is the same SQLite outbox without
disk syncs (a tmpfs has no disk to wait for). A reading the broker acknowledges within
``spill_after`` seconds never touches the SD card: it stays in the journal for the
redelivery window (``publisher.outbox``) and is forgotten there. A reading not
acknowledged by then (broker away, network cut, slow broker) is moved to the durable
outbox, together with every other one due (one transaction, one sync), and from there
all is as without the journal. While the connection is down, readings acknowledged
just before are moved too (what a broker that crashed may have lost stays durable).

Sequence numbers: the durable outbox reserves them in blocks of ``RESERVE`` (one small
disk write per block), so after a power cut numbering continues above every number the
journal may have handed out, and the subscriber never takes a new reading for a replay.

A power cut (or a crash of the machine) loses the journal, and with it the readings of
the last ``spill_after`` seconds plus 1 s (the pump looks at least once a second, at most
every ``SPILL_EVERY``) that the broker had not acknowledged. The next start notices (the
durable outbox says the journal was in use and was not closed), says so in a warning and
counts it (``journal_losses``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from homewatch.errors import StorageError
from homewatch.secrets import ensure_private_dir
from publisher.outbox import Entry, Outbox

log = logging.getLogger(__name__)

RESERVE = 1000  # sequence numbers reserved on disk at a time
SPILL_EVERY = 0.5  # seconds between looks for readings due on disk
RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def filesystem_of(path: Path) -> str:
    """The type of the file system ``path`` lives on (from /proc/self/mountinfo), or
    "unknown"."""
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        before, _, after = line.partition(" - ")
        fields = before.split()
        if len(fields) < 5 or not after:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, after.split()[0]
    return kind


def journal_path(directory: Path, device: str) -> Path:
    return directory / f"{device}.journal.sqlite"


class TieredOutbox:
    """The journal (RAM) and the durable outbox (disk) behind the outbox's interface."""

    def __init__(self, disk: Outbox, journal: Path, *, spill_after: float) -> None:
        self.disk = disk
        self.path = journal
        self.limit = disk.limit
        self.spill_after = spill_after
        existed = journal.exists()
        self.ram = Outbox(journal, limit=disk.limit, durable=False)
        losses = disk.meta("journal_losses") or 0
        self.lost_journal = not existed and disk.meta("journal") == 1
        if self.lost_journal:
            losses += 1
            log.warning("the RAM journal %s is gone although the publisher did not stop "
                        "cleanly: a power cut or a crash of the machine. The readings of "
                        "its last %g s that the broker had not acknowledged are lost "
                        "(%d such loss(es) so far); sequence numbers go on from %d",
                        journal, spill_after + 1, losses, disk.last_seq + 1)
        self.journal_losses = losses
        if not existed:
            # disk.last_seq + 1 is the reservation: above anything a lost journal handed
            # out (a journal still there knows its own next number exactly)
            self.ram.continue_from(disk.last_seq + 1)
        self._reserved = self.ram.last_seq + 1 + RESERVE
        disk.set_meta(next_seq=self._reserved, journal=1, journal_losses=losses)
        disk.continue_from(self._reserved)
        self._looked = 0.0
        self._spilling = False
        if existed:  # a move cut short by kill -9: the durable copy is the one kept
            moved = disk.holding([r[0] for r in self.ram.rows(held_before=math.inf,
                                                              acked_too=True)])
            self.ram.remove(moved)
        if len(self.ram):
            log.info("RAM journal %s holds %d unsent reading(s) from before; sending them "
                     "first", journal, len(self.ram))

    # -- the outbox's interface --------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ram) + len(self.disk)

    @property
    def dropped(self) -> int:
        return self.ram.dropped + self.disk.dropped

    @property
    def syncs(self) -> int:
        """Transactions committed with a disk sync (the journal makes none)."""
        return self.disk.syncs

    @property
    def last_seq(self) -> int:
        return self.ram.last_seq

    def add(self, kind: str, data: Any, sim: str | None = None,
            taken_at: float | None = None) -> int:
        return self.add_many([(kind, data, sim, taken_at)])[0]

    def add_many(self, readings: Sequence[tuple[str, Any, str | None, float | None]]
                 ) -> list[int]:
        """Into the journal; numbers reserved on disk first when the block is used up."""
        if self.ram.last_seq + 1 + len(readings) > self._reserved:
            self._reserved = self.ram.last_seq + 1 + len(readings) + RESERVE
            self.disk.set_meta(next_seq=self._reserved)
            self.disk.continue_from(self._reserved)
        seqs = self.ram.add_many(readings)
        excess = len(self) - self.limit
        if excess > 0:  # the oldest go first: on disk, then in the journal
            gone = self.disk.drop_oldest(excess)
            if gone < excess:
                self.ram.drop_oldest(excess - gone)
            log.warning("outbox full (%d readings): dropped the oldest %d; %d dropped in "
                        "all", self.limit, excess, self.dropped)
        return seqs

    def after(self, seq: int, limit: int) -> list[Entry]:
        merged = {e.seq: e for e in self.disk.after(seq, limit)}
        merged.update((e.seq, e) for e in self.ram.after(seq, limit))
        return [merged[s] for s in sorted(merged)[:limit]]

    def acknowledge(self, seqs: list[int]) -> int:
        fresh = self.ram.acknowledge(seqs)
        on_disk = self.disk.holding(seqs) if fresh < len(seqs) else []
        return fresh + self.disk.acknowledge(on_disk)

    def kept(self) -> int:
        return self.ram.kept() + self.disk.kept()

    def prune(self) -> None:
        self.ram.prune()
        self.disk.prune()

    def spill(self, connected: bool) -> None:
        """Move what is due to the durable outbox: readings not acknowledged within
        ``spill_after`` seconds and, while not ``connected``, acknowledged ones kept for
        redelivery too. At most once per ``SPILL_EVERY``."""
        now = time.monotonic()
        if now - self._looked < SPILL_EVERY:
            return
        self._looked = now
        rows = self.ram.rows(held_before=now - self.spill_after, acked_too=not connected)
        if not rows:
            self._spilling = False
            return
        self.disk.put(rows)  # durable first: a kill -9 in between leaves a copy, not a gap
        self.ram.remove([r[0] for r in rows])
        waiting = sum(r[4] is None for r in rows)
        if not self._spilling:
            log.info("%d reading(s) not acknowledged within %g s moved to the durable "
                     "outbox %s (and so on while that lasts)", waiting, self.spill_after,
                     self.disk.path)
        else:
            log.debug("%d reading(s) moved to the durable outbox", len(rows))
        self._spilling = True

    def close(self) -> None:
        """Everything in the journal to the durable outbox, then the journal removed:
        a clean stop leaves nothing in RAM (a reboot clears it). If that fails, the
        journal stays for the next start."""
        try:
            self.disk.put(self.ram.rows(held_before=math.inf, acked_too=True))
            self.disk.set_meta(next_seq=self.ram.last_seq + 1, journal=0)
        except StorageError:
            with contextlib.suppress(StorageError):
                self.ram.close()
            self.disk.close()
            raise
        self.ram.close()
        self.disk.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()


def open_outbox(state_dir: Path, device: str, *, limit: int, journal_dir: Path | None,
                spill_after: float) -> Outbox | TieredOutbox:
    """The durable outbox, with the RAM journal in front when ``journal_dir`` is on a
    tmpfs and ``spill_after`` is above 0; else the durable outbox alone (every reading
    synced to disk), with a warning saying why when a journal was asked for."""
    disk = Outbox(state_dir / f"{device}.outbox.sqlite", limit=limit)
    if journal_dir is None:
        return disk
    journal = journal_path(journal_dir, device)
    if spill_after <= 0:
        if journal.exists():  # left by a run with the journal on: its readings kept
            log.info("moving the RAM journal %s into the durable outbox", journal)
            TieredOutbox(disk, journal, spill_after=0).close()
            disk = Outbox(state_dir / f"{device}.outbox.sqlite", limit=limit)
        return disk
    try:
        ensure_private_dir(journal_dir)
        if not os.access(journal_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:
        log.warning("no RAM journal (%s: %s): every reading is synced to the disk outbox",
                    journal_dir, exc.strerror or exc)
        return disk
    kind = filesystem_of(journal_dir)
    if kind not in RAM_FILESYSTEMS:
        log.warning("no RAM journal: %s is on %s, not a tmpfs (a journal there would wear "
                    "the disk it is meant to spare); every reading is synced to the disk "
                    "outbox. Use --journal-dir on a tmpfs (e.g. /run/homewatch)",
                    journal_dir, kind)
        return disk
    return TieredOutbox(disk, journal, spill_after=spill_after)
