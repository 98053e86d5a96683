"""The dashboard's household password, stored as a salted scrypt hash.

The admin side writes ``certs/dashboard/password`` (the password itself, 0600, for the
household to read) and ``certs/dashboard/password.hash`` (this module's format, readable
by the dashboard's group). The dashboard only ever sees the hash: reading its files does
not give the password away. Imports no key-loading module (the dashboard uses it).

Format: ``scrypt$<log2 n>$<r>$<p>$<salt, base64>$<hash, base64>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

LOG2_N, R, P = 15, 8, 1  # about 0.1 s and 32 MiB per check: cheap to log in, dear to guess
_MAX_LOG2_N = 20


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=1 << log2_n, r=r, p=p,
                          maxmem=(1 << log2_n) * r * 128 * 2 + (1 << 20), dklen=32)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, LOG2_N, R, P)
    return "$".join(("scrypt", str(LOG2_N), str(R), str(P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time compare). A malformed
    ``stored`` raises ValueError: a broken hash file must not look like a wrong password."""
    fields = stored.strip().split("$")
    if len(fields) != 6 or fields[0] != "scrypt":
        raise ValueError("not a Homewatch password hash (scrypt$n$r$p$salt$hash)")
    try:
        log2_n, r, p = int(fields[1]), int(fields[2]), int(fields[3])
        salt = base64.b64decode(fields[4], validate=True)
        expected = base64.b64decode(fields[5], validate=True)
    except ValueError:
        raise ValueError("malformed password hash") from None
    if not (10 <= log2_n <= _MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16 and salt
            and len(expected) == 32):
        raise ValueError("password hash parameters out of range")
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), expected)


def new_password() -> str:
    """A household password: 6 groups of 4 letters and digits (120 bits), easy to
    type on a phone."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o, 1/l
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(6))
