"""One side of a benchmark run, as its own process so its CPU and memory are its own.

    python -m bench.worker sub raw|hw|hwh URL COUNT CERTS
    python -m bench.worker pub raw|hw|hwh URL COUNT CERTS DEVICE RATE
    python -m bench.worker fanin raw|hw|hwh URL COUNT CERTS DEVICES
    python -m bench.worker prime raw|hw|hwh URL 0 CERTS CLIENT_ID
    python -m bench.worker sub raw|hw|hwh URL COUNT CERTS CLIENT_ID

Prints one JSON line: what it did, the CPU seconds it spent on the measured part (start-up
and connecting excluded) and its peak RSS. ``fanin`` is many devices in one process, one
connection each, flooding readings made beforehand (sealed envelopes for hw, plain JSON
for raw): the same cheap source for both modes, so the subscriber is what is measured.
``hwh`` is ``hw`` with the history on: the subscriber also writes every reading to a
fresh SQLite history database, as it does in the Compose stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from homewatch.envelope import Opener, Reading
from homewatch.mqtt import Connection, ConnectionSettings
from homewatch.secrets import KeyStore, Secret, load_keyring
from homewatch.url import parse_broker_url
from publisher.app import Publisher
from publisher.outbox import Outbox
from subscriber.app import Subscriber

PAYLOAD_PAD = "x" * 90  # ~150-byte plaintext payloads, like a temperature reading


def cpu_now() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def usage(cpu_start: float) -> dict[str, float]:
    """CPU since ``cpu_start`` (the measured part) and the peak RSS."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": cpu_now() - cpu_start, "peak_rss_mib": r.ru_maxrss / 1024}


def settings(url: str, certs: Path, user: str, client_id: str,
             clean: bool = True) -> ConnectionSettings:
    return ConnectionSettings(
        url=parse_broker_url(url), username=user, client_id=client_id,
        ca_file=certs / "ca.crt",
        password=Secret((certs / "clients" / user / "password").read_text().strip()),
        clean_session=clean)


def raw_client(s: ConnectionSettings) -> mqtt.Client:
    """Plain paho, used the plain way: its own Client class, TLS, user and password."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                         clean_session=s.clean_session, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(s.ca_file))
    assert s.password is not None
    client.username_pw_set(s.username, s.password.reveal())
    return client


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def prime(mode: str, url: str, certs: Path, client_id: str) -> dict[str, object]:
    """Make ``client_id``'s persistent session (subscribed to home/#) and leave: the
    broker then keeps what is published for it, to be drained later."""
    s = settings(url, certs, "subscriber", client_id, clean=False)
    client = raw_client(s)
    subscribed = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("home/#", 1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(s.url.host, s.url.port)
    client.loop_start()
    assert subscribed.wait(10), "no subscription"
    client.disconnect()
    client.loop_stop()
    return {"primed": client_id}


def forget_session(url: str, certs: Path, client_id: str) -> None:
    """Connect once with a clean session: the broker drops ``client_id``'s persistent
    session, so it does not go on queueing the next runs' readings."""
    s = settings(url, certs, "subscriber", client_id, clean=True)
    client = raw_client(s)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect(s.url.host, s.url.port)
    client.loop_start()
    connected.wait(10)
    client.disconnect()
    client.loop_stop()


def sub(mode: str, url: str, count: int, certs: Path,
        client_id: str | None = None) -> dict[str, object]:
    """Receive ``count`` readings; with ``client_id``, as that (primed) persistent
    session, whose queue the broker already holds."""
    latencies: list[float] = []
    done = threading.Event()
    first_last = [0.0, 0.0]
    stop = threading.Event()
    out = open(os.devnull, "w")  # noqa: SIM115 - stdout, minus a terminal
    if mode == "raw":
        s = (settings(url, certs, "subscriber", client_id, clean=False) if client_id
             else settings(url, certs, "subscriber", "bench-raw-sub"))
        client = raw_client(s)
        got = [0]

        def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            now = time.time()
            if m.topic.endswith("/status"):
                return
            body = json.loads(m.payload)  # as the tutorial's subscriber: parse, print
            out.write(f"Topic:{m.topic},Payload:{m.payload.decode()}\n")
            out.flush()
            latencies.append(now - body["t"])
            got[0] += 1
            if got[0] == 1:
                first_last[0] = now
            if got[0] >= count:
                first_last[1] = now
                done.set()
        ready = threading.Event()
        client.on_message = on_message
        client.on_connect = lambda c, u, f, rc, p: c.subscribe("home/#", 1)
        client.on_subscribe = lambda *a: ready.set()
        client.connect(s.url.host, s.url.port)
        client.loop_start()
        ready.wait(10)
        cpu_start = cpu_now()
        print("READY", flush=True)
        done.wait(600)
        client.disconnect()
        client.loop_stop()
        received = got[0]
        spent = usage(cpu_start)
        if client_id:
            forget_session(url, certs, client_id)
    else:
        # As the real subscriber: a persistent session (clean session off).
        s = settings(url, certs, "subscriber", client_id or f"bench-hw-sub-{os.getpid()}",
                     clean=False)

        class Timed(Opener):
            """The real opener, noting when each reading arrived (no extra parsing)."""

            def open(self, topic: str, payload: bytes) -> Reading:
                reading = super().open(topic, payload)
                now = time.time()
                if isinstance(reading.data, dict) and "t" in reading.data:
                    latencies.append(now - reading.data["t"])
                if not first_last[0]:
                    first_last[0] = now
                first_last[1] = now
                return reading

        opener = Timed(KeyStore(certs / "clients" / "subscriber" / "keys"), base="home")
        state_dir = Path(tempfile.mkdtemp())
        from homewatch.history.sqlite import SqliteHistory
        from subscriber.app import ReplayState
        from subscriber.sinks import Sink
        from subscriber.sinks.console import ConsoleSink
        from subscriber.sinks.history import HistorySink
        sinks: list[Sink] = [ConsoleSink(out, as_json=False)]
        if mode == "hwh":  # history on: every reading also into a fresh history db
            sinks.append(HistorySink(SqliteHistory(state_dir / "history.db")))
        subscriber = Subscriber(opener, sinks, state=ReplayState(state_dir / "r.json"))
        conn = Connection(s, on_message=subscriber.on_message,
                          on_read_batch=subscriber.end_batch,
                          subscriptions=(("home/#", 1),), manual_ack=True)
        subscriber.ack = conn.ack
        conn.start(threading.Event())
        conn.subscribed.wait(10)
        cpu_start = cpu_now()
        print("READY", flush=True)
        subscriber.run(stop, count=count)
        conn.stop()
        subscriber.save()
        subscriber.close()
        received = subscriber.accepted
        spent = usage(cpu_start)
        if mode == "hwh":  # what the history kept: every reading, as a point
            import sqlite3
            db = sqlite3.connect(state_dir / "history.db")
            spent["history_points"] = db.execute("SELECT count(*) FROM temperature").fetchone()[0]
            db.close()
        forget_session(url, certs, s.client_id)
    elapsed = max(first_last[1] - first_last[0], 1e-9)
    return {"received": received, "msg_per_s": received / elapsed,
            "latency_p50_ms": percentile(latencies, 50) * 1000,
            "latency_p99_ms": percentile(latencies, 99) * 1000, **spent}


def pub(mode: str, url: str, count: int, certs: Path, device: str,
        rate: float) -> dict[str, object]:
    gap = 1.0 / rate if rate else 0.0
    started = time.monotonic()
    if mode == "raw":
        s = settings(url, certs, device, f"bench-raw-{device}")
        client = raw_client(s)
        client.max_queued_messages_set(0)
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: connected.set()
        client.connect(s.url.host, s.url.port)
        client.loop_start()
        connected.wait(10)
        cpu_start, started = cpu_now(), time.monotonic()
        infos = []
        for i in range(count):
            body = json.dumps({"temperature": 21.5, "timestamp": time.time(), "t": time.time(),
                               "n": i, "pad": PAYLOAD_PAD})
            infos.append(client.publish(f"home/{device}/temperature", body, qos=1))
            if gap:
                time.sleep(max(0.0, started + (i + 1) * gap - time.monotonic()))
        for info in infos:
            info.wait_for_publish(120)
        client.disconnect()
        client.loop_stop()
    else:
        s = settings(url, certs, device, f"bench-hw-{device}")
        state = Path(tempfile.mkdtemp())
        outbox = Outbox(state / "o.sqlite", limit=count + 10)
        publisher = Publisher(load_keyring(certs / "clients" / device / "fernet.key"),
                              device=device, base="home", outbox=outbox)
        conn = Connection(s, on_published=publisher.on_published,
                          on_connected=publisher.on_connected)
        publisher.conn = conn
        conn.start(threading.Event())
        cpu_start, started = cpu_now(), time.monotonic()

        async def go() -> None:
            # As the program runs it: readings handed to the publisher, its pump task
            # (woken by them and by acknowledgements) committing and sending.
            stop = asyncio.Event()
            pumping = asyncio.ensure_future(publisher.pump_forever(stop))
            for i in range(count):
                publisher.record("temperature", {"temperature": 21.5, "timestamp": time.time(),
                                                 "t": time.time(), "n": i})
                if gap:
                    await asyncio.sleep(max(0.0, started + (i + 1) * gap - time.monotonic()))
                elif i % 100 == 99:
                    await asyncio.sleep(0)  # a sensor loop yields between readings
            await publisher.flush(120)
            stop.set()
            await pumping
        asyncio.run(go())
        conn.stop()
        outbox.close()
    return {"sent": count, "seconds": time.monotonic() - started, **usage(cpu_start)}


def fanin(mode: str, url: str, count: int, certs: Path, devices: int) -> dict[str, object]:
    """``devices`` connections flood ``count`` readings each, made before the clock starts."""
    import os

    from homewatch.envelope import seal
    names = [f"bench-{i}" for i in range(devices)]
    base_seq = time.time_ns() // 1000
    payloads: dict[str, list[bytes]] = {}
    for name in names:
        ring = load_keyring(certs / "clients" / name / "fernet.key")
        topic = f"home/{name}/temperature"
        now = time.time()
        # each reading taken at a time of its own, with a value of its own, as a Pi's
        # are: the history (hwh) keeps every one of them as a point
        bodies = [{"temperature": 20.0 + i % 500 / 100, "timestamp": now, "t": now, "n": i,
                   "pad": PAYLOAD_PAD} for i in range(count)]
        payloads[name] = ([seal(ring, topic=topic, device=name, seq=base_seq + i, data=b,
                                taken=now - (count - i) / 1000)
                           for i, b in enumerate(bodies)] if mode != "raw"
                          else [json.dumps(b).encode() for b in bodies])
    clients = []
    for name in names:
        s = settings(url, certs, name, f"bench-{mode}-{name}-{os.getpid()}")
        client = raw_client(s)
        client.max_queued_messages_set(0)
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p, e=connected: e.set()
        client.connect(s.url.host, s.url.port)
        client.loop_start()
        assert connected.wait(10), f"{name} did not connect"
        clients.append((name, client))
    cpu_start, started = cpu_now(), time.monotonic()
    infos: list[mqtt.MQTTMessageInfo] = []

    def flood(name: str, client: mqtt.Client) -> None:
        topic = f"home/{name}/temperature"
        infos.extend(client.publish(topic, p, qos=1) for p in payloads[name])

    threads = [threading.Thread(target=flood, args=c) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for info in infos:
        info.wait_for_publish(300)
    for _, client in clients:
        client.disconnect()
        client.loop_stop()
    return {"sent": count * devices, "seconds": time.monotonic() - started, **usage(cpu_start)}


def main() -> None:
    role, mode, url, count, certs = sys.argv[1:6]
    if role == "prime":
        result = prime(mode, url, Path(certs), sys.argv[6])
    elif role == "sub":
        result = sub(mode, url, int(count), Path(certs), *sys.argv[6:7])
    elif role == "fanin":
        result = fanin(mode, url, int(count), Path(certs), int(sys.argv[6]))
    else:
        result = pub(mode, url, int(count), Path(certs), sys.argv[6], float(sys.argv[7]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
