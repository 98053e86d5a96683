"""Secrets: masked values, 0600 files written atomically, Fernet key rings.

A key ring is a text file with one Fernet key per line, newest first; blank lines and
lines starting with ``#`` are ignored. Encryption uses the first key, decryption tries
them all (``MultiFernet``), so a key can rotate with nothing lost.
"""

from __future__ import annotations

import binascii
import contextlib
import logging
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

from cryptography.fernet import Fernet

from homewatch.errors import ConfigError
from homewatch.fernet import KeyRing

log = logging.getLogger(__name__)

KEYRING_SUFFIX = ".key"


class Secret:
    """A secret string that never shows itself in repr(), str() or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def read_secret_file(path: Path, what: str) -> str:
    """Read a one-line secret file; warn when other users can read it."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{what} file {path}: {exc.strerror}") from None
    if st.st_mode & stat.S_IROTH:
        log.warning("%s file %s is readable by every user; run: chmod 600 %s", what, path, path)
    value = text.strip()
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


def private_mode(directory: Path) -> int:
    """0600, or 0640 in a setgid directory shared with a service's group.

    ``scripts/gen-certs.sh --broker-gid`` and ``homewatch device add --group`` make such
    directories (the broker's uid 1883, the app containers' uid 10001): files created
    there inherit the service's group, which may read them and nobody else.
    """
    st = directory.stat()
    if st.st_mode & stat.S_ISGID and st.st_gid != os.getegid():
        return 0o640
    return 0o600


def ensure_private_dir(directory: Path) -> None:
    """Make ``directory`` (0700; 2750 inside a directory shared with a service's group)."""
    if directory.is_dir():
        return
    ensure_private_dir(directory.parent)
    directory.mkdir(mode=0o700)
    st = directory.stat()
    if st.st_mode & stat.S_ISGID and st.st_gid != os.getegid():
        directory.chmod(0o2750)


def write_private_file(path: Path, data: str, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically; the file never exists with looser permissions."""
    ensure_private_dir(path.parent)
    if mode is None:
        mode = private_mode(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def parse_keyring(text: str, source: str) -> KeyRing:
    """Parse key ring text (newest key first) into a KeyRing."""
    keys: list[bytes] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = line.encode("ascii")
            Fernet(key)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise ConfigError(
                f"{source} line {lineno}: not a Fernet key (44 characters of url-safe base64)"
            ) from None
        keys.append(key)
    if not keys:
        raise ConfigError(f"{source}: no key in key ring")
    return KeyRing(keys)


def load_keyring(path: Path) -> KeyRing:
    return parse_keyring(read_secret_file(path, "key ring"), str(path))


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


class KeyStore:
    """The subscriber's key rings, one file per device: ``DIR/<device>.key``.

    Files are read lazily and re-read when they change, so a device provisioned or a
    key rotated while the subscriber runs is picked up without a restart.
    """

    def __init__(self, directory: Path, *, recheck_seconds: float = 2.0) -> None:
        self._dir = directory
        self._recheck = recheck_seconds
        self._lock = threading.Lock()
        # device -> (mtime_ns, keyring, last_check)
        self._cache: dict[str, tuple[int, KeyRing | None, float]] = {}
        if not directory.is_dir():
            raise ConfigError(f"keys directory not found: {directory}")

    @property
    def directory(self) -> Path:
        return self._dir

    def devices(self) -> list[str]:
        return sorted(p.name[: -len(KEYRING_SUFFIX)] for p in self._dir.glob(f"*{KEYRING_SUFFIX}"))

    def get(self, device: str, *, force: bool = False) -> KeyRing | None:
        """The key ring of ``device``, or None when there is none."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(device)
            if cached is not None and not force and now - cached[2] < self._recheck:
                return cached[1]
            path = self._dir / f"{device}{KEYRING_SUFFIX}"
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                self._cache[device] = (0, None, now)
                return None
            if cached is not None and cached[0] == mtime:
                self._cache[device] = (mtime, cached[1], now)
                return cached[1]
            try:
                ring: KeyRing | None = load_keyring(path)
            except ConfigError as exc:
                log.error("ignoring key ring of %s: %s", device, exc)
                ring = None
            self._cache[device] = (mtime, ring, now)
            return ring
