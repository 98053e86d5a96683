"""Fuzzing the subscriber's decode/verify path (hypothesis), with the key rings
production uses (KeyRing, its fast opener): random and mutated tokens never crash it and
no forgery is ever accepted."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homewatch.envelope import Opener, StaticKeys, seal
from homewatch.errors import EnvelopeError
from homewatch.fernet import KeyRing

NOW = 1_800_000_000
KEY = Fernet.generate_key()
OTHER = Fernet.generate_key()
T = "home/pi-kitchen/temperature"
DATA = {"temperature": 21.5, "timestamp": 1614555518.14}
GOOD = seal(KeyRing([KEY]), topic=T, device="pi-kitchen", seq=42, data=DATA,
            now=NOW)
FUZZ = settings(max_examples=600, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def opener() -> Opener:
    return Opener(StaticKeys({"pi-kitchen": KeyRing([KEY]), "pi-garage": KeyRing([OTHER])}),
                  base="home", clock=lambda: NOW)


def outcome(topic: str, payload: bytes) -> object:
    """The reading, or the rejection reason; anything else (a crash) fails the test."""
    try:
        return opener().open(topic, payload)
    except EnvelopeError as exc:
        return exc.reason


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_rejected_without_crashing(payload: bytes) -> None:
    """Arbitrary payloads are rejected with a reason."""
    assert isinstance(outcome(T, payload), str)


@FUZZ
@given(st.text(max_size=80), st.binary(max_size=300))
def test_random_topics_never_crash(topic: str, payload: bytes) -> None:
    """Arbitrary topics (with any payload, even a valid token) are handled."""
    result = outcome(topic, payload or GOOD)
    assert isinstance(result, str) or topic == T


@FUZZ
@given(st.data())
def test_mutated_tokens_never_yield_a_forgery(data: st.DataObject) -> None:
    """Flipping, inserting, deleting or truncating bytes of a valid token either gets it
    rejected or yields exactly the original reading (base64 slack), never other content."""
    token = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, max(len(token) - 1, 0)))
        if op == "flip" and token:
            token[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            token.insert(i, data.draw(st.integers(0, 255)))
        elif op == "delete" and token:
            del token[i]
        elif op == "truncate":
            del token[i:]
    result = outcome(T, bytes(token))
    if not isinstance(result, str):
        assert result.data == DATA and result.seq == 42  # the very same authentic message


@FUZZ
@given(st.binary(min_size=1, max_size=200))
def test_well_formed_tokens_under_a_wrong_key_are_rejected(plaintext: bytes) -> None:
    """A syntactically perfect Fernet token under another key is never accepted."""
    token = Fernet(OTHER).encrypt_at_time(plaintext, NOW)
    assert outcome(T, token) == "decrypt"


@FUZZ
@given(st.binary(min_size=57, max_size=400))
def test_tokens_with_a_valid_header_and_random_body_are_rejected(body: bytes) -> None:
    """Version byte 0x80 and a fresh timestamp followed by random bytes: rejected."""
    raw = b"\x80" + NOW.to_bytes(8, "big") + body
    assert outcome(T, base64.urlsafe_b64encode(raw)) == "decrypt"
