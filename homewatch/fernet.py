"""Key rings: ``cryptography``'s MultiFernet, plus a faster way to open Fernet tokens.

Encryption is ``cryptography``'s own MultiFernet, unchanged: a :class:`KeyRing` holds one
and hands ``encrypt`` to it. (It holds one rather than being one: from cryptography 51 on,
``Fernet`` and ``MultiFernet`` are Rust types that cannot be subclassed.)

Opening a token is where the subscriber spends its time, and ``Fernet.decrypt`` builds a
cipher, an HMAC and an unpadder object for every token. ``KeyRing.open`` does the same
steps of the Fernet specification (https://github.com/fernet/spec/blob/master/Spec.md)
with objects made once per key:

1. base64url-decode; the version byte must be 0x80;
2. HMAC-SHA256 over version, timestamp, IV and ciphertext (the key's inner and outer
   hash states made once), compared in constant time (``hmac.compare_digest``) before
   anything is decrypted;
3. AES-128-CBC decryption, as one ECB pass over the ciphertext (a context made once per
   key) XORed with the previous ciphertext block (the IV for the first): exactly CBC;
4. PKCS#7 padding removed and checked (after the MAC: no padding oracle).

It accepts exactly the tokens ``Fernet.decrypt`` accepts and returns the same plaintext;
tests hold the two side by side (including tampered, truncated and random tokens).
The ECB contexts are not thread-safe: a ring is opened from one thread at a time (the
subscriber's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_VERSION = 0x80
_HEADER = 25  # version (1) + timestamp (8) + IV (16)
_MAC = 32
_BLOCK = 16
_URLSAFE = bytes.maketrans(b"-_", b"+/")


class _OpenKey:
    """One Fernet key: HMAC-SHA256 with its inner and outer hash states computed once
    (RFC 2104: H(K ^ opad, H(K ^ ipad, m)); each message copies them), and a reusable
    AES-ECB decryption context."""

    __slots__ = ("_ecb", "_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        raw = base64.urlsafe_b64decode(key)
        if len(raw) != 32:
            raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.")
        signing = raw[:16].ljust(64, b"\0")  # SHA-256 works on 64-byte blocks
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in signing))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in signing))
        self._ecb = Cipher(algorithms.AES(raw[16:]), modes.ECB()).decryptor()  # noqa: S305

    def mac(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def open(self, data: bytes) -> bytes | None:
        """The plaintext of decoded token ``data``, or None if this key did not sign it."""
        if not hmac.compare_digest(self.mac(data[:-_MAC]), data[-_MAC:]):
            return None
        ciphertext = data[_HEADER:-_MAC]
        if not ciphertext or len(ciphertext) % _BLOCK:
            raise InvalidToken  # (checked first: a partial block would stay in the context)
        blocks = self._ecb.update(ciphertext)
        previous = data[_HEADER - _BLOCK:-_MAC - _BLOCK]  # IV, then each ciphertext block
        size = len(blocks)
        padded = (int.from_bytes(blocks, "big")
                  ^ int.from_bytes(previous, "big")).to_bytes(size, "big")
        pad = padded[-1]
        if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes((pad,)) * pad:
            raise InvalidToken
        return padded[:-pad]


class TokenMaker(Protocol):
    """What seals a message: a :class:`KeyRing`, or ``cryptography``'s own MultiFernet."""

    def encrypt(self, msg: bytes) -> bytes: ...

    def encrypt_at_time(self, msg: bytes, current_time: int) -> bytes: ...


class KeyRing:
    """A device's keys, newest first: encrypts with the newest (``cryptography``'s
    MultiFernet), opens with any of them (``open``, fast)."""

    __slots__ = ("_multi", "_open_keys")

    def __init__(self, keys: Sequence[bytes | str]) -> None:
        encoded = [k.encode("ascii") if isinstance(k, str) else k for k in keys]
        self._multi = MultiFernet([Fernet(k) for k in encoded])
        self._open_keys = [_OpenKey(k) for k in encoded]

    def encrypt(self, msg: bytes) -> bytes:
        """A token of ``msg`` under the newest key, timestamped now."""
        return self._multi.encrypt(msg)

    def encrypt_at_time(self, msg: bytes, current_time: int) -> bytes:
        """A token of ``msg`` under the newest key, timestamped ``current_time``."""
        return self._multi.encrypt_at_time(msg, current_time)

    def open(self, token: bytes) -> tuple[bytes, int]:
        """Verify and decrypt ``token``: (plaintext, its timestamp); InvalidToken if no key
        of the ring made it or it was tampered with. The age is not checked here."""
        if not isinstance(token, bytes):
            raise InvalidToken
        try:  # base64.urlsafe_b64decode, minus two layers of calls
            data = binascii.a2b_base64(token.translate(_URLSAFE))
        except binascii.Error:
            raise InvalidToken from None
        if len(data) < _HEADER + _BLOCK + _MAC or data[0] != _VERSION:
            raise InvalidToken
        for key in self._open_keys:
            plaintext = key.open(data)
            if plaintext is not None:
                return plaintext, int.from_bytes(data[1:9], "big")
        raise InvalidToken
