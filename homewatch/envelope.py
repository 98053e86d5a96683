"""The payload envelope: what travels inside each MQTT message.

Wire format (version 1). The MQTT payload is a Fernet token (ASCII, url-safe base64).
Its authenticated plaintext is a UTF-8 JSON object::

    {"v": 1, "topic": "home/pi-kitchen/temperature", "device": "pi-kitchen",
     "seq": 1732480000123, "taken": 1614555518.14,
     "data": {"temperature": 21.5, "timestamp": 1614555518.14}}

plus ``"sim": "simulated"`` (or ``"demo"``) when the reading comes from a simulated
source, never from a sensor. ``taken`` is when the reading was taken (it may have waited
in the publisher's outbox); the token's own timestamp (seconds, authenticated by
Fernet's HMAC) is the send time.

The subscriber picks the key ring by the device named in the topic, and accepts a
message only if it decrypts, its ``topic``/``device`` equal where it arrived, it is not
from the future beyond the clock-skew tolerance, its sequence number was not seen before
(sliding window per device), and it is fresh: sent within the TTL (plus the skew), or a
*late* reading, one the broker kept while the subscriber was away. A late reading is
accepted only if it continues the device's stream: sent no earlier than the TTL before
the newest reading already shown from that device (the broker delivers a device's
messages in order), or, for a device never shown, before this replay state was created.
So a subscriber that lost its state refuses late readings (they may be replays of what an
earlier incarnation showed) and one with its state shows everything it missed, once.
"""

from __future__ import annotations

import binascii
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.fernet import InvalidToken

from homewatch.errors import EnvelopeError
from homewatch.fernet import KeyRing, TokenMaker

VERSION = 1
STATUS_KIND = "status"  # BASE/<device>/status: retained online/offline, plain text
REPLAY_WINDOW = 4096
MAX_LATE = 14 * 86400.0  # the broker forgets a persistent session after 14 days away
_DECODER = json.JSONDecoder()  # json.loads without its per-call setup


@dataclass(frozen=True, kw_only=True)
class Reading:
    """A verified, decrypted message."""

    topic: str
    device: str
    kind: str
    seq: int
    sent_at: int
    data: Any
    taken_at: float | None = None  # when the reading was taken (None: not said)
    simulated: str | None = None  # "simulated" or "demo": invented data, not a sensor's
    late: float | None = None  # seconds between taking and arrival, when beyond the skew


def topic_for(base: str, device: str, kind: str) -> str:
    return f"{base}/{device}/{kind}"


def seal(ring: TokenMaker, *, topic: str, device: str, seq: int, data: Any,
         taken: float | None = None, simulated: str | None = None,
         now: int | None = None) -> bytes:
    """Encrypt and authenticate one message for ``topic``."""
    body: dict[str, Any] = {"v": VERSION, "topic": topic, "device": device, "seq": seq}
    if taken is not None:
        body["taken"] = round(taken, 3)
    if simulated:
        body["sim"] = simulated
    body["data"] = data
    plaintext = json.dumps(body, separators=(",", ":")).encode("utf-8")
    if now is None:
        return ring.encrypt(plaintext)
    return ring.encrypt_at_time(plaintext, now)


def _open(ring: KeyRing, token: bytes) -> tuple[bytes, int]:
    """The one way a token is opened: ``KeyRing.open`` (homewatch.fernet)."""
    return ring.open(token)


class KeyLookup(Protocol):
    def get(self, device: str, *, force: bool = False) -> KeyRing | None: ...


class StaticKeys:
    """A fixed device -> key ring mapping (tests, benchmarks)."""

    def __init__(self, rings: Mapping[str, KeyRing]) -> None:
        for device, ring in rings.items():
            if not isinstance(ring, KeyRing):
                raise TypeError(f"the key ring of {device!r} must be a KeyRing, the ring "
                                "the subscriber opens tokens with")
        self._rings = dict(rings)

    def get(self, device: str, *, force: bool = False) -> KeyRing | None:
        return self._rings.get(device)


class ReplayGuard:
    """Per-device sliding-window replay detection (as IPsec's anti-replay window).

    Accepts each sequence number once; refuses numbers that fall behind the window.
    ``check`` does not change state; ``commit`` records an accepted number, so a
    forged or otherwise rejected message can never move the window.

    It also keeps, per device, the newest send time it accepted, and when it was created:
    what a late reading must not be older than (see ``Opener``).
    """

    def __init__(self, window: int = REPLAY_WINDOW, *, created: float | None = None) -> None:
        self.window = window
        self.created = time.time() if created is None else created
        self._mask = (1 << window) - 1
        self._state: dict[str, tuple[int, int]] = {}  # device -> (highest, bitmap)
        self._sent: dict[str, int] = {}  # device -> newest send time accepted

    def check(self, device: str, seq: int) -> None:
        state = self._state.get(device)
        if state is None:
            return
        highest, bitmap = state
        if seq > highest:
            return
        offset = highest - seq
        if offset >= self.window:
            raise EnvelopeError("replay", f"sequence {seq} is older than the replay window")
        if (bitmap >> offset) & 1:
            # A copy of something already shown: QoS 1 redelivery, the publisher's
            # redelivery after a reconnect, or a replay; harmless, as it is not shown.
            raise EnvelopeError("duplicate", f"sequence {seq} was already seen")

    def commit(self, device: str, seq: int, sent_at: int | None = None) -> None:
        if sent_at is not None and sent_at > self._sent.get(device, -1):
            self._sent[device] = sent_at
        state = self._state.get(device)
        if state is None:
            self._state[device] = (seq, 1)
            return
        highest, bitmap = state
        if seq > highest:
            shift = seq - highest
            bitmap = ((bitmap << shift) | 1) & self._mask if shift < self.window else 1
            self._state[device] = (seq, bitmap)
        elif highest - seq < self.window:  # behind the window: nothing to note (check
            self._state[device] = (highest, bitmap | (1 << (highest - seq)))  # refuses it)

    def highest(self, device: str) -> int | None:
        state = self._state.get(device)
        return None if state is None else state[0]

    def floor(self, device: str) -> float:
        """The newest send time accepted from ``device``, else when this state began:
        nothing sent before it (minus the TTL) can be new to this subscriber."""
        return self._sent.get(device, self.created)

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "created": self.created,
            "devices": {d: [h, format(b, "x")] for d, (h, b) in sorted(self._state.items())},
            "sent": dict(sorted(self._sent.items())),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, saved: float | None = None) -> ReplayGuard:
        """From ``to_json``. A state from before "created" and "sent" were kept takes
        ``saved`` (when it was written) for both: what was shown is older than that."""
        guard = cls(int(data.get("window", REPLAY_WINDOW)),
                    created=float(data["created"]) if "created" in data else saved)
        for device, (highest, bitmap) in dict(data.get("devices", {})).items():
            guard._state[str(device)] = (int(highest), int(str(bitmap), 16) & guard._mask)
        guard._sent = {str(d): int(t) for d, t in dict(data.get("sent", {})).items()}
        return guard


class Opener:
    """Verifies and decrypts messages arriving at the subscriber."""

    def __init__(
        self,
        keys: KeyLookup,
        *,
        base: str,
        ttl: float = 300.0,
        skew: float = 60.0,
        max_late: float = MAX_LATE,
        replay: ReplayGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._prefix = base + "/"
        self._ttl = ttl
        self._skew = skew
        self._max_late = max_late
        self.replay = replay if replay is not None else ReplayGuard(created=clock())
        self._clock = clock

    def _split(self, topic: str) -> tuple[str, str]:
        if not topic.startswith(self._prefix):
            raise EnvelopeError("topic", f"{topic!r} is outside the base topic")
        levels = topic[len(self._prefix):].split("/")
        if len(levels) != 2 or not all(levels):
            raise EnvelopeError("topic", f"{topic!r} is not BASE/<device>/<kind>")
        return levels[0], levels[1]

    def device_of(self, topic: str) -> str:
        """The device a BASE/<device>/<kind> topic belongs to; it must have a key ring."""
        device, _ = self._split(topic)
        if self._keys.get(device) is None:
            raise EnvelopeError("unknown-device", f"no key ring for device {device!r}")
        return device

    def has_key(self, device: str) -> bool:
        """Whether ``device`` has a key ring now (a removed device has none)."""
        return self._keys.get(device) is not None

    def known_device(self, topic: str) -> str | None:
        """The device a topic names, if it is one with a key ring; else None (so that a
        name an attacker chose is never recorded as a device)."""
        try:
            return self.device_of(topic)
        except EnvelopeError:
            return None

    def open(self, topic: str, payload: bytes) -> Reading:
        """Return the verified reading or raise EnvelopeError(reason)."""
        device, kind = self._split(topic)
        ring = self._keys.get(device)
        if ring is None:
            raise EnvelopeError("unknown-device", f"no key ring for device {device!r}")
        plaintext, sent_at = self._decrypt(device, ring, payload)
        try:
            body = _DECODER.decode(plaintext.decode("utf-8"))
            version, inner_topic, inner_device, seq = (
                body["v"], body["topic"], body["device"], body["seq"])
            data = body["data"]
            taken, simulated = body.get("taken"), body.get("sim")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EnvelopeError("malformed", "decrypted payload is not a v1 envelope") from None
        if version != VERSION:
            raise EnvelopeError("malformed", f"unsupported envelope version {version!r}")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise EnvelopeError("malformed", "sequence number is not a non-negative integer")
        if taken is not None and not (
                isinstance(taken, int | float) and not isinstance(taken, bool)
                and sent_at - self._max_late <= taken <= sent_at + self._skew):
            # finite, and not after it was sent nor before the oldest late reading
            raise EnvelopeError("malformed", "'taken' is not a time near the send time")
        if simulated is not None and simulated not in ("simulated", "demo"):
            raise EnvelopeError("malformed", "'sim' must be 'simulated' or 'demo'")
        if inner_topic != topic:
            raise EnvelopeError("topic", f"sealed for {inner_topic!r}, arrived on {topic!r}")
        if inner_device != device:
            raise EnvelopeError("device", f"sealed by {inner_device!r}, arrived as {device!r}")
        self.replay.check(device, seq)  # a copy of what was shown is a duplicate, however old
        now = self._clock()
        self._check_time(device, sent_at, now)
        self.replay.commit(device, seq, sent_at)
        delay = now - (sent_at if taken is None else min(float(taken), sent_at))
        return Reading(topic=topic, device=device, kind=kind, seq=seq, sent_at=sent_at,
                       data=data, taken_at=None if taken is None else float(taken),
                       simulated=simulated, late=delay if delay > self._skew else None)

    def _check_time(self, device: str, sent_at: int, now: float) -> None:
        """Fresh (sent within the TTL), or late but continuing the device's stream."""
        if sent_at > now + self._skew:
            raise EnvelopeError(
                "future", f"sent {sent_at - now:.0f} s in the future (skew {self._skew:.0f} s)")
        age = now - sent_at
        if age <= self._ttl + self._skew:
            return
        if age > self._max_late:
            raise EnvelopeError("expired", f"sent {age:.0f} s ago, more than the "
                                f"{self._max_late:.0f} s a late reading may take")
        if sent_at < self.replay.floor(device) - self._ttl - self._skew:
            raise EnvelopeError(
                "expired", f"sent {age:.0f} s ago (ttl {self._ttl:.0f} s) and before what "
                "this subscriber already showed or began with: a possible replay")

    def _decrypt(self, device: str, ring: KeyRing, payload: bytes) -> tuple[bytes, int]:
        """(plaintext, token timestamp), trying the ring re-read from disk if the cached
        one fails (the key may have just rotated)."""
        try:
            return _open(ring, payload)
        except (InvalidToken, binascii.Error, ValueError, TypeError):
            pass
        fresh = self._keys.get(device, force=True)
        if fresh is not None and fresh is not ring:
            try:
                return _open(fresh, payload)
            except (InvalidToken, binascii.Error, ValueError, TypeError):
                pass
        raise EnvelopeError("decrypt", "token does not decrypt with the device's keys "
                            "(wrong key or tampered)")
