"""``homewatch irk``: phones that rotate their Bluetooth address, made easy (on the Pi).

A phone paired with the Pi once leaves its identity resolving key (IRK) in BlueZ's pairing
store, ``/var/lib/bluetooth/<adapter>/<device>/info`` (root only)::

    [General]
    Name=Annas iPhone
    [IdentityResolvingKey]
    Key=9B7D390AA610103405ADC857A33402EC

This module lists those keys as ready-to-paste ``irk:KEY  Name`` lines for the publisher's
known-devices file (:mod:`publisher.presence`) and appends the new ones to it.

Byte order: BlueZ writes the key as the kernel hands it over (``key[0]`` first), and the
kernel keeps it least significant octet first (its ``smp_e()`` swaps the key before AES;
its self-test holds the specification's sample IRK ``ec0234a3...9d9b`` as ``9b 7d 39 ...
ec``). The known-devices file takes the key as the specification writes it, most
significant octet first, so the stored hex is reversed octet by octet.

Only what a Pi needs: no admin, PKI or provisioning module is loaded for this command.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass
from pathlib import Path

from homewatch.errors import ConfigError

STORE = Path("/var/lib/bluetooth")
KNOWN_DEVICES = Path("/etc/homewatch/known-devices")  # where scripts/install-pi.sh puts it
MAX_NAME = 64  # characters of a person's name the subscriber keeps (longer ones are dropped)
ADDRESS_RE = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
KEY_RE = re.compile(r"^(?:0x)?([0-9A-Fa-f]{32})$")
LINE_KEY_RE = re.compile(r"^\s*irk:([0-9A-Fa-f]{32})(?:\s|$)")
# GKeyFile's escapes in a value (g_key_file_set_string writes them)
ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


@dataclass(frozen=True)
class Paired:
    """A paired device with an identity resolving key."""

    adapter: str  # the adapter's address (its directory in the store)
    address: str  # the device's identity address
    key: str  # 32 hex digits, most significant octet first (as the known-devices file)
    name: str  # sanitized: one line, printable, at most MAX_NAME characters

    def line(self) -> str:
        return f"irk:{self.key}  {self.name}"


def unescape(value: str) -> str:
    """A GKeyFile value as written (``\\s``, ``\\n``, ``\\t``, ``\\r``, ``\\\\``)."""
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(0)), value)


def sanitize_name(raw: str, fallback: str) -> str:
    """One readable line for the known-devices file: control and invisible characters
    (newlines, bidirectional overrides) become spaces, runs of spaces one, a leading ``=``
    (which the file's parser would eat) goes, and it is cut to MAX_NAME characters;
    letters of any script and emoji stay. Empty: ``fallback``."""
    text = "".join(c if c.isprintable() else " " for c in unescape(raw))
    text = " ".join(text.split()).lstrip("= ").strip()
    return text[:MAX_NAME].rstrip() or fallback


def storage_key(stored: str) -> str:
    """BlueZ's stored key -> the known-devices file's key (octets reversed, lower case)."""
    m = KEY_RE.match(stored.strip())
    if m is None:
        raise ValueError("its [IdentityResolvingKey] Key is not 32 hex digits")
    return bytes.fromhex(m.group(1))[::-1].hex()


def read_info(info: Path, adapter: str, address: str) -> Paired | None:
    """One device's info file: the device with its key, or None when it has no IRK.
    ValueError (a line's worth of reason) when the file cannot be read as BlueZ writes it."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # GKeyFile keys are case-sensitive
    try:
        parser.read_string(info.read_text(encoding="utf-8", errors="replace"))
    except configparser.Error as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"not a BlueZ info file ({reason})") from None
    if not parser.has_option("IdentityResolvingKey", "Key"):
        return None
    key = storage_key(parser.get("IdentityResolvingKey", "Key"))
    name = sanitize_name(parser.get("General", "Name", fallback=""), f"device {address}")
    return Paired(adapter=adapter, address=address, key=key, name=name)


def _entries(directory: Path, what: str) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if ADDRESS_RE.match(p.name))
    except FileNotFoundError:
        raise ConfigError(f"no BlueZ pairing store at {directory} (is BlueZ installed? "
                          "--store DIR for another place)") from None
    except PermissionError:
        raise ConfigError(f"cannot read BlueZ's pairing store {directory}: permission "
                          f"denied (it is root's: sudo homewatch irk)") from None
    except NotADirectoryError:
        raise ConfigError(f"{what} {directory} is not a directory") from None


def scan_store(store: Path) -> tuple[list[Paired], list[str]]:
    """Every paired device with an IRK, under every adapter (each key once), and one
    line per info file that could not be read (the rest are still listed)."""
    found: list[Paired] = []
    problems: list[str] = []
    seen: set[str] = set()
    for adapter in _entries(store, "the pairing store"):
        if not adapter.is_dir():
            continue
        for device in _entries(adapter, "adapter directory"):
            info = device / "info"
            if not info.is_file():
                continue
            try:
                paired = read_info(info, adapter.name, device.name)
            except PermissionError:
                raise ConfigError(f"cannot read {info}: permission denied (BlueZ's store "
                                  "is root's: sudo homewatch irk)") from None
            except (OSError, ValueError) as exc:
                problems.append(f"skipped {info}: {getattr(exc, 'strerror', None) or exc}")
                continue
            if paired is not None and paired.key not in seen:
                seen.add(paired.key)
                found.append(paired)
    return found, problems


def known_keys(path: Path) -> set[str]:
    """The IRKs already in a known-devices file (lower case); none when it is missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise ConfigError(f"known-devices file {path}: {exc.strerror}") from None
    return {m.group(1).lower() for line in text.splitlines()
            if (m := LINE_KEY_RE.match(line))}


def add(path: Path, devices: list[Paired]) -> list[Paired]:
    """Append the devices whose key is not in ``path`` yet; return those added. The file
    keeps its mode and owner (appended in place); a new one is made 0600."""
    new = [d for d in devices if d.key not in known_keys(path)]
    if not new:
        return []
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"known-devices file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        size = os.fstat(fd).st_size
        if size and not _ends_with_newline(path):
            out.write("\n")
        out.write("".join(d.line() + "\n" for d in new))
    return new


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
