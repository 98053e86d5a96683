"""The outbox keeps when each reading was taken, not when its batch was committed: the
history files readings by that time, so two readings must never share it by accident."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet

from publisher.app import Publisher
from publisher.outbox import Outbox


def test_readings_committed_together_keep_their_own_taken_times(tmp_path: Path) -> None:
    """Readings handed over 50 ms apart and committed in one transaction keep their own
    times, in order, each within the moment it was handed over."""
    outbox = Outbox(tmp_path / "outbox.db")
    pub = Publisher(MultiFernet([Fernet(Fernet.generate_key())]), device="pi-a",
                    base="home", outbox=outbox)
    marks = []
    for i in range(3):
        before = time.time()
        pub.record("temperature", {"temperature": 20.0 + i})
        marks.append((before, time.time()))
        time.sleep(0.05)
    pub.commit()
    entries = outbox.after(0, 10)
    outbox.close()
    assert len(entries) == 3
    for entry, (before, after) in zip(entries, marks, strict=True):
        assert before <= entry.taken_at <= after
    assert entries[0].taken_at < entries[1].taken_at < entries[2].taken_at
