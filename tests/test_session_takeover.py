"""Two programs with one MQTT client id take the broker session from each other: each
says so in one clear line and backs off instead of fighting in a tight loop."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import Broker, clean_env, python_m, stop_process

pytestmark = pytest.mark.broker

RECONNECT = re.compile(r"reconnecting in (\d+\.\d) s")


def test_two_subscribers_with_one_client_id_name_the_take_over_and_back_off(
        broker: Broker, workdir: Path) -> None:
    """A second subscriber started with the first one's --client-id: one of them logs
    that another client with that id took over the session, and its next reconnection
    waits at least half the 30 s cap instead of about a second."""
    client_id = f"twin-{uuid.uuid4().hex[:6]}"
    lines: queue.Queue[tuple[int, str]] = queue.Queue()
    procs: list[subprocess.Popen[str]] = []

    def read(n: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put((n, line.rstrip("\n")))

    try:
        for n in range(2):
            proc = subprocess.Popen(
                python_m("subscriber", broker.url("localhost"), "--client-id", client_id,
                         "--state-dir", str(workdir / f"state-{n}")),
                cwd=workdir, env=clean_env(), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            threading.Thread(target=read, args=(n, proc), daemon=True).start()
        told: dict[int, str] = {}
        waits: list[float] = []
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not waits:
            try:
                n, line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(f"[{n}] {line}")
            if "took over the session" in line:
                told.setdefault(n, line)
            elif n in told and (m := RECONNECT.search(line)):
                waits.append(float(m.group(1)))
        assert told, "no take-over line:\n" + "\n".join(seen[-30:])
        line = next(iter(told.values()))
        assert f"another client with the same client id {client_id!r} took over the " \
               "session" in line
        assert "--client-id" in line
        assert waits and waits[0] >= 15.0, "\n".join(seen[-30:])
    finally:
        for proc in procs:
            stop_process(proc, 15)
            if proc.stderr is not None:
                proc.stderr.close()
