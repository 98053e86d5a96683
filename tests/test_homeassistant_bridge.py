"""The Home Assistant bridge, as Home Assistant sees it: the real subscriber with
``--homeassistant`` on a real broker, Pis publishing sealed readings (the real publisher,
or real paho clients holding a device's key), and a real paho client logged in as the
``homeassistant`` identity reading what the bridge published, the way Home Assistant's
MQTT integration does. Also the ACL: who may read and write the bridge's topics."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from homewatch.envelope import seal
from homewatch.secrets import load_keyring
from subscriber.sinks.homeassistant import fold
from tests.helpers import (
    ROOT,
    Broker,
    clean_env,
    gen_certs,
    homewatch_cli,
    paho_client,
    password,
    python_m,
    running,
    stop_client,
)
from tests.test_end_to_end import wait_subscribed

pytestmark = pytest.mark.broker

PIS = ("demo-pi", "pi-hall", "pi-porch", "pi-gone", "pi-back", "pi-attic")
DISCOVERY = "homeassistant"
BRIDGE = "homewatch"


@pytest.fixture(scope="module")
def ha_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the subscriber, the Pis, and the homeassistant identity (`homewatch
    homeassistant add`), as a user makes them."""
    out = tmp_path_factory.mktemp("ha-certs")
    gen_certs(out)
    for name in ("subscriber", *PIS):
        homewatch_cli(out, "device", "add", name)
    homewatch_cli(out, "homeassistant", "add")
    return out


@pytest.fixture(scope="module")
def ha_broker(ha_certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The real mosquitto with those identities' password and ACL files."""
    b = Broker(certs=ha_certs, workdir=tmp_path_factory.mktemp("ha-broker")).start()
    yield b
    b.stop()


class Watcher:
    """A real paho client as one identity (``homeassistant`` by default), subscribed to
    topic filters; keeps every message it receives, in order."""

    def __init__(self, broker: Broker, certs: Path, filters: tuple[str, ...],
                 user: str = "homeassistant") -> None:
        self.client, rc = paho_client(broker, certs, user, password(certs, user),
                                      client_id=f"watch-{uuid.uuid4().hex[:8]}")
        assert rc is not None and not rc.is_failure, rc
        self.got: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        granted: queue.Queue[object] = queue.Queue()
        self.client.on_message = lambda c, u, m: self.got.put((m.topic, bytes(m.payload),
                                                               bool(m.retain)))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: granted.put(rcs)
        for topic in filters:
            self.client.subscribe(topic, qos=1)
            granted.get(timeout=5)

    def drain(self) -> None:
        while True:
            try:
                self.seen.append(self.got.get_nowait())
            except queue.Empty:
                return

    def latest(self) -> dict[str, bytes]:
        self.drain()
        return {topic: payload for topic, payload, _ in self.seen}

    def wait(self, what: str, ok: Callable[[dict[str, bytes]], bool],
             timeout: float = 30.0, poke: Callable[[], None] | None = None) -> dict[str, bytes]:
        """Until ``ok(latest payload per topic)``; ``poke`` runs every second meanwhile."""
        deadline = time.monotonic() + timeout
        next_poke = 0.0
        while time.monotonic() < deadline:
            latest = self.latest()
            if ok(latest):
                return latest
            if poke is not None and time.monotonic() >= next_poke:
                poke()
                next_poke = time.monotonic() + 1.0
            time.sleep(0.05)
        raise AssertionError(f"{what}: not within {timeout} s; got {self.latest()}")

    def wait_live(self, topic: str, payload: bytes, timeout: float = 30.0) -> None:
        """Until ``payload`` arrives on ``topic`` as a live message (not a retained copy
        from before this subscription)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            if (topic, payload, False) in self.seen:
                return
            time.sleep(0.05)
        raise AssertionError(f"no live {payload!r} on {topic} within {timeout} s")

    def close(self) -> None:
        stop_client(self.client)


def bridge_ready(watch: Watcher, pi: str) -> None:
    """The bridge's subscription is active: the Pi's retained ``online`` status reached
    it and it passed it on (a reading sent before that would be lost for a new session)."""
    watch.wait_live(f"{BRIDGE}/pi/{fold(pi)}/status", b"online")


def retained(broker: Broker, certs: Path, topic_filter: str,
             user: str = "homeassistant") -> dict[str, bytes]:
    """What a new subscription gets: the retained messages (until a marker the
    subscriber identity publishes after subscribing arrives)."""
    w = Watcher(broker, certs, (topic_filter, f"{BRIDGE}/test-marker/#"), user=user)
    marker = f"{BRIDGE}/test-marker/{uuid.uuid4().hex[:8]}"
    publish_as(broker, certs, "subscriber", marker, b"m")
    try:
        got = w.wait("the marker", lambda latest: marker in latest, timeout=10)
    finally:
        w.close()
    return {t: p for t, p in got.items() if not t.startswith(f"{BRIDGE}/test-marker/")}


def publish_as(broker: Broker, certs: Path, user: str, topic: str, payload: bytes,
               *, retain: bool = False) -> None:
    client, rc = paho_client(broker, certs, user, password(certs, user))
    assert rc is not None and not rc.is_failure
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)  # even if denied
    stop_client(client)


class Pi:
    """A Pi's side with a real paho client: its status and sealed readings."""

    def __init__(self, broker: Broker, certs: Path, name: str) -> None:
        self.name = name
        self.ring = load_keyring(certs / "clients" / name / "fernet.key")
        self.client, rc = paho_client(broker, certs, name, password(certs, name),
                                      client_id=f"{name}-{uuid.uuid4().hex[:6]}")
        assert rc is not None and not rc.is_failure, rc
        self.seq = time.time_ns() // 1000

    def status(self, value: str) -> None:
        self.client.publish(f"home/{self.name}/status", value.encode(), qos=1,
                            retain=True).wait_for_publish(5)

    def send(self, kind: str, data: object, simulated: str | None = None) -> None:
        self.seq += 1
        topic = f"home/{self.name}/{kind}"
        token = seal(self.ring, topic=topic, device=self.name, seq=self.seq, data=data,
                     taken=time.time(), simulated=simulated)
        self.client.publish(topic, token, qos=1).wait_for_publish(5)

    def devices(self, *people: tuple[str, str, int]) -> None:
        self.send("devices", [{"name": n, "mac": f"AA:BB:CC:00:00:{i:02X}", "state": s,
                               "last_seen": time.time(), "rssi": rssi}
                              for i, (n, s, rssi) in enumerate(people)])

    def close(self) -> None:
        stop_client(self.client)


def keys_of(certs: Path, tmp: Path, *pis: str) -> Path:
    """A key directory holding only these Pis' rings (as if only they were provisioned)."""
    keys = tmp / f"keys-{uuid.uuid4().hex[:6]}"
    keys.mkdir(mode=0o700)
    for pi in pis:
        shutil.copy(certs / "clients" / "subscriber" / "keys" / f"{pi}.key", keys)
    return keys


def bridge_cmd(broker: Broker, state: Path, keys: Path, *extra: str) -> list[str]:
    return python_m("subscriber", broker.url("localhost"), "--homeassistant",
                    "--state-dir", str(state), "--keys-dir", str(keys),
                    "--client-id", f"sub-{uuid.uuid4().hex[:8]}", *extra)


@pytest.fixture
def ha_workdir(tmp_path: Path, ha_certs: Path) -> Path:
    (tmp_path / "certs").symlink_to(ha_certs)
    return tmp_path


def config(latest: dict[str, bytes], component: str, unique_id: str) -> dict[str, object]:
    payload = latest.get(f"{DISCOVERY}/{component}/{unique_id}/config", b"")
    return json.loads(payload) if payload else {}


DEMO_ENTITIES = {
    ("sensor", "homewatch_demo_pi_temperature"),
    ("binary_sensor", "homewatch_demo_pi_connectivity"),
    ("sensor", "homewatch_demo_pi_scanner"),
    ("device_tracker", "homewatch_person_franks_phone"),
    ("device_tracker", "homewatch_person_annas_watch"),
}


def test_the_demo_pi_appears_as_one_device_with_its_entities_and_numeric_temperature(
        ha_broker: Broker, ha_certs: Path, ha_workdir: Path) -> None:
    """The real demo publisher as demo-pi: the homeassistant identity finds exactly the
    demo Pi's retained discovery configs (temperature, connectivity, scanner: one device)
    and one device tracker per person, each marked demo, with Home Assistant's keys; the
    temperature state is a number; once the Pi stopped, both people are unknown (not
    home, not away); no room sensor with one Pi."""
    keys = keys_of(ha_certs, ha_workdir, "demo-pi")
    publish_as(ha_broker, ha_certs, "demo-pi", "home/demo-pi/status", b"online", retain=True)
    ready = Watcher(ha_broker, ha_certs, (f"{BRIDGE}/#",))
    with running(bridge_cmd(ha_broker, ha_workdir / "state", keys), cwd=ha_workdir) as sub:
        wait_subscribed(sub)
        bridge_ready(ready, "demo-pi")
        ready.close()
        pub = subprocess.run(
            python_m("publisher", ha_broker.url("localhost"), "--device", "demo-pi",
                     "--demo", "--count", "2", "--interval", "0.3", "--known-devices",
                     str(ROOT / "publisher" / "demo-known-devices.txt"),
                     "--state-dir", str(ha_workdir / "pub")),
            cwd=ha_workdir, env=clean_env(), capture_output=True, text=True, timeout=60)
        assert pub.returncode == 0, pub.stderr
        watch = Watcher(ha_broker, ha_certs, (f"{DISCOVERY}/#", f"{BRIDGE}/#"))
        try:
            latest = watch.wait("the demo's states", lambda got: {
                f"{BRIDGE}/person/franks_phone/state", f"{BRIDGE}/person/annas_watch/state",
                f"{BRIDGE}/pi/demo_pi/temperature"} <= set(got) and
                got.get(f"{BRIDGE}/pi/demo_pi/status") == b"offline")
        finally:
            watch.close()
    configs = {(t.split("/")[1], t.split("/")[2]): json.loads(p)
               for t, p in retained(ha_broker, ha_certs, f"{DISCOVERY}/#").items()
               if p and any(n in t for n in ("demo_pi", "franks_phone", "annas_watch"))}
    assert set(configs) == DEMO_ENTITIES
    for (_component, uid), body in configs.items():
        assert body["unique_id"] == body["object_id"] == uid
        assert body["origin"] == {"name": "Homewatch", "sw_version": body["origin"]["sw_version"]}
    temperature = configs[("sensor", "homewatch_demo_pi_temperature")]
    assert {k: temperature[k] for k in ("device_class", "unit_of_measurement", "state_class",
                                        "state_topic", "availability",
                                        "availability_mode")} == {
        "device_class": "temperature", "unit_of_measurement": "°C",
        "state_class": "measurement", "state_topic": "homewatch/pi/demo_pi/temperature",
        "availability": [{"topic": t, "payload_available": "online",
                          "payload_not_available": "offline"}
                         for t in ("homewatch/status", "homewatch/pi/demo_pi/status")],
        "availability_mode": "all"}
    device = temperature["device"]
    assert isinstance(device, dict)
    assert device["identifiers"] == ["homewatch_pi_demo_pi"]
    assert device["name"] == "demo-pi (demo)" and "demo: invented" in device["model"]
    assert device["manufacturer"] == "Homewatch"
    for uid in ("homewatch_demo_pi_connectivity", "homewatch_demo_pi_scanner"):
        (body,) = [b for (c, u), b in configs.items() if u == uid]
        assert body["device"] == device  # one Home Assistant device per Pi
    connectivity = configs[("binary_sensor", "homewatch_demo_pi_connectivity")]
    assert (connectivity["device_class"], connectivity["payload_on"],
            connectivity["payload_off"]) == ("connectivity", "online", "offline")
    franks = configs[("device_tracker", "homewatch_person_franks_phone")]
    assert {k: franks[k] for k in ("source_type", "payload_home", "payload_not_home",
                                   "state_topic", "name")} == {
        "source_type": "bluetooth_le", "payload_home": "home", "payload_not_home": "not_home",
        "state_topic": "homewatch/person/franks_phone/state", "name": None}
    assert franks["device"]["name"] == "Franks Phone (demo)"  # type: ignore[index]
    value = float(latest[f"{BRIDGE}/pi/demo_pi/temperature"])
    assert 10 <= value <= 35
    # The only Pi that saw them stopped (its status is offline): nobody knows whether they
    # left, so each tracker is reset to Home Assistant's unknown, neither home nor away.
    assert franks["payload_reset"] == "unknown"
    assert latest[f"{BRIDGE}/person/franks_phone/state"] == b"unknown"
    assert latest[f"{BRIDGE}/person/annas_watch/state"] == b"unknown"
    attributes = json.loads(latest[f"{BRIDGE}/person/annas_watch/attributes"])
    assert attributes["simulated"] == "demo" and attributes["person"] == "Annas Watch"
    assert json.loads(latest[f"{BRIDGE}/pi/demo_pi/attributes"])["simulated"] == "demo"
    # the publisher stopped cleanly: it said offline, and the bridge passed it on
    assert latest[f"{BRIDGE}/pi/demo_pi/status"] == b"offline"


def test_a_tracker_turns_home_and_not_home_and_odd_names_get_safe_ids(
        ha_broker: Broker, ha_certs: Path, ha_workdir: Path) -> None:
    """A person a Pi reports home is `home`, then `not_home` once it reports them away,
    and stays when the Pi no longer lists them; a name with spaces, accents, '/', '+' and
    '#' gets an id of [a-z0-9_] only and keeps its real name as the display name; real
    data is not marked as invented."""
    name = "Zoë's Phone/#+"
    pid = fold(name)
    assert pid == "zoe_s_phone"
    keys = keys_of(ha_certs, ha_workdir, "pi-hall")
    watch = Watcher(ha_broker, ha_certs, (f"{DISCOVERY}/#", f"{BRIDGE}/#"))
    pi = Pi(ha_broker, ha_certs, "pi-hall")
    try:
        pi.status("online")
        with running(bridge_cmd(ha_broker, ha_workdir / "state", keys), cwd=ha_workdir) as sub:
            wait_subscribed(sub)
            bridge_ready(watch, "pi-hall")
            pi.devices((name, "home", -60))
            state = f"{BRIDGE}/person/{pid}/state"
            watch.wait("home", lambda got: got.get(state) == b"home")
            pi.devices((name, "away", -60), ("Other Otto", "home", -70))
            latest = watch.wait("not_home", lambda got: got.get(state) == b"not_home")
            pi.devices(("Other Otto", "home", -70))  # no longer reported: still there
            pi.send("temperature", {"temperature": 20.0, "timestamp": time.time()})
            latest = watch.wait("the temperature", lambda got: got.get(
                f"{BRIDGE}/pi/pi_hall/temperature") == b"20.0")
    finally:
        pi.close()
        watch.close()
    tracker = config(latest, "device_tracker", f"homewatch_person_{pid}")
    assert tracker["device"] == {"identifiers": [f"homewatch_person_{pid}"], "name": name,
                                 "manufacturer": "Homewatch", "model": "known Bluetooth device"}
    assert latest[state] == b"not_home"  # a name a Pi stops reporting is not removed
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789_/" for c in
               "".join(t for t in latest if t.startswith(BRIDGE)))


def test_a_person_home_when_the_bridge_stopped_is_unknown_if_their_pi_went_offline_meanwhile(
        ha_broker: Broker, ha_certs: Path, ha_workdir: Path) -> None:
    """Anna home (retained) when the subscriber stops; her only Pi loses power meanwhile
    (its status offline); at the next start the bridge does not leave her `home` from
    last run: she is `unknown` until a Pi reports her again, then `home`."""
    keys = keys_of(ha_certs, ha_workdir, "pi-attic")
    state = f"{BRIDGE}/person/anna_attic/state"
    watch = Watcher(ha_broker, ha_certs, (f"{BRIDGE}/#",))
    pi = Pi(ha_broker, ha_certs, "pi-attic")
    try:
        pi.status("online")
        with running(bridge_cmd(ha_broker, ha_workdir / "state", keys), cwd=ha_workdir) as sub:
            wait_subscribed(sub)
            bridge_ready(watch, "pi-attic")
            pi.devices(("Anna Attic", "home", -60))
            watch.wait("home", lambda got: got.get(state) == b"home")
        pi.status("offline")  # while the subscriber is away
        with running(bridge_cmd(ha_broker, ha_workdir / "state", keys), cwd=ha_workdir) as sub:
            wait_subscribed(sub)
            watch.wait("unknown", lambda got: got.get(state) == b"unknown")
            pi.status("online")
            pi.devices(("Anna Attic", "home", -60))
            watch.wait("home again", lambda got: got.get(state) == b"home")
    finally:
        pi.close()
        watch.close()


def test_a_stalled_scanner_is_stalled_in_home_assistant_with_what_the_pi_did(
        ha_broker: Broker, ha_certs: Path, ha_workdir: Path) -> None:
    """A Pi's `scanner` status `stalled` (publisher.stall) is the scanner sensor's state,
    its detail (what the Pi did about it) the Pi's `scanner_detail` attribute; `ok` after."""
    keys = keys_of(ha_certs, ha_workdir, "pi-hall")
    watch = Watcher(ha_broker, ha_certs, (f"{BRIDGE}/#",))
    pi = Pi(ha_broker, ha_certs, "pi-hall")
    scanner, attributes = f"{BRIDGE}/pi/pi_hall/scanner", f"{BRIDGE}/pi/pi_hall/attributes"
    detail = "no advertisement in 6 scans in a row; restarted discovery"
    try:
        pi.status("online")
        with running(bridge_cmd(ha_broker, ha_workdir / "state", keys), cwd=ha_workdir) as sub:
            wait_subscribed(sub)
            bridge_ready(watch, "pi-hall")
            pi.send("scanner", {"state": "stalled", "scanner": "bleak",
                                "action": "restarted discovery", "detail": detail})
            watch.wait("stalled", lambda got: got.get(scanner) == b"stalled" and json.loads(
                got.get(attributes, b"{}")).get("scanner_detail") == detail)
            pi.send("scanner", {"state": "ok", "scanner": "bleak"})
            watch.wait("ok", lambda got: got.get(scanner) == b"ok")
    finally:
        pi.close()
        watch.close()


def test_a_pi_going_offline_makes_its_entities_unavailable(
        ha_broker: Broker, ha_certs: Path, ha_workdir: Path) -> None:
    """A Pi's broker-kept status goes to the bridge's status topic, which is its
    entities' availability topic (and its connectivity sensor's state): offline there
    makes Home Assistant show them unavailable; online again brings them back."""
    keys = keys_of(ha_certs, ha_workdir, "pi-porch")
    watch = Watcher(ha_broker, ha_certs, (f"{DISCOVERY}/#", f"{BRIDGE}/#"))
    pi = Pi(ha_broker, ha_certs, "pi-porch")
    status = f"{BRIDGE}/pi/pi_porch/status"
    try:
        pi.status("online")
        with running(bridge_cmd(ha_broker, ha_workdir / "state", keys), cwd=ha_workdir) as sub:
            wait_subscribed(sub)
            bridge_ready(watch, "pi-porch")
            pi.send("temperature", {"temperature": 19.5, "timestamp": time.time()})
            latest = watch.wait("online", lambda got: got.get(status) == b"online" and
                                f"{BRIDGE}/pi/pi_porch/temperature" in got)
            assert latest[f"{BRIDGE}/pi/pi_porch/temperature"] == b"19.5"
            pi.status("offline")
            watch.wait("offline", lambda got: got.get(status) == b"offline")
            pi.status("online")
            latest = watch.wait("online again", lambda got: got.get(status) == b"online")
    finally:
        pi.close()
        watch.close()
    for uid in ("homewatch_pi_porch_temperature", "homewatch_pi_porch_scanner"):
        body = config(latest, "sensor", uid)
        assert status in [a["topic"] for a in body["availability"]]  # type: ignore[attr-defined]
        assert body["availability_mode"] == "all"
    assert config(latest, "binary_sensor", "homewatch_pi_porch_connectivity")[
        "state_topic"] == status
    # unmarked: real readings are not called demo
    assert config(latest, "sensor", "homewatch_pi_porch_temperature")["device"][  # type: ignore[index]
        "name"] == "pi-porch"


def test_every_entity_is_unavailable_while_the_bridge_is_gone(
        ha_broker: Broker, ha_certs: Path, ha_workdir: Path) -> None:
    """Every entity's availability includes the bridge's own status: `online` while the
    subscriber runs, `offline` when it stops and (its last will) when it is killed, so
    Home Assistant does not show stale states as current."""
    keys = keys_of(ha_certs, ha_workdir, "pi-hall")
    watch = Watcher(ha_broker, ha_certs, (f"{DISCOVERY}/#", f"{BRIDGE}/#"))
    pi = Pi(ha_broker, ha_certs, "pi-hall")
    bridge = f"{BRIDGE}/status"
    try:
        pi.status("online")
        for ending in ("SIGTERM", "kill -9"):
            with running(bridge_cmd(ha_broker, ha_workdir / "state", keys),
                         cwd=ha_workdir) as sub:
                wait_subscribed(sub)
                watch.wait_live(bridge, b"online")
                pi.devices(("Bridge Bea", "home", -60))
                watch.wait("a tracker", lambda got: got.get(
                    f"{BRIDGE}/person/bridge_bea/state") == b"home")
                if ending == "kill -9":
                    sub.kill()
            watch.wait_live(bridge, b"offline")
            watch.seen.clear()
    finally:
        pi.close()
        watch.close()
    latest = retained(ha_broker, ha_certs, f"{DISCOVERY}/#")
    configs = [json.loads(p) for t, p in latest.items()
               if p and ("pi_hall" in t or "bridge_bea" in t)]
    assert len(configs) == 4  # temperature, connectivity, scanner, tracker
    for body in configs:
        assert {"topic": bridge, "payload_available": "online",
                "payload_not_available": "offline"} in body["availability"]


def test_room_sensors_exist_only_with_more_than_one_pi(
        ha_broker: Broker, ha_certs: Path, ha_workdir: Path) -> None:
    """With two Pis a person also gets a room sensor, whose state is the room of a Pi
    that has them home (with one Pi there is none: the demo Pi's test); simulated
    sightings are marked so."""
    keys = keys_of(ha_certs, ha_workdir, "pi-hall", "pi-porch")
    watch = Watcher(ha_broker, ha_certs, (f"{DISCOVERY}/#", f"{BRIDGE}/#"))
    hall, porch = Pi(ha_broker, ha_certs, "pi-hall"), Pi(ha_broker, ha_certs, "pi-porch")
    room = f"{BRIDGE}/person/roaming_rita/room"
    try:
        hall.status("online")
        porch.status("online")
        with running(bridge_cmd(ha_broker, ha_workdir / "state", keys), cwd=ha_workdir) as sub:
            wait_subscribed(sub)
            bridge_ready(watch, "pi-hall")
            bridge_ready(watch, "pi-porch")
            hall.send("devices", [{"name": "Roaming Rita", "state": "home", "rssi": -50}],
                      simulated="simulated")
            porch.send("devices", [{"name": "Roaming Rita", "state": "home", "rssi": -80}],
                       simulated="simulated")
            latest = watch.wait("a room", lambda got: got.get(room) in (b"pi-hall",
                                                                        b"pi-porch"))
    finally:
        hall.close()
        porch.close()
        watch.close()
    body = config(latest, "sensor", "homewatch_person_roaming_rita_room")
    assert body["state_topic"] == room and body["name"] == "Room"
    assert body["device"]["name"] == "Roaming Rita (simulated)"  # type: ignore[index]
    assert "invented" in body["device"]["model"]  # type: ignore[index]
    assert json.loads(latest[f"{BRIDGE}/person/roaming_rita/attributes"])[
        "simulated"] == "simulated"


def test_a_removed_pi_and_the_people_only_it_saw_leave_home_assistant(
        ha_broker: Broker, ha_certs: Path, ha_workdir: Path) -> None:
    """`homewatch device remove` while the bridge runs: each discovery config of the Pi
    and of the person only it saw becomes an empty retained message (Home Assistant
    deletes the entity), their states are cleared, and a new subscription finds none of
    them; a person another Pi also saw stays. Then again for a Pi removed while the
    subscriber was stopped (the bridge's state file remembers what it published)."""
    keys = ha_certs / "clients" / "subscriber" / "keys"
    watch = Watcher(ha_broker, ha_certs, (f"{DISCOVERY}/#", f"{BRIDGE}/#"))
    gone, porch = Pi(ha_broker, ha_certs, "pi-gone"), Pi(ha_broker, ha_certs, "pi-porch")
    gone_topics = [f"{DISCOVERY}/sensor/homewatch_pi_gone_temperature/config",
                   f"{DISCOVERY}/binary_sensor/homewatch_pi_gone_connectivity/config",
                   f"{DISCOVERY}/sensor/homewatch_pi_gone_scanner/config",
                   f"{DISCOVERY}/device_tracker/homewatch_person_guest_gone/config",
                   f"{BRIDGE}/pi/pi_gone/temperature", f"{BRIDGE}/person/guest_gone/state"]
    shared = f"{DISCOVERY}/device_tracker/homewatch_person_shared_sam/config"
    state = ha_workdir / "state"
    try:
        porch.status("online")
        with running(bridge_cmd(ha_broker, state, keys), cwd=ha_workdir) as sub:
            wait_subscribed(sub)
            bridge_ready(watch, "pi-porch")
            gone.send("temperature", {"temperature": 21.0, "timestamp": time.time()})
            gone.devices(("Guest Gone", "home", -70), ("Shared Sam", "home", -70))
            porch.devices(("Shared Sam", "home", -60))
            watch.wait("pi-gone's entities",
                       lambda got: all(got.get(t) for t in [*gone_topics, shared]))
            homewatch_cli(ha_certs, "device", "remove", "pi-gone", "--force")
            ha_broker.reload()
            latest = watch.wait(
                "empty configs", lambda got: all(got.get(t) == b"" for t in gone_topics),
                poke=lambda: porch.send("temperature", {"temperature": 20.0,
                                                        "timestamp": time.time()}))
        assert latest[shared]  # Shared Sam is still seen by pi-porch
        now = retained(ha_broker, ha_certs, f"{DISCOVERY}/#")
        assert not any(t in now for t in gone_topics) and now[shared]
        assert not any("pi_gone" in t or "guest_gone" in t
                       for t in retained(ha_broker, ha_certs, f"{BRIDGE}/#"))
        assert (state / "homeassistant.json").stat().st_mode & 0o777 == 0o600

        # removed while the subscriber is stopped: found at the next start
        back = Pi(ha_broker, ha_certs, "pi-back")
        back_config = f"{DISCOVERY}/sensor/homewatch_pi_back_temperature/config"
        try:
            watch.seen.clear()
            with running(bridge_cmd(ha_broker, state, keys), cwd=ha_workdir) as sub:
                wait_subscribed(sub)
                bridge_ready(watch, "pi-porch")
                back.send("temperature", {"temperature": 18.0, "timestamp": time.time()})
                watch.wait("pi-back's config", lambda got: bool(got.get(back_config)))
        finally:
            back.close()
        homewatch_cli(ha_certs, "device", "remove", "pi-back", "--force")
        with running(bridge_cmd(ha_broker, state, keys), cwd=ha_workdir) as sub:
            wait_subscribed(sub)
            watch.wait("pi-back's empty config", lambda got: got.get(back_config) == b"",
                       poke=lambda: porch.send("temperature", {"temperature": 20.0,
                                                               "timestamp": time.time()}))
    finally:
        gone.close()
        porch.close()
        watch.close()


# -- the ACL -------------------------------------------------------------------------

def test_the_homeassistant_identity_reads_the_bridge_but_not_the_readings(
        ha_broker: Broker, ha_certs: Path) -> None:
    """Subscribed to home/#, homewatch/# and homeassistant/#, the homeassistant identity
    receives what the subscriber publishes under the two bridge prefixes, and nothing of
    the encrypted readings (or a Pi's status) under home/."""
    publish_as(ha_broker, ha_certs, "pi-porch", "home/pi-porch/status", b"online", retain=True)
    spy = Watcher(ha_broker, ha_certs, ("home/#", f"{BRIDGE}/#", f"{DISCOVERY}/#", "#"))
    try:
        publish_as(ha_broker, ha_certs, "pi-porch", "home/pi-porch/temperature", b"secret")
        publish_as(ha_broker, ha_certs, "subscriber", f"{DISCOVERY}/sensor/acl_probe/config",
                   b"")
        publish_as(ha_broker, ha_certs, "subscriber", f"{BRIDGE}/acl-probe", b"marker")
        latest = spy.wait("the marker", lambda got: f"{BRIDGE}/acl-probe" in got, timeout=10)
    finally:
        spy.close()
    assert f"{DISCOVERY}/sensor/acl_probe/config" in latest
    assert not any(t.startswith("home/") for t in latest), latest


def test_the_homeassistant_identity_cannot_publish_anything(
        ha_broker: Broker, ha_certs: Path) -> None:
    """Writes by the homeassistant identity (a config, a bridge state, a reading, a
    Pi's status) are acknowledged but never delivered, nor kept as retained."""
    observer = Watcher(ha_broker, ha_certs, ("home/#",), user="subscriber")
    reader = Watcher(ha_broker, ha_certs, (f"{DISCOVERY}/#", f"{BRIDGE}/#"))
    forged = {f"{DISCOVERY}/sensor/forged_by_ha/config": b'{"name": "forged"}',
              f"{BRIDGE}/pi/pi_porch/temperature": b"99",
              "home/pi-porch/temperature": b"forged", "home/pi-porch/status": b"offline"}
    try:
        for topic, payload in forged.items():
            publish_as(ha_broker, ha_certs, "homeassistant", topic, payload, retain=True)
        publish_as(ha_broker, ha_certs, "pi-porch", "home/pi-porch/marker", b"m")
        publish_as(ha_broker, ha_certs, "subscriber", f"{BRIDGE}/acl-marker", b"m")
        seen = observer.wait("the marker", lambda got: "home/pi-porch/marker" in got)
        read = reader.wait("the marker", lambda got: f"{BRIDGE}/acl-marker" in got)
    finally:
        observer.close()
        reader.close()
    for topic, payload in forged.items():
        assert seen.get(topic) != payload and read.get(topic) != payload, topic
    assert f"{DISCOVERY}/sensor/forged_by_ha/config" not in retained(
        ha_broker, ha_certs, f"{DISCOVERY}/#")


def test_a_device_cannot_create_home_assistant_entities_or_states(
        ha_broker: Broker, ha_certs: Path) -> None:
    """A Pi's identity (a stolen Pi) publishing a retained discovery config or a bridge
    state is never delivered to Home Assistant's identity, nor kept as retained."""
    reader = Watcher(ha_broker, ha_certs, (f"{DISCOVERY}/#", f"{BRIDGE}/#"))
    forged = {f"{DISCOVERY}/sensor/forged_by_pi/config": b'{"name": "forged"}',
              f"{DISCOVERY}/device_tracker/homewatch_person_franks_phone/config": b"{}",
              f"{BRIDGE}/person/franks_phone/state": b"not_home"}
    try:
        for topic, payload in forged.items():
            publish_as(ha_broker, ha_certs, "pi-porch", topic, payload, retain=True)
        publish_as(ha_broker, ha_certs, "subscriber", f"{BRIDGE}/acl-marker-2", b"m")
        read = reader.wait("the marker", lambda got: f"{BRIDGE}/acl-marker-2" in got)
    finally:
        reader.close()
    for topic, payload in forged.items():
        assert read.get(topic) != payload, topic
    now = retained(ha_broker, ha_certs, f"{DISCOVERY}/#")
    assert f"{DISCOVERY}/sensor/forged_by_pi/config" not in now
    assert now.get(f"{DISCOVERY}/device_tracker/homewatch_person_franks_phone/config") != b"{}"


@pytest.mark.parametrize("args", [("device", "add", "homeassistant"),
                                  ("device", "add", "homewatch"),
                                  ("--base", "homeassistant", "device", "add", "pi-x"),
                                  ("--base", "homewatch/home", "device", "add", "pi-x")])
def test_no_device_name_or_base_reaches_the_bridge_topics(tmp_path: Path,
                                                          args: tuple[str, ...]) -> None:
    """A device named like the bridge's identity or prefix, or a base topic overlapping
    a bridge prefix (devices write BASE/<name>/#), is refused with one line."""
    r = homewatch_cli(tmp_path, *args, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "reserved" in r.stderr or "overlaps" in r.stderr


@pytest.mark.parametrize("extra", [("--bridge-prefix", "home/bridge"),
                                   ("--discovery-prefix", "homeassistant/#"),
                                   ("--bridge-prefix", "homeassistant/homewatch"),
                                   ("--discovery-prefix", "home")])
def test_bridge_prefixes_that_overlap_or_hold_wildcards_are_refused(
        ha_workdir: Path, extra: tuple[str, ...]) -> None:
    """The subscriber refuses a bridge or discovery prefix with a wildcard, or inside
    the readings' base or each other: one line, exit 2."""
    r = subprocess.run(python_m("subscriber", "mqtts://localhost:8883/home",
                                "--homeassistant", *extra),
                       cwd=ha_workdir, env=clean_env(), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert extra[0] in r.stderr


def test_add_homeassistant_keeps_the_password_and_the_file_is_private(
        ha_certs: Path) -> None:
    """`homewatch homeassistant add` again keeps the password (idempotent); the file is
    the admin's alone (0600) and never printed."""
    pw = ha_certs / "clients" / "homeassistant" / "password"
    before = pw.read_text()
    r = homewatch_cli(ha_certs, "homeassistant", "add")
    assert "kept homeassistant" in r.stdout and before.strip() not in r.stdout
    assert pw.read_text() == before and pw.stat().st_mode & 0o777 == 0o600
    acl = (ha_certs / "broker" / "acl").read_text()
    assert "user homeassistant\ntopic read homeassistant/#\ntopic read homewatch/#\n" in acl


def test_the_homeassistant_identity_can_be_removed(tmp_path: Path) -> None:
    """`homewatch device remove homeassistant --force` (the README's way back) takes the
    identity out of the password and ACL files and deletes its password."""
    gen_certs(tmp_path)
    homewatch_cli(tmp_path, "homeassistant", "add")
    assert "user homeassistant" in (tmp_path / "broker" / "acl").read_text()
    r = homewatch_cli(tmp_path, "device", "remove", "homeassistant", "--force")
    assert "removed homeassistant" in r.stdout
    assert "homeassistant" not in (tmp_path / "broker" / "passwd").read_text()
    assert "user homeassistant" not in (tmp_path / "broker" / "acl").read_text()
    assert not (tmp_path / "clients" / "homeassistant").exists()


def test_a_pi_reporting_hundreds_of_names_cannot_flood_home_assistant(
        ha_broker: Broker, ha_certs: Path, ha_workdir: Path) -> None:
    """A Pi (lying, or with a stolen key) reporting 300 different people gets at most
    256 device trackers published, as many as the history keeps; the subscriber runs on."""
    keys = keys_of(ha_certs, ha_workdir, "pi-porch")
    temperature = f"{BRIDGE}/pi/pi_porch/temperature"
    watch = Watcher(ha_broker, ha_certs, (f"{BRIDGE}/person/#", temperature,
                                          f"{BRIDGE}/pi/pi_porch/status"))
    pi = Pi(ha_broker, ha_certs, "pi-porch")
    try:
        pi.status("online")
        with running(bridge_cmd(ha_broker, ha_workdir / "state", keys), cwd=ha_workdir) as sub:
            wait_subscribed(sub)
            bridge_ready(watch, "pi-porch")
            for start in range(0, 300, 50):
                pi.send("devices", [{"name": f"Flood {i:03d}", "state": "home"}
                                    for i in range(start, start + 50)])
            pi.send("temperature", {"temperature": 20.5, "timestamp": time.time()})
            # the bridge publishes in the order it handles: after the temperature, nothing
            # more of the flood comes
            watch.wait_live(temperature, b"20.5", timeout=60)
            latest = watch.latest()
            assert sub.poll() is None
    finally:
        pi.close()
        watch.close()
    flooded = {t.split("/")[2] for t in latest if t.endswith("/state") and "flood_" in t}
    assert len(flooded) == 256
