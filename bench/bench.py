"""`make bench`: the secure pipeline side by side with raw paho, on one loopback broker.

For each scenario a subscriber process and publisher processes run against a mosquitto
started from broker/mosquitto.conf (TLS, QoS 1), first as raw paho clients (no envelope),
then through Homewatch's own path (outbox, Fernet envelope, verification, replay
protection, manual acknowledgement). Prints a table with the ratio of each Homewatch
figure to raw paho's, ends with `secure ingest ratio: X.XX`, and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def finished(p: subprocess.Popen[str]) -> dict[str, Any]:
    """A worker's JSON report, once it exited successfully."""
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


class Bench:
    def __init__(self, work: Path, devices: int, conf: Path | None = None) -> None:
        self.work = work
        self.certs = work / "certs"
        run(["bash", str(ROOT / "scripts" / "gen-certs.sh"), "--out", str(self.certs)])
        names = ["subscriber"] + [f"bench-{i}" for i in range(devices)]
        for name in names:
            run([sys.executable, "-m", "homewatch.cli", "--certs", str(self.certs), "device",
                 "add", name], cwd=ROOT)
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(work / "broker.log", "w")  # noqa: SIM115
        self.broker = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "local-broker.sh"), "--certs", str(self.certs),
             "--data", str(work / "broker"), "--port", str(self.port),
             *(["--conf", str(conf)] if conf else [])],
            stdout=self.log, stderr=subprocess.STDOUT)
        time.sleep(1.0)
        self.url = f"mqtts://localhost:{self.port}/home"
        self.runs = 0

    def worker(self, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.Popen([sys.executable, "-m", "bench.worker", *args], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def scenario(self, mode: str, *, count: int, publishers: int, rate: float
                 ) -> dict[str, Any]:
        """One device's real publisher sends ``count`` readings (at ``rate``/s, 0 = flood)
        to a subscriber; or (``publishers`` > 1) the fan-in: that many devices flood
        ``count`` readings each into the broker, which queues them for the subscriber's
        persistent session while it is away; then the subscriber is started and drains
        them: its maximum sustained ingest, with nothing else competing for the CPU."""
        total = count * publishers
        if publishers > 1:
            return self.fan_in(mode, count=count, publishers=publishers)
        sub = self.worker("sub", mode, self.url, str(total), str(self.certs))
        assert sub.stdout is not None
        line = sub.stdout.readline()
        assert line.startswith("READY"), line + (sub.stderr.read() if sub.stderr else "")
        broker_cpu = cpu_seconds(self.broker.pid)
        pubs = [self.worker("pub", mode, self.url, str(count), str(self.certs),
                            "bench-0", str(rate))]
        pub_results = [finished(p) for p in pubs]
        s = finished(sub)
        return self.figures(mode, publishers=publishers, count=total, rate=rate, sub=s,
                            pubs=pub_results, broker_cpu=cpu_seconds(self.broker.pid)
                            - broker_cpu)

    def figures(self, mode: str, *, publishers: int, count: int, rate: float,
                sub: dict[str, Any], pubs: list[dict[str, Any]],
                broker_cpu: float) -> dict[str, Any]:
        """One run's figures from what the workers reported."""
        received = max(int(sub["received"]), 1)
        return {
            "mode": mode, "publishers": publishers, "count": count, "rate": rate,
            "msg_per_s": sub["msg_per_s"], "latency_p50_ms": sub["latency_p50_ms"],
            "latency_p99_ms": sub["latency_p99_ms"],
            "cpu_us_per_msg_publisher": 1e6 * sum(p["cpu_s"] for p in pubs) / received,
            "cpu_us_per_msg_broker": 1e6 * broker_cpu / received,
            "cpu_us_per_msg_subscriber": 1e6 * sub["cpu_s"] / received,
            "peak_rss_mib_publisher": max(p["peak_rss_mib"] for p in pubs),
            "peak_rss_mib_subscriber": sub["peak_rss_mib"],
            "peak_rss_mib_broker": peak_rss_mib(self.broker.pid),
            **({"history_points": sub["history_points"]} if "history_points" in sub else {}),
        }

    def fan_in(self, mode: str, *, count: int, publishers: int) -> dict[str, Any]:
        total = count * publishers
        self.runs += 1
        client_id = f"bench-{mode}-fanin-{self.runs}"
        finished(self.worker("prime", mode, self.url, "0", str(self.certs), client_id))
        pub = finished(self.worker("fanin", mode, self.url, str(count), str(self.certs),
                                   str(publishers)))
        broker_cpu = cpu_seconds(self.broker.pid)
        s = finished(self.worker("sub", mode, self.url, str(total), str(self.certs),
                                 client_id))
        return self.figures(mode, publishers=publishers, count=total, rate=0, sub=s,
                            pubs=[pub], broker_cpu=cpu_seconds(self.broker.pid) - broker_cpu)

    def pi_view(self, seconds: float) -> dict[str, Any]:
        """The real publisher at a normal rate (one reading cycle per 2 s, simulated
        sources), connected to a broker that acknowledges at once: with the RAM journal
        on a tmpfs (today's default on a Pi) and with the outbox alone (``--spill-after
        0``: every reading synced to disk, the design before the journal)."""
        journal = self.pi_run(seconds, journal=True)
        before = self.pi_run(seconds, journal=False)
        return {**journal, "outbox_only": before}

    def pi_run(self, seconds: float, *, journal: bool) -> dict[str, Any]:
        """One run: CPU, peak RSS, and what reached the disk in the measured window:
        ``/proc/PID/io`` write_bytes (pages dirtied in the page cache, counted when
        dirtied; a tmpfs write counts nothing) per reading stored, and the outbox's disk
        syncs (its debug log, read from a pipe so the log itself writes nothing)."""
        name = "journal" if journal else "outbox-only"
        state = self.work / f"pi-state-{name}"
        workdir = self.work / "pi"
        workdir.mkdir(exist_ok=True)
        if not (workdir / "certs").exists():
            (workdir / "certs").symlink_to(self.certs)
        ram = Path(tempfile.mkdtemp(prefix="homewatch-bench-journal-", dir="/dev/shm"))
        p = subprocess.Popen([sys.executable, "-m", "publisher", self.url, "--device",
                              "bench-0", "--interval", "2", "--scan-duration", "1",
                              "--temperature", "simulated", "--scanner", "simulated",
                              "--state-dir", str(state), "--journal-dir", str(ram),
                              "--spill-after", "5" if journal else "0",
                              "--log-level", "debug"], cwd=workdir,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        counts = {"stored": 0, "disk sync": 0}
        assert p.stderr is not None
        reader = threading.Thread(target=count_lines, args=(p.stderr, counts), daemon=True)
        reader.start()
        try:
            time.sleep(3)  # start-up (imports, TLS, the outbox's creation): not steady
            cpu0, t0 = cpu_seconds(p.pid), time.monotonic()
            io0, seen0 = write_bytes(p.pid), dict(counts)
            time.sleep(seconds)
            io1, seen1 = write_bytes(p.pid), dict(counts)
            cpu = cpu_seconds(p.pid) - cpu0
            elapsed = time.monotonic() - t0
            rss = peak_rss_mib(p.pid)
        finally:
            p.terminate()
            p.wait(30)
            reader.join(5)
            shutil.rmtree(ram, ignore_errors=True)
        readings = max(seen1["stored"] - seen0["stored"], 1)
        syncs = seen1["disk sync"] - seen0["disk sync"]
        return {"seconds": elapsed, "cpu_percent_of_a_core": 100 * cpu / elapsed,
                "peak_rss_mib": rss, "readings": readings,
                "disk_bytes_per_reading": (io1 - io0) / readings,
                "disk_syncs": syncs, "disk_syncs_per_hour": syncs * 3600 / elapsed}

    def close(self) -> None:
        self.broker.terminate()
        self.broker.wait(10)
        self.log.close()


ROWS = [("msg_per_s", "delivered msg/s", "{:.0f}"),
        ("latency_p50_ms", "latency p50 ms", "{:.2f}"),
        ("latency_p99_ms", "latency p99 ms", "{:.2f}"),
        ("cpu_us_per_msg_publisher", "CPU us/msg publisher", "{:.0f}"),
        ("cpu_us_per_msg_broker", "CPU us/msg broker", "{:.0f}"),
        ("cpu_us_per_msg_subscriber", "CPU us/msg subscriber", "{:.0f}"),
        ("peak_rss_mib_publisher", "peak RSS MiB publisher", "{:.1f}"),
        ("peak_rss_mib_subscriber", "peak RSS MiB subscriber", "{:.1f}")]


def write_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage so far (``/proc/PID/io``)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def count_lines(stream: Any, counts: dict[str, int]) -> None:
    """Count the lines of ``stream`` that contain each key of ``counts``."""
    for line in stream:
        for key in counts:
            if key in line:
                counts[key] += 1


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs (figure by figure)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def table(title: str, raw: dict[str, Any], hw: dict[str, Any]) -> str:
    lines = [f"\n{title}", f"  {'':<26}{'raw paho':>12}{'homewatch':>12}{'ratio':>8}"]
    for key, label, fmt in ROWS:
        r, h = raw[key], hw[key]
        ratio = f"{h / r:.2f}" if r else "-"
        lines.append(f"  {label:<26}{fmt.format(r):>12}{fmt.format(h):>12}{ratio:>8}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000, help="flood: readings per run")
    ap.add_argument("--rate", type=float, default=1000, help="steady rate, msg/s")
    ap.add_argument("--steady-seconds", type=float, default=5)
    ap.add_argument("--publishers", type=int, default=50, help="devices in the fan-in run")
    ap.add_argument("--fanin-count", type=int, default=190, help="readings per device "
                    "(devices x readings must stay within the broker's max_queued_messages)")
    ap.add_argument("--pi-seconds", type=float, default=30)
    ap.add_argument("--broker-conf", type=Path, help="broker configuration to measure "
                    "(default broker/mosquitto.conf)")
    ap.add_argument("--only", choices=("flood", "steady", "fan-in", "pi"), action="append",
                    help="run only this scenario (repeatable); pi: the Pi view")
    ap.add_argument("--repeat", type=int, default=3, help="runs per scenario and mode; "
                    "the table shows medians")
    ap.add_argument("--quick", action="store_true", help="tiny numbers (CI smoke run)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if args.quick:
        args.count, args.rate, args.steady_seconds = 200, 100, 1
        args.publishers, args.fanin_count, args.pi_seconds = 3, 20, 2
        args.repeat = 1
    if shutil.which("mosquitto") is None:
        sys.stderr.write("bench: error: mosquitto is not installed\n")
        return 2
    work = Path(tempfile.mkdtemp(prefix="homewatch-bench-"))
    bench = Bench(work, max(args.publishers, 1), args.broker_conf)
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    try:
        steady = int(args.rate * args.steady_seconds)
        scenarios = (("flood", {"count": args.count, "publishers": 1, "rate": 0}),
                     ("steady", {"count": steady, "publishers": 1, "rate": args.rate}),
                     ("fan-in", {"count": args.fanin_count,
                                 "publishers": args.publishers, "rate": 0}))
        for name, kw in scenarios:
            if args.only and name not in args.only:
                continue
            # hwh: the secure pipeline with the history on (fan-in: sustained ingest)
            modes = ("raw", "hw", "hwh") if name == "fan-in" else ("raw", "hw")
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for _ in range(args.repeat):  # alternating, so drift hits all alike
                for m in modes:
                    runs[m].append(bench.scenario(m, **kw))
            results[name] = {m: median_run(r) for m, r in runs.items()}
            results[name]["runs"] = runs
            print(table(f"{name}: {kw}, median of {args.repeat}", results[name]["raw"],
                        results[name]["hw"]), flush=True)
            if "hwh" in modes:
                print(table(f"{name} with the history on (every reading also written to "
                            "the SQLite history)", results[name]["raw"],
                            results[name]["hwh"]), flush=True)
        if not args.only or "pi" in args.only:
            results["pi"] = bench.pi_view(args.pi_seconds)
            pi, old = results["pi"], results["pi"]["outbox_only"]
            print(f"\nPi view (real publisher, one reading cycle per 2 s, simulated "
                  f"sources, broker acknowledging): {pi['cpu_percent_of_a_core']:.2f}% of "
                  f"a core, peak RSS {pi['peak_rss_mib']:.1f} MiB")
            print(f"  disk bytes per reading: {pi['disk_bytes_per_reading']:.0f} (RAM "
                  f"journal on a tmpfs, --spill-after 5); before: "
                  f"{old['disk_bytes_per_reading']:.0f} (outbox only, --spill-after 0)")
            print(f"  disk syncs per hour: {pi['disk_syncs_per_hour']:.0f} (RAM journal); "
                  f"before: {old['disk_syncs_per_hour']:.0f} (outbox only); over "
                  f"{pi['readings']} and {old['readings']} readings")
    finally:
        bench.close()
    if "fan-in" not in results:
        return 0
    raw_rate = results["fan-in"]["raw"]["msg_per_s"]
    ratio = results["fan-in"]["hw"]["msg_per_s"] / raw_rate
    results["secure_ingest_ratio"] = ratio
    with_history = results["fan-in"]["hwh"]["msg_per_s"] / raw_rate
    results["secure_ingest_ratio_with_history"] = with_history
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {path}")
    print(f"secure ingest ratio: {ratio:.2f}")
    print(f"secure ingest ratio with history on: {with_history:.2f} "
          f"({results['fan-in']['hwh']['msg_per_s']:.0f} msg/s, history off "
          f"{results['fan-in']['hw']['msg_per_s']:.0f} msg/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
