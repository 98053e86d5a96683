"""One side of a benchmark run, as its own process so its CPU and memory are its own.

    python -m bench.worker sub raw|hw URL COUNT CERTS
    python -m bench.worker pub raw|hw URL COUNT CERTS DEVICE RATE

Prints one JSON line: what it did, its CPU seconds and peak RSS.
"""

from __future__ import annotations

import asyncio
import io
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from homewatch.envelope import Opener
from homewatch.mqtt import Connection, ConnectionSettings
from homewatch.secrets import KeyStore, Secret, load_keyring
from homewatch.url import parse_broker_url
from publisher.app import Publisher
from publisher.outbox import Outbox
from subscriber.app import Subscriber

PAYLOAD_PAD = "x" * 90  # ~150-byte plaintext payloads, like a temperature reading


def usage() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": r.ru_utime + r.ru_stime, "peak_rss_mib": r.ru_maxrss / 1024}


def settings(url: str, certs: Path, user: str, client_id: str,
             clean: bool = True) -> ConnectionSettings:
    return ConnectionSettings(
        url=parse_broker_url(url), username=user, client_id=client_id,
        ca_file=certs / "ca.crt",
        password=Secret((certs / "clients" / user / "password").read_text().strip()),
        clean_session=clean)


def raw_client(s: ConnectionSettings) -> mqtt.Client:
    from homewatch.mqtt import make_client
    return make_client(s)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def sub(mode: str, url: str, count: int, certs: Path) -> dict[str, object]:
    latencies: list[float] = []
    done = threading.Event()
    first_last = [0.0, 0.0]
    stop = threading.Event()
    if mode == "raw":
        s = settings(url, certs, "subscriber", "bench-raw-sub")
        client = raw_client(s)
        got = [0]

        def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            now = time.time()
            if m.topic.endswith("/status"):
                return
            body = json.loads(m.payload)
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
        print("READY", flush=True)
        done.wait(600)
        client.disconnect()
        client.loop_stop()
        received = got[0]
    else:
        s = settings(url, certs, "subscriber", "bench-hw-sub")
        opener = Opener(KeyStore(certs / "clients" / "subscriber" / "keys"), base="home")
        out = io.StringIO()

        class Counting(Subscriber):
            def _show(self, topic: str, payload: bytes) -> bool:
                shown = super()._show(topic, payload)
                now = time.time()
                line = out.getvalue()
                out.seek(0)
                out.truncate()
                if shown and "Payload:" in line:
                    body = json.loads(line.split(",Payload:", 1)[1])
                    if isinstance(body, dict) and "t" in body:
                        latencies.append(now - body["t"])
                if self.accepted == 1:
                    first_last[0] = now
                if self.accepted >= count:
                    first_last[1] = now
                    stop.set()
                return shown

        state_dir = Path(tempfile.mkdtemp())
        from subscriber.app import ReplayState
        subscriber = Counting(opener, out, as_json=False,
                              state=ReplayState(state_dir / "r.json"))
        conn = Connection(s, on_message=subscriber.on_message,
                          subscriptions=(("home/#", 1),), manual_ack=True)
        subscriber.ack = conn.ack
        conn.start(threading.Event())
        conn.subscribed.wait(10)
        print("READY", flush=True)
        subscriber.run(stop)
        conn.stop()
        received = subscriber.accepted
    elapsed = max(first_last[1] - first_last[0], 1e-9)
    return {"received": received, "msg_per_s": received / elapsed,
            "latency_p50_ms": percentile(latencies, 50) * 1000,
            "latency_p99_ms": percentile(latencies, 99) * 1000, **usage()}


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

        async def go() -> None:
            for i in range(count):
                publisher.record("temperature", {"temperature": 21.5, "timestamp": time.time(),
                                                 "t": time.time(), "n": i})
                publisher.pump()
                if gap:
                    await asyncio.sleep(max(0.0, started + (i + 1) * gap - time.monotonic()))
            await publisher.flush(120)
        asyncio.run(go())
        conn.stop()
        outbox.close()
    return {"sent": count, "seconds": time.monotonic() - started, **usage()}


def main() -> None:
    role, mode, url, count, certs = sys.argv[1:6]
    if role == "sub":
        result = sub(mode, url, int(count), Path(certs))
    else:
        result = pub(mode, url, int(count), Path(certs), sys.argv[6], float(sys.argv[7]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
