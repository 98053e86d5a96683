"""The benchmark keeps working: a smoke run with tiny numbers (no timing is asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, clean_env


@pytest.mark.broker
def test_bench_quick_prints_the_side_by_side_table_and_writes_json(tmp_path: Path) -> None:
    """`python -m bench.bench --quick` prints each scenario, the Pi view (with its disk
    bytes per reading and syncs per hour, journal and outbox only) and the final
    `secure ingest ratio:` lines (history off, then on), and writes its figures as JSON."""
    r = subprocess.run([sys.executable, "-m", "bench.bench", "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for heading in ("flood:", "steady:", "fan-in:", "fan-in with the history on", "Pi view",
                    "raw paho", "homewatch"):
        assert heading in r.stdout
    # the Pi view: the SD card's cost with the RAM journal, and before it, side by side
    assert re.search(r"^  disk bytes per reading: \d+ \(RAM journal.*; before: \d+ \(outbox "
                     r"only", r.stdout, re.M), r.stdout
    assert re.search(r"^  disk syncs per hour: \d+ \(RAM journal\); before: \d+",
                     r.stdout, re.M), r.stdout
    ratio, with_history = r.stdout.strip().splitlines()[-2:]
    assert ratio.startswith("secure ingest ratio: ")
    assert with_history.startswith("secure ingest ratio with history on: ")
    (result,) = tmp_path.glob("bench-*.json")
    data = json.loads(result.read_text())
    assert data["secure_ingest_ratio"] == pytest.approx(float(ratio.split(": ")[1]), abs=0.01)
    assert data["secure_ingest_ratio_with_history"] == pytest.approx(
        float(with_history.split(": ")[1].split()[0]), abs=0.01)
    assert data["fan-in"]["hw"]["count"] == data["fan-in"]["raw"]["count"]
    assert data["fan-in"]["hwh"]["history_points"] == data["fan-in"]["raw"]["count"]


def test_history_bench_at_a_tiny_scale_prints_its_figures_and_writes_json(
        tmp_path: Path) -> None:
    """`python -m bench.history` with two days of two Pis prints how it loaded, the size
    per reading, p50/p95 of now() and of each range (the store's, and the dashboard API's
    server time from the real dashboard process, after a first request not counted), and
    ends with `history query p95:` equal to the slowest API range in its JSON."""
    r = subprocess.run([sys.executable, "-m", "bench.history", "--days", "2", "--pis", "2",
                        "--queries", "20", "--out", str(tmp_path)],
                       cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "through SqliteHistory itself" in r.stdout
    assert "bytes per temperature reading" in r.stdout
    for name in ("now", "temperature 24h", "temperature 7d", "temperature 30d",
                 "temperature 1y", "presence 24h", "presence 1y", "commit of 1",
                 "api now", "api temperature 24h", "api temperature 1y", "api presence 24h",
                 "api presence 1y"):
        assert re.search(rf"^  {name} +p50 +[0-9.]+ ms +p95 +[0-9.]+ ms", r.stdout, re.M), name
        if name.startswith("api "):  # 20 counted, after a first one
            assert re.search(rf"^  {name} +.*\(20 queries, after a first one of [0-9.]+ ms\)$",
                             r.stdout, re.M), name
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"history query p95: [0-9.]+ ms", last)
    (result,) = tmp_path.glob("history-*.json")
    data = json.loads(result.read_text())
    assert data["load"]["temperature_readings"] == 2 * 2 * 8640
    assert data["query_p95_ms"] == pytest.approx(float(last.split()[-2]), abs=0.01)
    api = {k: v for k, v in data["queries"].items() if k.startswith("api ")}
    assert len(api) == 9 and all(v["n"] == 20 and v["first_ms"] > 0 for v in api.values())
