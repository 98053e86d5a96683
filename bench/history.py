"""`make bench-history`: the history store with a year of five Pis, then the dashboard's
queries against it.

Loads ``--days`` of readings for ``--pis`` Pis at one reading every ``--interval`` s into
a fresh database through :class:`~homewatch.history.sqlite.SqliteHistory` itself (one
``temperature()`` call per reading, ``presence()`` for each report that changes
something, one commit per simulated day), plus availability, scanner and rejection
events. Then prints the database size per temperature reading, the p50/p95 time of
``now()`` and of each range's ``temperature()`` and ``presence()`` over many randomised
queries from a read-only reader (the dashboard's side; the OS page cache is warm), the
same after a restart (the file evicted from the OS page cache before each query, a new
reader each time), what one commit costs the writer, and ends with ``history query p95:
X ms`` (the slowest range, warm). Writes JSON to bench/results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import html
import http.client
import json
import math
import os
import platform
import random
import secrets
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from homewatch.history import RANGES, Sighting
from homewatch.history.sqlite import SqliteHistory, SqliteHistoryReader, open_reader

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400
PEOPLE = ("Annas Watch", "Bens Phone", "Cleos Tag", "Dans Phone")
REASONS = ("decrypt", "replay", "expired", "malformed", "unknown-device")


class Clock:
    """The load's clock: when the subscriber would have received what it writes."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def celsius(pi: int, at: float, rng: random.Random) -> float:
    """A room's temperature: its own level, a day's swing, a season's, sensor noise."""
    day = math.sin(2 * math.pi * ((at % DAY) / DAY - 0.375))
    season = math.cos(2 * math.pi * ((at / DAY - 15) % 365.25) / 365.25)
    return round(18.5 + pi * 0.7 + 1.5 * day + 2.5 * season + rng.gauss(0, 0.15), 2)


def day_of(person: int, day_start: float, rooms: int, rng: random.Random
           ) -> list[tuple[float, frozenset[int]]]:
    """A person's day as (from, Pis that see them home): out on workdays (and on some
    weekend afternoons), moving between rooms every 20 min to 2 h while home."""
    weekday = dt.datetime.fromtimestamp(day_start, dt.UTC).weekday()
    if weekday < 5:
        out = (day_start + rng.gauss(8 * 3600, 2700), day_start + rng.gauss(17.5 * 3600, 5400))
    elif rng.random() < 0.5:
        out = (day_start + rng.gauss(11 * 3600, 3600), day_start + rng.gauss(15 * 3600, 3600))
    else:
        out = (day_start + DAY, day_start + DAY)
    segments: list[tuple[float, frozenset[int]]] = []
    t = day_start
    while t < day_start + DAY:
        if out[0] <= t < out[1]:
            segments.append((t, frozenset()))
            t = out[1]
            continue
        room = rng.randrange(rooms)
        seen = {room} | ({(room + 1) % rooms} if rng.random() < 0.3 else set())
        segments.append((t, frozenset(seen)))
        t += rng.uniform(1200, 7200)
        if t > out[0] > segments[-1][0]:
            t = out[0]
    return segments


def presence_reports(day_start: float, pis: int, state: dict[tuple[int, int], bool],
                     rng: random.Random) -> list[tuple[float, int, list[Sighting]]]:
    """The day's presence reports that change something: (time, Pi, full report)."""
    moves = sorted((t, person, seen) for person in range(len(PEOPLE))
                   for t, seen in day_of(person, day_start, pis, rng))
    reports = []
    for t, person, seen in moves:
        for pi in range(pis):
            if state.get((pi, person), False) != (pi in seen):
                state[pi, person] = pi in seen
                reports.append((t, pi, [
                    Sighting(name=name, state="home" if state.get((pi, p)) else "away",
                             last_seen=t if state.get((pi, p)) else None)
                    for p, name in enumerate(PEOPLE)]))
    return reports


def status_events(w: SqliteHistory, day_start: float, names: list[str],
                  rng: random.Random) -> Iterator[tuple[float, Callable[[], None]]]:
    """Now and then a Pi reboots, its scanner fails for a while; a few messages a day
    are rejected."""
    for name in names:
        if rng.random() < 1 / 30:
            t = day_start + rng.uniform(0, DAY - 600)
            yield t, functools.partial(w.availability, name, t, False)
            yield t + 120, functools.partial(w.availability, name, t + 120, True)
        if rng.random() < 1 / 30:
            t = day_start + rng.uniform(0, DAY - 600)
            yield t, functools.partial(w.scanner, name, t, "error", "adapter gone")
            yield t + 600, functools.partial(w.scanner, name, t + 600, "ok")
        for _ in range(rng.randrange(3)):
            t = day_start + rng.uniform(0, DAY)
            reason = rng.choice(REASONS)
            device = None if reason == "unknown-device" else name
            yield t, functools.partial(w.rejected, device, reason, t)


def load(path: Path, *, days: int, pis: int, interval: float, end: float,
         seed: int = 1) -> dict[str, Any]:
    """A fresh history of ``days`` ending at ``end``, written as the subscriber would."""
    rng = random.Random(seed)
    names = [f"pi-{i}" for i in range(pis)]
    start = end - days * DAY
    clock = Clock(start)
    w = SqliteHistory(path, clock=clock)
    for name in names:
        w.key_updated(name, start - 30 * DAY)
        w.availability(name, start, True)
        w.scanner(name, start, "ok")
    state: dict[tuple[int, int], bool] = {}
    offsets = [rng.uniform(0, interval) for _ in names]
    readings = presence = 0
    began = time.perf_counter()
    for day in range(days):
        day_start = start + day * DAY
        events: list[tuple[float, Callable[[], None]]] = [
            (t, functools.partial(w.presence, names[pi], t, s))
            for t, pi, s in presence_reports(day_start, pis, state, rng)]
        presence += len(events)
        events += status_events(w, day_start, names, rng)
        events.sort(key=lambda e: e[0])
        ticks = int(DAY // interval)
        temperature = w.temperature
        for tick in range(ticks):
            t = day_start + tick * interval
            while events and events[0][0] <= t:
                clock.now = events[0][0]
                events.pop(0)[1]()
            clock.now = t + interval
            for pi, name in enumerate(names):
                temperature(name, t + offsets[pi] + rng.random() * 0.05, celsius(pi, t, rng))
            readings += pis
        w.commit()
    w.close()
    seconds = time.perf_counter() - began
    return {"days": days, "pis": pis, "interval_s": interval, "start": start, "end": end,
            "temperature_readings": readings, "presence_reports": presence,
            "load_seconds": seconds, "load_readings_per_s": readings / seconds}


def breakdown(path: Path) -> dict[str, int]:
    """Bytes per table (with its indexes), from SQLite's dbstat."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {name: int(size) for name, size in con.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")}
    except sqlite3.OperationalError:  # an SQLite built without dbstat
        return {}
    finally:
        con.close()


def timed(fn: Callable[[], object], n: int, before: Callable[[], object] | None = None
          ) -> dict[str, float]:
    """p50/p95 (ms) of ``n`` calls of ``fn`` (``before`` runs untimed before each)."""
    times = []
    for _ in range(n):
        if before is not None:
            before()
        began = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - began))
    times.sort()
    return {"p50_ms": statistics.median(times),
            "p95_ms": times[min(n - 1, math.ceil(0.95 * n) - 1)], "n": n}


def queries(r: SqliteHistoryReader, info: dict[str, Any], n: int, seed: int = 2
            ) -> dict[str, dict[str, float]]:
    """now(), then per range temperature() of a random Pi and presence() ending at a
    random time within the loaded data."""
    rng = random.Random(seed)
    start, end, pis = info["start"], info["end"], info["pis"]
    out = {"now": timed(lambda: r.now(end), n)}
    for label, span in RANGES.items():
        def window(span: float = span) -> tuple[float, float]:
            stop = rng.uniform(min(start + span, end), end)
            return stop - span, stop

        points: list[int] = []

        def chart(window: Callable[[], tuple[float, float]] = window,
                  points: list[int] = points) -> None:
            lo, hi = window()
            points.append(len(r.temperature(f"pi-{rng.randrange(pis)}", lo, hi)))

        out[f"temperature {label}"] = {**timed(chart, n),
                                       "buckets_mean": statistics.mean(points)}
        def timeline(window: Callable[[], tuple[float, float]] = window) -> None:
            r.presence(*window())

        out[f"presence {label}"] = timed(timeline, n)
    return out


def _cookies(response: http.client.HTTPResponse, jar: dict[str, str]) -> None:
    for line in response.headers.get_all("Set-Cookie") or []:
        name, _, rest = line.partition("=")
        jar[name] = rest.split(";", 1)[0]


def api_server_times(path: Path, info: dict[str, Any], n: int, seed: int = 4
                     ) -> dict[str, dict[str, float]]:
    """The dashboard itself (a real process, over HTTPS) on the loaded database: ``n``
    requests per API route and range, logged in, after a first one that is not counted;
    each one's server time is what the dashboard says it spent (``Server-Timing``:
    history reads and JSON, without TLS and the network)."""
    rng = random.Random(seed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEWATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory(prefix="homewatch-bench-web-") as tmp:
        certs = Path(tmp) / "certs"
        subprocess.run(["bash", str(ROOT / "scripts" / "gen-certs.sh"), "--out", str(certs)],
                       check=True, capture_output=True)
        password = secrets.token_urlsafe(18)
        subprocess.run([sys.executable, "-m", "homewatch.cli", "--certs", str(certs),
                        "dashboard", "password", "--stdin"], input=password + "\n",
                       text=True, check=True, capture_output=True, cwd=ROOT, env=env)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "dashboard", "--history", str(path), "--dashboard-dir",
             str(certs / "dashboard"), "--bind", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            context = ssl.create_default_context(cafile=str(certs / "dashboard-ca.crt"))
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
            for _ in range(100):
                try:
                    conn.connect()
                    break
                except OSError:
                    time.sleep(0.1)
            jar: dict[str, str] = {}

            def request(method: str, target: str, body: str | None = None
                        ) -> http.client.HTTPResponse:
                headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}
                if body is not None:
                    headers["Content-Type"] = "application/x-www-form-urlencoded"
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                _cookies(response, jar)
                return response

            page = request("GET", "/login")
            conn.request("GET", "/login", headers={
                "Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())})
            form = conn.getresponse()
            text = form.read().decode()
            _cookies(form, jar)
            token = text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            done = request("POST", "/login", urllib.parse.urlencode(
                {"csrf": html.unescape(token), "password": password, "next": "/"}))
            if done.status != 303 or page.status != 200:
                raise RuntimeError(f"bench could not log in to the dashboard ({done.status})")

            def server_ms(target: str) -> float:
                response = request("GET", target)
                if response.status != 200:
                    raise RuntimeError(f"{target}: HTTP {response.status}")
                return float(response.headers["Server-Timing"].split("dur=", 1)[1])

            def stats(targets: Callable[[], str]) -> dict[str, float]:
                first = server_ms(targets())  # shown apart, not counted
                times = sorted(server_ms(targets()) for _ in range(n))
                return {"p50_ms": statistics.median(times),
                        "p95_ms": times[min(n - 1, math.ceil(0.95 * n) - 1)], "n": n,
                        "first_ms": first}

            out = {"api now": stats(lambda: "/api/now")}
            for label in RANGES:
                out[f"api temperature {label}"] = stats(
                    lambda label=label: f"/api/temperature?device=pi-"
                    f"{rng.randrange(info['pis'])}&range={label}")
                out[f"api presence {label}"] = stats(
                    lambda label=label: f"/api/presence?range={label}")
            conn.close()
            return out
        finally:
            proc.terminate()
            proc.wait(30)


def evict(path: Path) -> None:
    """Drop the file's pages from the OS page cache (this file's only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold_queries(path: Path, info: dict[str, Any], n: int, seed: int = 3
                 ) -> dict[str, dict[str, float]]:
    """The first view after a restart: before each query the file leaves the OS page
    cache, and a new reader opens it (included in the time)."""
    rng = random.Random(seed)
    start, end, pis = info["start"], info["end"], info["pis"]

    def one(kind: str, span: float) -> Callable[[], None]:
        def query() -> None:
            stop = rng.uniform(min(start + span, end), end)
            with open_reader(path) as r:
                if kind == "now":
                    r.now(end)
                elif kind == "temperature":
                    r.temperature(f"pi-{rng.randrange(pis)}", stop - span, stop)
                else:
                    r.presence(stop - span, stop)
        return query

    kinds = [("now", "now", 0.0)] + [(f"{kind} {label}", kind, span)
                                       for label, span in RANGES.items()
                                       for kind in ("temperature", "presence")]
    return {f"cold {name}": timed(one(kind, span), n, before=lambda: evict(path))
            for name, kind, span in kinds}


def commit_cost(path: Path, end: float, n: int) -> dict[str, dict[str, float]]:
    """What a commit costs the subscriber: one reading per commit, and 100."""
    clock = Clock(end)
    out = {}
    with SqliteHistory(path, clock=clock) as w:
        for per in (1, 100):
            def batch(per: int = per) -> None:
                for _ in range(per):
                    clock.now += 0.01
                    w.temperature("pi-0", clock.now, 20.0)
                w.commit()
            out[f"commit of {per}"] = timed(batch, n)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--pis", type=int, default=5)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between readings")
    ap.add_argument("--queries", type=int, default=500, help="randomised queries per kind")
    ap.add_argument("--db", type=Path, help="where to build the database (default: a new "
                    "temporary directory, removed afterwards)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    work = None if args.db else tempfile.TemporaryDirectory(prefix="homewatch-history-")
    path = args.db or Path(work.name) / "history.db"  # type: ignore[union-attr]
    if path.exists():
        raise SystemExit(f"bench.history: error: {path} exists; give a new --db")
    end = float(int(time.time()) // 60 * 60)
    try:
        return report(path, args, end)
    finally:
        if work is not None:
            work.cleanup()


def report(path: Path, args: argparse.Namespace, end: float) -> int:
    print(f"history: loading {args.days} days x {args.pis} Pis, a reading every "
          f"{args.interval:g} s ...", flush=True)
    info = load(path, days=args.days, pis=args.pis, interval=args.interval, end=end)
    size = os.path.getsize(path)
    per_reading = size / info["temperature_readings"]
    tables = breakdown(path)
    print(f"history: loaded {info['temperature_readings']:,} temperature readings and "
          f"{info['presence_reports']:,} presence reports in {info['load_seconds']:.0f} s "
          f"({info['load_readings_per_s']:,.0f} readings/s) through SqliteHistory itself: "
          "temperature() per reading, presence() per report that changes something, "
          "one commit per simulated day")
    print(f"history database: {size / 2**20:.1f} MiB, {per_reading:.1f} bytes per "
          "temperature reading (the whole file: raw points, rollups, presence, status)")
    if tables:
        print("  by table: " + ", ".join(f"{name} {b / info['temperature_readings']:.1f}"
                                          for name, b in tables.items() if b > 1 << 16)
              + " bytes per reading")
    with open_reader(path) as r:
        stats = queries(r, info, args.queries)
    stats.update(cold_queries(path, info, min(args.queries, 50)))
    stats.update(commit_cost(path, end, min(args.queries, 200)))
    stats.update(api_server_times(path, info, min(args.queries, 200)))
    for name, s in stats.items():
        extra = f", {s['buckets_mean']:.0f} buckets" if "buckets_mean" in s else ""
        extra += f", after a first one of {s['first_ms']:.2f} ms" if "first_ms" in s else ""
        print(f"  {name:<23} p50 {s['p50_ms']:7.2f} ms   p95 {s['p95_ms']:7.2f} ms   "
              f"({s['n']} queries{extra})")
    ranges = {k: v for k, v in stats.items()
              if k.startswith(("api temperature ", "api presence "))}
    cold = {k: v for k, v in stats.items() if k.startswith("cold ") and k != "cold now"}
    slowest_cold = max(cold, key=lambda k: cold[k]["p95_ms"])
    slowest = max(ranges, key=lambda k: ranges[k]["p95_ms"])
    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "platform": platform.platform(), "sqlite": sqlite3.sqlite_version},
               "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "load": info, "bytes": size, "bytes_per_reading": per_reading,
               "tables": tables, "queries": stats, "slowest_range": slowest,
               "query_p95_ms": ranges[slowest]["p95_ms"],
               "cold_query_p95_ms": cold[slowest_cold]["p95_ms"]}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"history-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")
    print(f"slowest range (the dashboard API's server time, Server-Timing): "
          f"{slowest.removeprefix('api ')}; the store's own slowest query after a "
          f"restart (file not in the OS cache, a new reader): "
          f"{slowest_cold.removeprefix('cold ')}, p95 "
          f"{cold[slowest_cold]['p95_ms']:.2f} ms")
    print(f"history query p95: {ranges[slowest]['p95_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
