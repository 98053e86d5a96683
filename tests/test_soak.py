"""A bounded soak: several publishers stream into one subscriber through a real broker
that is killed and restarted periodically. Small in CI; SOAK_SECONDS, SOAK_PUBLISHERS and
SOAK_RESTART_EVERY make it as long and wide as you like. Reports published / delivered /
lost / duplicated and the subscriber's memory; requires 0 lost and 0 duplicated."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import Broker, free_port, gen_certs, homewatch_cli, python_m
from tests.test_faults import STORED, Proc

pytestmark = [pytest.mark.broker, pytest.mark.soak]

SECONDS = float(os.environ.get("SOAK_SECONDS", "35"))
# Its own time limit: the soak plus what surrounds it (set-up, the last reconnections,
# the drain of up to 90 s, the stops), so that pytest's default timeout (pyproject) does
# not stop a long soak such as the README's `SOAK_SECONDS=600 make soak`.
TIMEOUT = SECONDS + 300


@pytest.mark.timeout(TIMEOUT)
def test_soak_with_broker_restarts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """N publishers for S seconds with a broker kill -9 every R seconds: 0 lost, 0 twice."""
    seconds = SECONDS
    publishers = int(os.environ.get("SOAK_PUBLISHERS", "3"))
    # Longer than the broker's autosave (10 s): a broker killed sooner after a subscriber's
    # first subscription forgets that session, the limit the README states.
    restart_every = float(os.environ.get("SOAK_RESTART_EVERY", "15"))
    certs = tmp_path / "certs"
    gen_certs(certs)
    devices = [f"soak-{i}" for i in range(publishers)]
    for name in ("subscriber", *devices):
        homewatch_cli(certs, "device", "add", name)
    broker = Broker(certs=certs, workdir=tmp_path / "broker", port=free_port()).start()
    url = broker.url("localhost")
    sub = Proc(python_m("subscriber", url, "--json", "--state-dir", str(tmp_path / "s")),
               tmp_path)
    pubs: list[Proc] = []
    try:
        sub.wait_err("subscribed to home/#")
        pubs = [Proc(python_m("publisher", url, "--device", d, "--temperature", "simulated",
                              "--scanner", "simulated", "--interval", "0.2",
                              "--scan-duration", "0.05", "--state-dir", str(tmp_path / d)),
                     tmp_path, {"HOMEWATCH_LOG_LEVEL": "debug"}) for d in devices]
        end = time.monotonic() + seconds
        restarts = 0
        while time.monotonic() < end:
            time.sleep(min(restart_every, max(0.0, end - time.monotonic())))
            if time.monotonic() < end:
                broker.kill()
                time.sleep(0.5)
                broker.start()
                restarts += 1
        for p in pubs:
            p.wait_err_count("reconnected to" if restarts else "connected to",
                             max(restarts, 1), timeout=60)
            assert p.stop() == 0
        stored = {(d, int(m.group(1))) for d, p in zip(devices, pubs, strict=True)
                  for line in p.err if (m := STORED.search(line))}

        def shown() -> list[tuple[str, int]]:
            out = []
            for line in list(sub.out):
                r = json.loads(line)
                if r["kind"] != "status":
                    out.append((r["device"], r["seq"]))
            return out

        deadline = time.monotonic() + 90
        while not stored <= set(shown()) and time.monotonic() < deadline:
            time.sleep(0.5)
        rss = int(next(x for x in Path(f"/proc/{sub.proc.pid}/status").read_text().splitlines()
                       if x.startswith("VmRSS:")).split()[1])
        got = shown()
        lost = len(stored - set(got))
        twice = sum(n - 1 for n in Counter(got).values() if n > 1)
        with capsys.disabled():
            print(f"\nsoak: {publishers} publishers, {seconds:.0f} s, {restarts} broker "
                  f"restarts: published {len(stored)}, delivered {len(set(got))}, "
                  f"lost {lost}, duplicated {twice}, subscriber RSS {rss / 1024:.1f} MiB")
        assert len(stored) > 20 * publishers
        assert (lost, twice) == (0, 0)
    finally:
        for p in pubs:
            p.stop(signal.SIGKILL)
        sub.stop(signal.SIGKILL)
        broker.stop()
