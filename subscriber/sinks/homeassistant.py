"""The Home Assistant bridge (opt-in, ``--homeassistant``): what the subscriber decrypted,
republished for Home Assistant's MQTT integration, in plain text.

Through the subscriber's own connection (it alone may write these topics; the broker's
ACL lets the ``homeassistant`` identity only read them), all retained, QoS 1:

- discovery configs, ``<discovery>/<component>/<unique id>/config`` (Home Assistant's
  ``homeassistant/...`` by default): per Pi one Home Assistant device with a temperature
  ``sensor``, a connectivity ``binary_sensor`` and the scanner state (a ``sensor``); per
  known person one device with a ``device_tracker`` (``bluetooth_le``) and, when there
  is more than one Pi, a ``sensor`` with their room;
- states under ``<bridge>/`` (``homewatch/`` by default): ``status`` (the bridge's own
  availability, part of every entity's: ``online`` while the subscriber is connected,
  ``offline`` when it stops and as its last will), ``pi/<id>/temperature``,
  ``pi/<id>/status`` (``online``/``offline``: the connectivity sensor, and the
  availability of the Pi's other entities), ``pi/<id>/scanner``, ``pi/<id>/attributes``,
  ``person/<id>/state`` (``home``/``not_home``), ``person/<id>/room`` and
  ``person/<id>/attributes``.

Ids: ``<id>`` is the name folded to ``[a-z0-9_]`` (a second name that folds to the same
id gets a short hash of itself appended); unique ids and entity ids are
``homewatch_<pi>_temperature`` / ``_connectivity`` / ``_scanner`` and
``homewatch_person_<person>`` / ``_room``; device identifiers ``homewatch_pi_<pi>`` and
``homewatch_person_<person>``. The real name is only a display name (JSON-encoded; Home
Assistant escapes it). Invented data (the demo publisher, ``--scanner simulated``...) is
marked: the device's name ends in ``(demo)`` or ``(simulated)``, its model says so, and
every entity's attributes carry ``simulated``.

Removal: a Pi whose key ring is gone (``homewatch device remove``) was removed; a person
is removed once every Pi that ever reported them was. Each of their configs is replaced
by an empty retained message (Home Assistant deletes the entity) and their states are
cleared. What was published is remembered in a small state file (0600, in the
subscriber's state directory) rather than read back from the broker: the subscriber then
needs no read access to the discovery prefix (which holds other integrations' configs
too), and a restart knows at once, without waiting for retained messages, what to remove.

Called in paho's network thread: publishing only queues the message in paho; nothing
here waits for the network. A publish that fails is logged, never a reason to stop the
subscriber (the readings and the history go on).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homewatch import __version__
from homewatch.envelope import Reading
from homewatch.errors import HomewatchError
from homewatch.secrets import write_private_file
from subscriber.rooms import Person, room_of_reading

log = logging.getLogger(__name__)

TRACKER_UNKNOWN = "unknown"  # the tracker's payload_reset: Home Assistant shows unknown

Publish = Callable[[str, bytes], object]  # topic, payload: retained, QoS 1

KEYS_RECHECK = 5.0  # seconds between looks at the key rings (a removed Pi)
MAX_PEOPLE = 256  # as many as the history keeps: a lying Pi cannot flood Home Assistant
STATE_VERSION = 1
ORIGIN = {"name": "Homewatch", "sw_version": __version__}
MARKS = {"demo": "demo", "simulated": "simulated"}


def fold(name: str) -> str:
    """``name`` as ``[a-z0-9_]`` (accents dropped, anything else one ``_``), at most 40."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")[:40].strip("_")
    return slug or "unnamed"


@dataclass
class _Owner:
    """A Pi or a person: its id, what was published for it (configs by topic, state
    topics), and for a person the Pis that reported them."""

    id: str
    mark: str | None = None  # "demo"/"simulated": invented data
    configs: dict[str, str] = field(default_factory=dict)  # topic -> JSON published
    states: set[str] = field(default_factory=set)
    pis: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "mark": self.mark, "configs": self.configs,
                "states": sorted(self.states), "pis": sorted(self.pis)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Owner:
        return cls(id=str(data["id"]), mark=data.get("mark"),
                   configs={str(k): str(v) for k, v in dict(data.get("configs", {})).items()},
                   states={str(s) for s in data.get("states", [])},
                   pis={str(p) for p in data.get("pis", [])})


class HomeAssistantSink:
    """Discovery configs and plaintext states for Home Assistant (see the module)."""

    def __init__(self, publish: Publish, *, state_file: Path,
                 rings: Callable[[], Iterable[str]] | None,
                 discovery_prefix: str = "homeassistant", bridge_prefix: str = "homewatch",
                 keys_recheck: float = KEYS_RECHECK,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._publish = publish
        self.state_file = state_file
        self.rings = rings  # the Pis that have a key ring now (KeyStore.devices)
        self.discovery = discovery_prefix
        self.bridge = bridge_prefix
        self.keys_recheck = keys_recheck
        self.clock = clock
        self.pis: dict[str, _Owner] = {}
        self.people: dict[str, _Owner] = {}
        self.failures = 0
        self._too_many = 0  # people not published: beyond MAX_PEOPLE
        self._rings: set[str] | None = None
        self._checked = -math.inf
        self._last: dict[str, bytes] = {}  # state topic -> last payload (this run)
        self._sent: set[str] = set()  # configs published in this run (once at least: the
        # broker may have lost its retained messages since the state file was written)
        self._announced: set[str] = set()  # Pis whose configs are up to date
        self._pi_attributes: dict[str, dict[str, Any]] = {}
        self._person_state: dict[str, Person] = {}
        self._dirty = False
        self._load()
        # People published before this run: their retained state in Home Assistant is
        # last run's until the fusion reports them again. If every Pi that reported them
        # turns out offline (a retained status, a last will sent while we were away), that
        # state is stale: they become unknown (see _settle_unconfirmed).
        self._unconfirmed: set[str] = set(self.people)
        self._online: dict[str, bool] = {}  # Pi -> its status, as received in this run

    # -- the sink interface ----------------------------------------------------------
    def reading(self, reading: Reading) -> None:
        self._check_keys()
        pi = self._pi(reading.device, reading.simulated)
        attributes = self._pi_attributes.setdefault(reading.device, {})
        room = room_of_reading(reading.data)
        if room is not None:
            attributes["room"] = room
        data = reading.data
        if reading.kind == "temperature" and isinstance(data, dict):
            value = data.get("temperature")
            if (isinstance(value, int | float) and not isinstance(value, bool)
                    and math.isfinite(value) and reading.late is None):
                self._state(pi, f"pi/{pi.id}/temperature", json.dumps(value))
        elif reading.kind == "scanner" and isinstance(data, dict):
            state, detail = data.get("state"), data.get("detail", "")
            if isinstance(state, str) and reading.late is None:
                self._state(pi, f"pi/{pi.id}/scanner", state[:64])
                attributes["scanner_detail"] = detail[:200] if isinstance(detail, str) else ""
        elif reading.kind == "devices" and isinstance(data, list):
            for entry in data:
                name = entry.get("name") if isinstance(entry, dict) else None
                owner = self._person(name) if isinstance(name, str) and name else None
                if owner is not None:
                    owner.pis.add(reading.device)
        self._pi_attrs(reading.device, pi)

    def status(self, topic: str, device: str, status: str) -> None:
        self._check_keys()
        pi = self._pi(device, None)
        self._state(pi, f"pi/{pi.id}/status", status)
        self._online[device] = status == "online"

    def rejected(self, topic: str, device: str | None, reason: str) -> None:
        """Rejections are the subscriber's log and the history's, not Home Assistant's."""

    def person(self, person: Person) -> None:
        self._check_keys()
        owner = self.people.get(person.name)
        if owner is None or not owner.pis:
            return  # only Pis that were removed since reported them
        self._person_state[person.name] = person
        self._unconfirmed.discard(person.name)
        self._person_configs(person.name, owner, person.simulated)
        # "unknown": only Pis that no longer vouch (offline) had them home. Not home, not
        # away: the tracker is reset to Home Assistant's unknown.
        self._state(owner, f"person/{owner.id}/state", {
            "home": "home", "away": "not_home"}.get(person.state, TRACKER_UNKNOWN))
        if self._many_pis():
            self._state(owner, f"person/{owner.id}/room", person.room or (
                "away" if person.state == "away" else TRACKER_UNKNOWN))
        self._state(owner, f"person/{owner.id}/attributes", json.dumps({
            "person": person.name, "room": person.room, "pi": person.pi,
            "simulated": person.simulated, "source": "homewatch"}))

    def flush(self) -> None:
        self._check_keys()
        self._settle_unconfirmed()
        self._save()

    def _settle_unconfirmed(self) -> None:
        """A person published before this run whose Pis all said offline (after the
        batch: retained statuses come together) and who was not reported since: their
        last published state may be a stale ``home``; nobody vouches for it now."""
        for name in sorted(self._unconfirmed):
            owner = self.people.get(name)
            if owner is None or not owner.pis:
                self._unconfirmed.discard(name)
                continue
            if not all(self._online.get(pi) is False for pi in owner.pis):
                continue  # a Pi still online (or not heard of yet) will report them
            self._unconfirmed.discard(name)
            self._state(owner, f"person/{owner.id}/state", TRACKER_UNKNOWN)
            if self._many_pis():
                self._state(owner, f"person/{owner.id}/room", TRACKER_UNKNOWN)

    def close(self) -> None:
        self._save()

    @property
    def status_topic(self) -> str:
        """The bridge's own availability: ``online`` while the subscriber is connected,
        ``offline`` when it stops (and as its last will when it dies)."""
        return f"{self.bridge}/status"

    @property
    def _bridge_available(self) -> dict[str, str]:
        return {"topic": self.status_topic, "payload_available": "online",
                "payload_not_available": "offline"}

    # -- Pis -------------------------------------------------------------------------
    def _pi(self, device: str, simulated: str | None) -> _Owner:
        pi = self.pis.get(device)
        if pi is None:
            many = self._many_pis()
            pi = self.pis[device] = _Owner(id=self._new_id(device, self.pis))
            self._dirty = True
            log.info("Home Assistant: Pi %s as homewatch_%s_*", device, pi.id)
            if many != self._many_pis():
                self._refresh_people()
        if simulated is not None and pi.mark != MARKS.get(simulated):
            pi.mark = MARKS.get(simulated)
            self._dirty = True
            self._announced.discard(device)
        if device not in self._announced:  # not for every reading: only when it changed
            self._pi_configs(device, pi)
            self._announced.add(device)
        return pi

    def _pi_configs(self, device: str, pi: _Owner) -> None:
        base = f"{self.bridge}/pi/{pi.id}"
        marked = f"{device} ({pi.mark})" if pi.mark else device
        common = {
            "device": {"identifiers": [f"homewatch_pi_{pi.id}"], "name": marked,
                       "manufacturer": "Homewatch",
                       "model": ("Pi: temperature and presence" if not pi.mark else
                                 f"Pi, {pi.mark}: invented readings, not measured"),
                       "sw_version": __version__},
            "origin": ORIGIN,
            "json_attributes_topic": f"{base}/attributes",
        }
        available = {"availability": [self._bridge_available, {
            "topic": f"{base}/status", "payload_available": "online",
            "payload_not_available": "offline"}], "availability_mode": "all"}
        self._config(pi, "sensor", f"homewatch_{pi.id}_temperature", {
            **common, **available, "name": "Temperature", "state_topic": f"{base}/temperature",
            "device_class": "temperature", "unit_of_measurement": "°C",
            "state_class": "measurement"})
        self._config(pi, "binary_sensor", f"homewatch_{pi.id}_connectivity", {
            **common, "availability": [self._bridge_available], "name": "Connectivity",
            "state_topic": f"{base}/status",
            "device_class": "connectivity", "payload_on": "online", "payload_off": "offline",
            "entity_category": "diagnostic"})
        self._config(pi, "sensor", f"homewatch_{pi.id}_scanner", {
            **common, **available, "name": "Scanner", "state_topic": f"{base}/scanner",
            "icon": "mdi:bluetooth", "entity_category": "diagnostic"})

    def _pi_attrs(self, device: str, pi: _Owner) -> None:
        attributes = {"pi": device, "simulated": pi.mark, "source": "homewatch",
                      **self._pi_attributes.get(device, {})}
        self._state(pi, f"pi/{pi.id}/attributes", json.dumps(attributes, sort_keys=True))

    # -- people ----------------------------------------------------------------------
    def _person(self, name: str) -> _Owner | None:
        owner = self.people.get(name)
        if owner is None:
            if len(self.people) >= MAX_PEOPLE:
                self._too_many += 1
                if self._too_many in (1, 100, 10000):
                    log.warning("Home Assistant: %d people already; %r (and %d more so far) "
                                "not published", MAX_PEOPLE, name[:64], self._too_many)
                return None
            owner = self.people[name] = _Owner(id=self._new_id(name, self.people))
            self._dirty = True
        return owner

    def _person_configs(self, name: str, owner: _Owner, simulated: str | None) -> None:
        mark = MARKS.get(simulated) if simulated else None
        if mark != owner.mark:
            owner.mark = mark
            self._dirty = True
        base = f"{self.bridge}/person/{owner.id}"
        common = {
            "device": {"identifiers": [f"homewatch_person_{owner.id}"],
                       "name": f"{name[:100]} ({mark})" if mark else name[:100],
                       "manufacturer": "Homewatch",
                       "model": ("known Bluetooth device" if not mark else
                                 f"known Bluetooth device, {mark}: invented sightings")},
            "origin": ORIGIN,
            "json_attributes_topic": f"{base}/attributes",
            "availability": [self._bridge_available],
        }
        self._config(owner, "device_tracker", f"homewatch_person_{owner.id}", {
            **common, "name": None, "state_topic": f"{base}/state", "payload_home": "home",
            "payload_not_home": "not_home", "payload_reset": TRACKER_UNKNOWN,
            "source_type": "bluetooth_le"})
        room = f"homewatch_person_{owner.id}_room"
        if self._many_pis():
            self._config(owner, "sensor", room, {
                **common, "name": "Room", "state_topic": f"{base}/room",
                "icon": "mdi:map-marker"})
        else:
            self._unpublish_config(owner, self._config_topic("sensor", room))
            self._unpublish_state(owner, f"person/{owner.id}/room")

    def _many_pis(self) -> bool:
        return len(self.pis.keys() | (self._rings or set())) > 1

    # -- removal ---------------------------------------------------------------------
    def _check_keys(self) -> None:
        """Which Pis have a key ring: a Pi whose ring is gone was removed, and so is a
        person only removed Pis reported."""
        now = self.clock()
        if self.rings is None or now - self._checked < self.keys_recheck:
            return
        self._checked = now
        try:
            rings = set(self.rings())
        except OSError as exc:
            log.warning("Home Assistant: cannot list the key rings: %s", exc)
            return
        many = self._many_pis()
        self._rings = rings
        for device in sorted(set(self.pis) - rings):
            log.info("Home Assistant: %s was removed (no key ring): its entities go", device)
            self._remove(self.pis.pop(device))
            self._announced.discard(device)
            self._pi_attributes.pop(device, None)
            for name, owner in list(self.people.items()):
                owner.pis.discard(device)
                if not owner.pis:
                    log.info("Home Assistant: %s was only seen by removed Pis: removed", name)
                    self._remove(self.people.pop(name))
                    self._person_state.pop(name, None)
        if many != self._many_pis():
            self._refresh_people()

    def _refresh_people(self) -> None:
        """The number of Pis went over or under one: room sensors appear or go."""
        for person in list(self._person_state.values()):
            self.person(person)

    def _remove(self, owner: _Owner) -> None:
        for topic in sorted(owner.configs):
            self._send(topic, b"")
        for topic in sorted(owner.states):
            self._send(topic, b"")
            self._last.pop(topic, None)
        owner.configs.clear()
        owner.states.clear()
        self._dirty = True

    # -- publishing ------------------------------------------------------------------
    def _config_topic(self, component: str, unique_id: str) -> str:
        return f"{self.discovery}/{component}/{unique_id}/config"

    def _config(self, owner: _Owner, component: str, unique_id: str,
                body: dict[str, Any]) -> None:
        topic = self._config_topic(component, unique_id)
        text = json.dumps({**body, "unique_id": unique_id, "object_id": unique_id},
                          ensure_ascii=False, sort_keys=True)
        if owner.configs.get(topic) == text and topic in self._sent:
            return
        if owner.configs.get(topic) != text:
            owner.configs[topic] = text
            self._dirty = True
        self._sent.add(topic)
        self._send(topic, text.encode("utf-8"))

    def _unpublish_config(self, owner: _Owner, topic: str) -> None:
        if owner.configs.pop(topic, None) is not None:
            self._dirty = True
            self._send(topic, b"")

    def _unpublish_state(self, owner: _Owner, sub: str) -> None:
        topic = f"{self.bridge}/{sub}"
        if topic in owner.states:
            owner.states.discard(topic)
            self._last.pop(topic, None)
            self._dirty = True
            self._send(topic, b"")

    def _state(self, owner: _Owner, sub: str, value: str) -> None:
        topic = f"{self.bridge}/{sub}"
        payload = value.encode("utf-8")
        if self._last.get(topic) == payload:
            return
        self._last[topic] = payload
        if topic not in owner.states:
            owner.states.add(topic)
            self._dirty = True
        self._send(topic, payload)

    def _send(self, topic: str, payload: bytes) -> None:
        try:
            self._publish(topic, payload)
        except HomewatchError as exc:
            self.failures += 1
            if self.failures in (1, 10, 100, 1000) or self.failures % 10000 == 0:
                log.warning("Home Assistant: publishing to %s failed: %s (%d so far)", topic,
                            exc, self.failures)

    # -- ids and the state file ------------------------------------------------------
    @staticmethod
    def _new_id(name: str, owners: dict[str, _Owner]) -> str:
        slug = fold(name)
        taken = {o.id for o in owners.values()}
        if slug in taken:
            slug = f"{slug}_{hashlib.sha256(name.encode('utf-8')).hexdigest()[:6]}"
        return slug

    def _load(self) -> None:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            self.pis = {str(k): _Owner.from_json(v) for k, v in data["pis"].items()}
            self.people = {str(k): _Owner.from_json(v) for k, v in data["people"].items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("Home Assistant: bridge state %s unreadable (%s): starting afresh; "
                        "entities published before and since removed stay in Home Assistant "
                        "until deleted there", self.state_file, exc)
            self.pis, self.people = {}, {}

    def _save(self) -> None:
        if not self._dirty:
            return
        text = json.dumps({"version": STATE_VERSION,
                           "pis": {k: v.to_json() for k, v in sorted(self.pis.items())},
                           "people": {k: v.to_json() for k, v in sorted(self.people.items())}},
                          ensure_ascii=False, sort_keys=True)
        try:
            write_private_file(self.state_file, text, mode=0o600)
        except OSError as exc:
            log.error("Home Assistant: cannot write the bridge state %s: %s (retried with "
                      "the next batch)", self.state_file, exc.strerror or exc)
            return
        self._dirty = False
