"""The benchmark keeps working: a smoke run with tiny numbers (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, clean_env

pytestmark = pytest.mark.broker


def test_bench_quick_prints_the_side_by_side_table_and_writes_json(tmp_path: Path) -> None:
    """`python -m bench.bench --quick` prints each scenario, the Pi view and the final
    `secure ingest ratio:` line, and writes its figures as JSON."""
    r = subprocess.run([sys.executable, "-m", "bench.bench", "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for heading in ("flood:", "steady:", "fan-in:", "Pi view", "raw paho", "homewatch"):
        assert heading in r.stdout
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("secure ingest ratio: ")
    (result,) = tmp_path.glob("bench-*.json")
    data = json.loads(result.read_text())
    assert data["secure_ingest_ratio"] == pytest.approx(float(last.split(": ")[1]), abs=0.01)
    assert data["fan-in"]["hw"]["count"] == data["fan-in"]["raw"]["count"]
