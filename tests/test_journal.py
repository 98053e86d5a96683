"""The publisher's RAM journal (``publisher.journal``): gentle on the SD card, and what it
may cost. Real broker, real subscriber, real publisher processes; the journal on a tmpfs
(/dev/shm here, /run/homewatch on a Pi). A power cut is simulated by deleting the journal
while the publisher is killed (a tmpfs is empty after a power cut)."""

from __future__ import annotations

import math
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.journal import TieredOutbox, filesystem_of, open_outbox
from publisher.settings import journal_dir
from tests.test_faults import Scenario, finish

pytestmark = pytest.mark.broker


@pytest.fixture
def scenario(certs: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Scenario(certs, tmp_path)
    yield s
    s.close()


def seqs_in(db: Path) -> set[int]:
    """The sequence numbers an outbox file holds (read-only; the publisher is dead)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT seq FROM outbox")}
    finally:
        con.close()


def journal_file(s: Scenario) -> Path:
    return s.journal / "pi-kitchen.journal.sqlite"


def disk_file(s: Scenario) -> Path:
    return s.tmp / "pub-state" / "pi-kitchen.outbox.sqlite"


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no write_bytes")


def test_the_test_journal_is_on_a_tmpfs(scenario: Scenario, tmp_path: Path) -> None:
    """The journal directory the tests use is a tmpfs, and the state directory is not
    (so what these tests measure is the real difference)."""
    assert filesystem_of(scenario.journal) == "tmpfs"
    assert filesystem_of(tmp_path) != "tmpfs"


WRITER = """
import os, sys
def written():
    for line in open("/proc/self/io"):
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
before = written()
with open(sys.argv[1], "wb") as f:
    for _ in range(64):
        f.write(b"x" * 4096)
        f.flush()
        os.fsync(f.fileno())
print(written() - before)
"""


def test_write_bytes_counts_disk_writes_and_not_tmpfs_writes(scenario: Scenario) -> None:
    """What the bench and the test below rest on: 256 KiB written (and synced) to a file
    on a tmpfs add nothing to /proc/PID/io write_bytes; to a file on the state disk, at
    least that much."""
    counted = {}
    for name, where in (("tmpfs", scenario.journal), ("disk", scenario.tmp)):
        r = subprocess.run([sys.executable, "-c", WRITER, str(where / "probe")],
                           capture_output=True, text=True, timeout=60, check=True)
        counted[name] = int(r.stdout)
    assert counted["tmpfs"] == 0
    assert counted["disk"] >= 64 * 4096


def test_killed_with_readings_only_in_the_ram_journal_loses_none(scenario: Scenario) -> None:
    """kill -9 while unacknowledged readings are only in the RAM journal (broker away,
    window not over): none of them is on disk, and after a restart all are delivered
    once."""
    s = scenario
    s.broker.start()
    s.subscriber()
    s.broker.stop()
    pub = s.publisher("--spill-after", "600")
    pub.wait_err_count("stored", 20)
    pub.stop(signal.SIGKILL)
    in_ram = seqs_in(journal_file(s))
    assert len(in_ram) >= 20
    assert not seqs_in(disk_file(s)) & in_ram
    s.broker.start()
    pub = s.publisher("--spill-after", "600")
    pub.wait_err("RAM journal")
    pub.wait_err_count("stored", 5)
    stored, lost, twice = finish(s, pub)
    assert in_ram <= s.stored() and stored >= len(in_ram)
    assert (lost, twice) == (0, 0), sorted(s.stored() - set(s.shown()))[:5]


def test_outage_longer_than_the_window_moves_readings_to_disk_and_delivers_them(
        scenario: Scenario) -> None:
    """With the broker away longer than --spill-after, readings are moved to the durable
    outbox on disk (they would survive a power cut) and all are delivered once it is
    back."""
    s = scenario
    s.broker.start()
    s.subscriber()
    s.broker.stop()
    pub = s.publisher("--spill-after", "0.5")
    pub.wait_err("moved to the durable outbox")
    pub.wait_err_count("stored", 20)
    s.broker.start()
    pub.wait_err("sending")  # the connection is back: what waited goes out
    stored, lost, twice = finish(s, pub)
    assert stored >= 20
    assert (lost, twice) == (0, 0), sorted(s.stored() - set(s.shown()))[:5]


def test_power_cut_loses_only_the_journal_and_says_so(scenario: Scenario) -> None:
    """A power cut (the journal deleted while the publisher is killed) during an outage
    loses exactly the readings the journal held, the newest ones (those still within
    --spill-after); everything older was on disk and is delivered; the restarted publisher
    warns about the loss, counts it, and its new readings are accepted (numbers go on
    above every lost one)."""
    s = scenario
    s.broker.start()
    s.subscriber()
    s.broker.stop()
    pub = s.publisher("--spill-after", "1")
    pub.wait_err("moved to the durable outbox")
    pub.wait_err_count("stored", 40)
    pub.stop(signal.SIGKILL)
    in_ram, on_disk = seqs_in(journal_file(s)), seqs_in(disk_file(s))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal_file(s)}{suffix}").unlink(missing_ok=True)
    assert in_ram and on_disk
    assert min(in_ram) > max(on_disk)  # only the newest readings were still in RAM
    before = s.stored()
    s.broker.start()
    pub = s.publisher()
    pub.wait_err("is gone although the publisher did not stop cleanly")
    warning = next(line for line in pub.err if "is gone although" in line)
    assert "(1 such loss(es) so far)" in warning
    pub.wait_err_count("stored", 10)
    assert pub.stop() == 0
    s.settle(s.stored() - in_ram)
    shown = s.shown()
    assert set(shown) == s.stored() - in_ram  # lost: exactly what the journal held
    assert len(shown) == len(set(shown))
    assert min(s.stored() - before) > max(in_ram)


def measured_bytes_per_reading(s: Scenario, *extra: str) -> float:
    """Disk bytes written (``/proc/PID/io`` write_bytes) per reading stored, after start-up,
    by a publisher whose broker acknowledges promptly."""
    pub = s.publisher(*extra)
    pub.wait_err_count("stored", 20)  # start-up (imports, the outbox's creation) done
    start_bytes, start_stored = write_bytes(pub.proc.pid), len(s.stored())
    pub.wait_err_count("stored", start_stored + 200, timeout=60)
    written, stored = write_bytes(pub.proc.pid), len(s.stored())
    assert pub.stop() == 0
    return (written - start_bytes) / (stored - start_stored)


def test_with_the_journal_a_connected_publisher_writes_under_1_kib_per_reading(
        scenario: Scenario) -> None:
    """While the broker acknowledges, the publisher with the journal writes less than
    1 KiB to disk per reading on average; without it (--spill-after 0, today's outbox)
    more, as every reading is synced to disk."""
    s = scenario
    s.broker.start()
    s.subscriber()
    # the window far above any acknowledgement delay on a loaded machine: not a race
    with_journal = measured_bytes_per_reading(s, "--spill-after", "60")
    without = measured_bytes_per_reading(s, "--spill-after", "0")
    assert with_journal < 1024, with_journal
    assert without > 1024, without


def test_journal_dir_that_is_not_a_tmpfs_falls_back_to_the_disk_outbox_and_says_why(
        scenario: Scenario) -> None:
    """A --journal-dir on a disk is not used (a journal there would wear the disk): one
    warning says so, and every reading goes to the disk outbox as without a journal (the
    stop summary counts its disk syncs)."""
    s = scenario
    s.broker.start()
    s.subscriber()
    pub = s.publisher("--journal-dir", str(s.tmp / "on-disk"))
    pub.wait_err_count("stored", 10)
    _, lost, twice = finish(s, pub)
    assert sum("not a tmpfs" in line for line in pub.err) == 1
    assert not (s.tmp / "on-disk" / "pi-kitchen.journal.sqlite").exists()
    assert (lost, twice) == (0, 0)
    summary = next(line for line in pub.err if "stopped:" in line)
    syncs = re.search(r"(\d+) disk sync\(s\)", summary)  # reported, one per transaction
    assert syncs and int(syncs.group(1)) >= 10, summary


def test_a_journal_left_behind_is_taken_over_when_the_journal_is_switched_off(
        scenario: Scenario) -> None:
    """A journal left by kill -9 is moved into the disk outbox when the next start has
    the journal switched off (--spill-after 0): nothing in it is lost."""
    s = scenario
    s.broker.start()
    s.subscriber()
    s.broker.stop()
    pub = s.publisher("--spill-after", "600")
    pub.wait_err_count("stored", 10)
    pub.stop(signal.SIGKILL)
    assert seqs_in(journal_file(s))
    s.broker.start()
    pub = s.publisher("--spill-after", "0")
    pub.wait_err("moving the RAM journal")
    pub.wait_err_count("stored", 5)
    _, lost, twice = finish(s, pub)
    assert not journal_file(s).exists()
    assert (lost, twice) == (0, 0)


# -- the two tiers themselves (no broker needed) -------------------------------------


@pytest.fixture
def ram_dir() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="homewatch-journal-", dir="/dev/shm"))
    yield where
    shutil.rmtree(where, ignore_errors=True)


def tiers(state: Path, ram: Path, spill_after: float = 5.0) -> TieredOutbox:
    outbox = open_outbox(state, "pi-a", limit=100_000, journal_dir=ram,
                         spill_after=spill_after)
    assert isinstance(outbox, TieredOutbox)
    return outbox


def power_cut(outbox: TieredOutbox) -> None:
    """The process gone without a clean stop, and the tmpfs emptied."""
    outbox.ram.close()
    outbox.disk.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{outbox.path}{suffix}").unlink(missing_ok=True)


def test_numbers_after_a_lost_journal_are_above_every_number_it_handed_out(
        tmp_path: Path, ram_dir: Path) -> None:
    """After a power cut that took a journal which had handed out more numbers than one
    reserved block, numbering goes on above all of them, and the loss is counted."""
    outbox = tiers(tmp_path, ram_dir)
    seqs = outbox.add_many([("temperature", {"t": i}, None, None) for i in range(2500)])
    power_cut(outbox)
    outbox = tiers(tmp_path, ram_dir)
    assert outbox.lost_journal and outbox.journal_losses == 1
    assert outbox.add("temperature", {"t": 1}) > max(seqs)
    outbox.close()
    outbox = tiers(tmp_path, ram_dir)  # a clean stop before: no loss
    assert not outbox.lost_journal and outbox.journal_losses == 1
    outbox.close()


def test_a_reading_acknowledged_after_it_moved_to_disk_is_acknowledged_there(
        tmp_path: Path, ram_dir: Path) -> None:
    """A slow broker: a reading moved to disk while in flight, then acknowledged, is no
    longer waiting anywhere."""
    outbox = tiers(tmp_path, ram_dir, spill_after=0.01)
    seq = outbox.add("temperature", {"t": 1})
    deadline = time.monotonic() + 10
    while seq not in outbox.disk.holding([seq]):  # the window passes, the pump spills
        assert time.monotonic() < deadline
        time.sleep(0.05)
        outbox.spill(connected=True)
    assert len(outbox) == 1 and len(outbox.ram) == 0
    assert outbox.acknowledge([seq]) == 1
    assert len(outbox) == 0
    outbox.close()


def test_a_move_cut_short_by_kill_9_keeps_one_copy(tmp_path: Path, ram_dir: Path) -> None:
    """Readings copied to disk but not yet removed from the journal (kill -9 in between)
    are one reading each after the restart: sent once, waiting once."""
    outbox = tiers(tmp_path, ram_dir)
    outbox.add_many([("temperature", {"t": i}, None, None) for i in range(3)])
    outbox.disk.put(outbox.ram.rows(held_before=math.inf, acked_too=True))
    outbox.ram.close()
    outbox.disk.close()  # (no clean close: the journal stays)
    outbox = tiers(tmp_path, ram_dir)
    entries = outbox.after(-1, 100)
    assert len(entries) == 3 and len(outbox) == 3
    assert outbox.acknowledge([e.seq for e in entries]) == 3
    assert len(outbox) == 0
    outbox.close()


def test_the_journal_directory_defaults_to_systemds_runtime_directory() -> None:
    """--journal-dir: as given ('none': no journal), else $RUNTIME_DIRECTORY (systemd's
    RuntimeDirectory=), else $XDG_RUNTIME_DIR/homewatch, else no journal."""
    env = {"RUNTIME_DIRECTORY": "/run/homewatch", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert journal_dir(None, env) == Path("/run/homewatch")
    assert journal_dir(None, {"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path(
        "/run/user/1000/homewatch")
    assert journal_dir(None, {}) is None
    assert journal_dir("none", env) is None
    assert journal_dir("/dev/shm/x", env) == Path("/dev/shm/x")
