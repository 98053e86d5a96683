"""The envelope: Fernet token carrying data, topic, device and sequence number; the
subscriber rejects every forgery, misdirection, stale message and replay."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet, MultiFernet

from homewatch.envelope import Opener, ReplayGuard, StaticKeys, seal
from homewatch.errors import EnvelopeError
from homewatch.fernet import KeyRing

NOW = 1_800_000_000
T = "home/pi-kitchen/temperature"


def ring(*keys: bytes) -> KeyRing:
    """The ring production opens tokens with (secrets.load_keyring makes the same)."""
    return KeyRing(list(keys))


@pytest.fixture
def keys() -> dict[str, bytes]:
    return {"pi-kitchen": Fernet.generate_key(), "pi-garage": Fernet.generate_key()}


@pytest.fixture
def opener(keys: dict[str, bytes]) -> Opener:
    rings = StaticKeys({d: ring(k) for d, k in keys.items()})
    return Opener(rings, base="home", ttl=300, skew=60, clock=lambda: NOW)


def sealed(keys: dict[str, bytes], *, device: str = "pi-kitchen", topic: str = T, seq: int = 1,
           at: int = NOW, key_of: str | None = None) -> bytes:
    return seal(ring(keys[key_of or device]), topic=topic, device=device, seq=seq,
                data={"temperature": 21.5, "timestamp": 1614555518.14}, now=at)


def reason(opener: Opener, topic: str, payload: bytes) -> str:
    with pytest.raises(EnvelopeError) as info:
        opener.open(topic, payload)
    return info.value.reason


def test_round_trip_returns_the_data_and_metadata(opener: Opener, keys: dict[str, bytes]) -> None:
    """A sealed reading opens to its data, device, kind, sequence and send time."""
    r = opener.open(T, sealed(keys, seq=7))
    assert r.data == {"temperature": 21.5, "timestamp": 1614555518.14}
    assert (r.device, r.kind, r.seq, r.sent_at) == ("pi-kitchen", "temperature", 7, NOW)


def test_payload_is_opaque_to_the_broker(keys: dict[str, bytes]) -> None:
    """Nothing of the reading, topic or device is readable in the token."""
    token = sealed(keys)
    for word in (b"21.5", b"temperature", b"pi-kitchen"):
        assert word not in token


def test_token_under_another_devices_key_is_rejected(opener: Opener,
                                                     keys: dict[str, bytes]) -> None:
    """A token made with pi-garage's key on pi-kitchen's topic does not decrypt."""
    assert reason(opener, T, sealed(keys, key_of="pi-garage")) == "decrypt"


def test_tampered_token_is_rejected(opener: Opener, keys: dict[str, bytes]) -> None:
    """Flipping one character of a token makes it fail authentication."""
    token = bytearray(sealed(keys))
    token[40] = ord("A") if token[40] != ord("A") else ord("B")
    assert reason(opener, T, bytes(token)) == "decrypt"


def test_garbage_is_rejected(opener: Opener) -> None:
    """Random bytes, empty payloads and non-ASCII are rejected, not crashed on."""
    for junk in (b"", b"hello", b"\xff\xfe" * 50, b"gAAAAA" + b"=" * 10):
        assert reason(opener, T, junk) == "decrypt"


def test_token_moved_to_another_topic_is_rejected(opener: Opener,
                                                  keys: dict[str, bytes]) -> None:
    """A valid token sealed for .../devices replayed on .../temperature is rejected."""
    token = sealed(keys, topic="home/pi-kitchen/devices")
    assert reason(opener, T, token) == "topic"


def test_token_naming_another_device_is_rejected(opener: Opener, keys: dict[str, bytes]) -> None:
    """A token whose device field differs from the topic's device is rejected."""
    token = sealed(keys, device="pi-garage", key_of="pi-kitchen")
    assert reason(opener, T, token) == "device"


def test_unknown_device_is_rejected(opener: Opener, keys: dict[str, bytes]) -> None:
    """A message on the topic of a device with no key ring is rejected."""
    assert reason(opener, "home/pi-attic/temperature", sealed(keys)) == "unknown-device"


def test_topics_outside_the_layout_are_rejected(opener: Opener, keys: dict[str, bytes]) -> None:
    """Only BASE/<device>/<kind> is accepted."""
    assert reason(opener, "home/pi-kitchen", sealed(keys)) == "topic"
    assert reason(opener, "home/pi-kitchen/a/b", sealed(keys)) == "topic"
    assert reason(opener, "elsewhere/pi-kitchen/temperature", sealed(keys)) == "topic"


def test_expired_token_is_rejected_after_ttl_plus_skew(opener: Opener,
                                                       keys: dict[str, bytes]) -> None:
    """Older than TTL + skew, with nothing newer shown from the device, is rejected;
    within it is accepted (late readings: tests/test_late.py)."""
    assert reason(opener, T, sealed(keys, seq=2, at=NOW - 300 - 61)) == "expired"
    assert opener.open(T, sealed(keys, seq=1, at=NOW - 300 - 60)).seq == 1


def test_token_from_the_future_beyond_skew_is_rejected(opener: Opener,
                                                       keys: dict[str, bytes]) -> None:
    """A device clock ahead by more than the skew tolerance is rejected."""
    assert opener.open(T, sealed(keys, seq=1, at=NOW + 60)).seq == 1
    assert reason(opener, T, sealed(keys, seq=2, at=NOW + 61)) == "future"


def test_repeated_sequence_is_rejected(opener: Opener, keys: dict[str, bytes]) -> None:
    """The same token twice (a replay, or a QoS 1 duplicate) is accepted once; the copy
    is a "duplicate"."""
    token = sealed(keys, seq=5)
    opener.open(T, token)
    assert reason(opener, T, token) == "duplicate"
    fresh_token_same_seq = sealed(keys, seq=5, at=NOW - 1)
    assert reason(opener, T, fresh_token_same_seq) == "duplicate"


def test_out_of_order_within_window_is_accepted_once(opener: Opener,
                                                     keys: dict[str, bytes]) -> None:
    """Late arrivals inside the window are accepted once; behind the window, rejected."""
    opener.open(T, sealed(keys, seq=10_000))
    assert opener.open(T, sealed(keys, seq=9_990)).seq == 9_990
    assert reason(opener, T, sealed(keys, seq=9_990)) == "duplicate"
    assert reason(opener, T, sealed(keys, seq=10_000 - 4096)) == "replay"


def test_sequences_are_per_device(opener: Opener, keys: dict[str, bytes]) -> None:
    """Device A's sequence numbers do not affect device B's."""
    opener.open(T, sealed(keys, seq=3))
    r = opener.open("home/pi-garage/temperature",
                    sealed(keys, device="pi-garage", topic="home/pi-garage/temperature", seq=3))
    assert r.device == "pi-garage"


def test_rejected_message_does_not_move_the_replay_window(opener: Opener,
                                                          keys: dict[str, bytes]) -> None:
    """A wrong-key token with a huge sequence number cannot block later good ones."""
    reason(opener, T, sealed(keys, seq=10**12, key_of="pi-garage"))
    assert opener.open(T, sealed(keys, seq=2)).seq == 2


def test_rotated_key_ring_opens_old_and_new_tokens(keys: dict[str, bytes]) -> None:
    """With key ring [new, old], tokens under either key open: nothing lost in rotation."""
    new = Fernet.generate_key()
    o = Opener(StaticKeys({"pi-kitchen": ring(new, keys["pi-kitchen"])}), base="home",
               clock=lambda: NOW)
    assert o.open(T, sealed(keys, seq=1)).seq == 1
    token = seal(ring(new), topic=T, device="pi-kitchen", seq=2, data=1, now=NOW)
    assert o.open(T, token).seq == 2


def test_wrong_envelope_version_and_bad_seq_are_malformed(opener: Opener,
                                                          keys: dict[str, bytes]) -> None:
    """Authentic tokens with an unknown version or a bad sequence are rejected."""
    f = ring(keys["pi-kitchen"])
    body = {"v": 2, "topic": T, "device": "pi-kitchen", "seq": 1, "data": 1}
    assert reason(opener, T, f.encrypt_at_time(json.dumps(body).encode(), NOW)) == "malformed"
    body = {"v": 1, "topic": T, "device": "pi-kitchen", "seq": "1", "data": 1}
    assert reason(opener, T, f.encrypt_at_time(json.dumps(body).encode(), NOW)) == "malformed"
    assert reason(opener, T, f.encrypt_at_time(b"not json", NOW)) == "malformed"


def test_replay_guard_survives_serialisation() -> None:
    """The replay window saved to JSON and loaded back refuses the same numbers."""
    g = ReplayGuard(window=64)
    for seq in (100, 98, 97, 150):
        g.commit("pi", seq)
    g2 = ReplayGuard.from_json(json.loads(json.dumps(g.to_json())))
    for seq in (150, 98, 86):  # 86 = 150 - 64: behind the window
        with pytest.raises(EnvelopeError):
            g2.check("pi", seq)
    g2.check("pi", 99)
    g2.check("pi", 151)


def test_only_the_production_key_ring_opens_tokens(keys: dict[str, bytes]) -> None:
    """There is one way to open a token, KeyRing.open: a plain MultiFernet ring is
    refused instead of being opened by another code path."""
    with pytest.raises(TypeError, match="KeyRing"):
        StaticKeys({"pi-kitchen": MultiFernet([Fernet(keys["pi-kitchen"])])})
