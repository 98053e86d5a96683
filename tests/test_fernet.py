"""homewatch.fernet's fast opening of Fernet tokens, held side by side with
cryptography's own Fernet: the same plaintext for every good token, InvalidToken for
everything Fernet refuses (tampered, truncated, re-padded, wrong key, random bytes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from homewatch.fernet import KeyRing

KEY = Fernet.generate_key()
OTHER = Fernet.generate_key()


def forge(key: bytes, plaintext_padded: bytes, *, version: int = 0x80,
          iv: bytes | None = None) -> bytes:
    """A correctly signed token around arbitrary (possibly badly padded) CBC plaintext,
    which only someone holding the key could make: tests the checks after the MAC."""
    raw = base64.urlsafe_b64decode(key)
    iv = iv or os.urandom(16)
    enc = Cipher(algorithms.AES(raw[16:]), modes.CBC(iv)).encryptor()
    body = (bytes((version,)) + int(time.time()).to_bytes(8, "big") + iv
            + enc.update(plaintext_padded) + enc.finalize())
    return base64.urlsafe_b64encode(body + hmac.digest(raw[:16], body, "sha256"))


def both(ring: KeyRing, token: bytes) -> tuple[object, object]:
    """What Fernet says and what KeyRing.open says, as values or the exception type."""
    def attempt(f):  # type: ignore[no-untyped-def]
        try:
            return f()
        except Exception as exc:
            return type(exc)
    return (attempt(lambda: MultiFernet([Fernet(KEY), Fernet(OTHER)]).decrypt(token)),
            attempt(lambda: ring.open(token)[0]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_every_plaintext_opens_to_what_fernet_gives(plaintext: bytes) -> None:
    """Any length (block boundaries included), from either key of the ring."""
    ring = KeyRing([KEY, OTHER])
    for key in (KEY, OTHER):
        token = Fernet(key).encrypt_at_time(plaintext, 1_700_000_000)
        assert ring.open(token) == (plaintext, 1_700_000_000)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.data())
def test_tampering_anywhere_is_refused_like_fernet(plaintext: bytes, data: st.DataObject) -> None:
    """One flipped bit anywhere in the decoded token, or a cut: both refuse it."""
    ring = KeyRing([KEY, OTHER])
    raw = bytearray(base64.urlsafe_b64decode(Fernet(KEY).encrypt(plaintext)))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        token = base64.urlsafe_b64encode(candidate)
        expected, got = both(ring, token)
        assert expected is InvalidToken and got is InvalidToken


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_input_is_refused_like_fernet(junk: bytes) -> None:
    """Random bytes, as such and base64-encoded."""
    ring = KeyRing([KEY])
    for token in (junk, base64.urlsafe_b64encode(junk)):
        assert both(ring, token) == (InvalidToken, InvalidToken)


@pytest.mark.parametrize("padded", [
    b"A" * 16,                      # last byte 0x41: not a padding length
    b"A" * 15 + b"\x00",            # zero padding
    b"A" * 14 + b"\x01\x02",        # padding byte says 2, previous byte is 1
    b"A" * 16 + b"\x11" * 16,       # 17 > the block size
    b"A" * 12 + b"\x05" * 4,        # says 5, only 4 of them
])
def test_signed_tokens_with_bad_padding_are_refused_like_fernet(padded: bytes) -> None:
    """Only a key holder can make these; both still refuse them after the MAC."""
    ring = KeyRing([KEY])
    assert both(ring, forge(KEY, padded)) == (InvalidToken, InvalidToken)


def test_signed_tokens_with_another_version_byte_are_refused() -> None:
    good = padding.PKCS7(128).padder()
    padded = good.update(b"hello") + good.finalize()
    ring = KeyRing([KEY])
    assert ring.open(forge(KEY, padded))[0] == b"hello"
    assert both(ring, forge(KEY, padded, version=0x81)) == (InvalidToken, InvalidToken)


def test_a_bad_token_leaves_nothing_behind_for_the_next() -> None:
    """The reused ECB context never keeps a partial block: a signed token whose
    ciphertext is not whole blocks is refused before decryption, and the next good token
    still opens."""
    raw = base64.urlsafe_b64decode(KEY)
    body = b"\x80" + (0).to_bytes(8, "big") + os.urandom(16) + os.urandom(21)
    partial = base64.urlsafe_b64encode(body + hmac.new(raw[:16], body,
                                                       hashlib.sha256).digest())
    ring = KeyRing([KEY])
    with pytest.raises(InvalidToken):
        ring.open(partial)
    assert ring.open(Fernet(KEY).encrypt(b"next"))[0] == b"next"


def test_a_ring_still_encrypts_with_its_newest_key() -> None:
    """A ring encrypts as cryptography's MultiFernet does: its tokens open with the newest
    key alone, and under the time asked for."""
    token = KeyRing([KEY, OTHER]).encrypt(b"reading")
    assert Fernet(KEY).decrypt(token) == b"reading"
    with pytest.raises(InvalidToken):
        Fernet(OTHER).decrypt(token)
    dated = KeyRing([KEY, OTHER]).encrypt_at_time(b"then", 1_700_000_000)
    assert Fernet(KEY).extract_timestamp(dated) == 1_700_000_000
    assert MultiFernet([Fernet(KEY)]).decrypt_at_time(dated, 60, 1_700_000_010) == b"then"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_the_precomputed_hmac_is_hmac_sha256(message: bytes) -> None:
    """The inner/outer-state HMAC equals the standard library's HMAC-SHA256."""
    from homewatch.fernet import _OpenKey
    key = _OpenKey(KEY)
    assert key.mac(message) == hmac.digest(base64.urlsafe_b64decode(KEY)[:16], message,
                                           "sha256")
