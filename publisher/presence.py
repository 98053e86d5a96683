"""Presence: which known Bluetooth devices are near.

The known-devices file maps MAC addresses, or for phones that rotate their address the
identity resolving key (IRK), to friendly names, one per line::

    # MAC or irk:<32 hex digits>          name
    88:29:9C:00:61:A9                     Franks Phone
    irk:ec0234a357c8ad05341010a60a397d9b  Annas iPhone

Only known devices are ever published (privacy by default): a stranger's MAC address
never leaves the Pi; strangers are only counted. ``PresenceTracker`` turns sightings into
``home``/``away``: home when seen at or above an RSSI threshold, away only after not
being seen for the away timeout (no flapping). Scanners: ``BleakScan`` (real BLE through
bleak/BlueZ; "auto" is this one: no adapter is a scanner error, published as a ``scanner``
status, never a reason to invent sightings) and ``SimulatedScan`` (only when asked for by
name; its readings are marked simulated).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from homewatch.errors import ConfigError, ScannerError
from homewatch.secrets import read_secret_file, write_private_file
from publisher import adapter

log = logging.getLogger(__name__)

KINDS = ("auto", "bleak", "simulated", "none")
SCAN_MODES = ("active", "passive")
# Passive scanning goes through BlueZ advertisement monitors, which need patterns: these
# match the Flags values phones and most BLE devices advertise (LE General Discoverable,
# with or without BR/EDR). A device advertising without Flags is only seen when active.
PASSIVE_FLAGS = (b"\x02", b"\x06", b"\x1a")
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
IRK_RE = re.compile(r"^irk:([0-9A-Fa-f]{32})$")


def ah(irk: bytes, prand: bytes) -> bytes:
    """Bluetooth Core Spec random address hash: AES-128(irk, 0^13 || prand), last 3 bytes."""
    enc = Cipher(algorithms.AES(irk), modes.ECB()).encryptor()  # noqa: S305 - the spec's e()
    return (enc.update(bytes(13) + prand) + enc.finalize())[-3:]


def resolves(irk: bytes, address: str) -> bool:
    """True when ``address`` is a resolvable private address made with ``irk``."""
    raw = bytes.fromhex(address.replace(":", ""))
    if len(raw) != 6 or raw[0] >> 6 != 0b01:  # RPAs have the two top bits 01
        return False
    return ah(irk, raw[:3]) == raw[3:]


@dataclass
class Known:
    """Known devices: by MAC, and by IRK for phones with rotating addresses."""

    macs: dict[str, str] = field(default_factory=dict)
    irks: list[tuple[bytes, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.macs) + len(self.irks)

    def name_of(self, address: str) -> str | None:
        name = self.macs.get(address.upper())
        if name is not None:
            return name
        for irk, irk_name in self.irks:
            if resolves(irk, address):
                return irk_name
        return None


def load_known(path: Path | None) -> Known:
    """The known-devices file, MACs and IRKs; no file means no known devices."""
    known = Known()
    if path is None:
        return known
    for _lineno, ident, name in _entries(path):
        m = IRK_RE.match(ident)
        if m:
            known.irks.append((bytes.fromhex(m.group(1)), name))
        else:
            known.macs[ident.upper()] = name
    return known


def load_known_devices(path: Path | None) -> dict[str, str]:
    """MAC (upper case) -> friendly name (IRK entries left out)."""
    return load_known(path).macs


def _entries(path: Path) -> list[tuple[int, str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"known-devices file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"known-devices file {path}: {exc.strerror}") from None
    entries: list[tuple[int, str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        mac, _, name = line.partition(" ")
        name = name.strip().lstrip("=").strip()
        if not (MAC_RE.match(mac) or IRK_RE.match(mac)):
            raise ConfigError(f"{path} line {lineno}: {mac!r} is not a MAC address or irk:KEY "
                              "(expected AA:BB:CC:DD:EE:FF Friendly Name)")
        if not name:
            raise ConfigError(f"{path} line {lineno}: missing a name after {mac}")
        entries.append((lineno, mac, name))
    return entries


def stranger_key(path: Path) -> bytes:
    """The key for hashing strangers' addresses: made once (32 random bytes, mode 0600)
    and kept, so a device hashes the same across restarts. It never leaves this device."""
    if not path.exists():
        write_private_file(path, secrets.token_hex(32) + "\n")
        log.info("made the key for hashing unknown devices: %s", path)
    text = read_secret_file(path, "stranger hash key")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{path}: not a hex key (delete it to make a new one)") from None
    if len(key) < 16:
        raise ConfigError(f"{path}: key too short (delete it to make a new one)")
    return key


@dataclass
class _Seen:
    name: str
    address: str
    last_seen: float  # wall clock
    last_mono: float
    state: str = "home"
    rssi: int | None = None  # the signal heard in this scan window (dBm), also below the
    # threshold; None once a report has gone out without it being heard again


class PresenceTracker:
    """Sightings -> home/away per known device, debounced by the away timeout."""

    def __init__(self, known: Known, *, rssi_threshold: int = -90, away_after: float = 180.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.known = known
        self.threshold = rssi_threshold
        self.away_after = away_after
        self._clock = clock
        self._wall = wall
        self._devices: dict[str, _Seen] = {}
        self._strangers: dict[str, float] = {}

    def observe(self, address: str, rssi: int | None) -> bool:
        """One sighting; True when it changed someone's state (away -> home)."""
        name = self.known.name_of(address)
        now = self._clock()
        if name is None:
            self._strangers[address] = now
            return False
        seen = self._devices.get(name)
        if rssi is not None and rssi < self.threshold:
            if seen is not None:
                seen.rssi = rssi  # still home until the away timeout, but heard weakly
            return False  # too far away (next door, the street) to count as home
        if seen is None:
            self._devices[name] = _Seen(name, address.upper(), self._wall(), now, rssi=rssi)
            log.info("%s is home", name)
            return True
        seen.address, seen.last_seen, seen.last_mono = address.upper(), self._wall(), now
        if rssi is not None:
            seen.rssi = rssi
        if seen.state == "away":
            seen.state = "home"
            log.info("%s is home", name)
            return True
        return False

    def tick(self) -> bool:
        """Mark away whoever has not been seen for the away timeout; True on a change."""
        now = self._clock()
        changed = False
        for seen in self._devices.values():
            if seen.state == "home" and now - seen.last_mono >= self.away_after:
                seen.state = "away"
                changed = True
                log.info("%s is away (not seen for %.0f s)", seen.name, now - seen.last_mono)
        cutoff = now - self.away_after
        self._strangers = {a: t for a, t in self._strangers.items() if t >= cutoff}
        return changed

    @property
    def strangers(self) -> int:
        """Unknown addresses seen within the away timeout: counted, never published."""
        return len(self._strangers)

    def strangers_report(self, key: bytes) -> dict[str, Any]:
        """Strangers for users who opted in: a count and a keyed hash of each address.

        HMAC-SHA256 with a key that never leaves the Pi: the same address gives the same
        hash (so a regular visitor's device can be told apart), but without the key nobody
        can get the address back by hashing all 2^48 of them. Phones that rotate their
        address look like a new stranger each time they do.
        """
        hashes = sorted(hmac.new(key, a.upper().encode(), hashlib.sha256).hexdigest()[:16]
                        for a in self._strangers)
        return {"count": len(hashes), "hashes": hashes}

    def report(self, room: str | None = None) -> list[dict[str, Any]]:
        """The tutorial's ``devices`` shape plus state and last-seen time, by name; with
        ``room``, the room this Pi stands in, and for a device that is home and heard in
        this scan window (since the last report) its signal (``rssi``, dBm, when the
        scanner gives one): the subscriber puts each person in the room of the Pi that
        hears them best. A device still home but not heard this window has no ``rssi``
        (a signal heard minutes ago says nothing of where they are now). A report closes
        the scan window: the signals are forgotten once reported."""
        out: list[dict[str, Any]] = []
        for s in sorted(self._devices.values(), key=lambda s: s.name):
            entry: dict[str, Any] = {"name": s.name, "mac": s.address, "state": s.state,
                                     "last_seen": round(s.last_seen, 2)}
            if room is not None:
                entry["room"] = room
            if s.state == "home" and s.rssi is not None:
                entry["rssi"] = s.rssi
            s.rssi = None  # the window is over: only a new sighting gives a signal again
            out.append(entry)
        return out


def presence_report(seen: Mapping[str, int | None],
                    known: Mapping[str, str]) -> list[dict[str, str]]:
    """The tutorial's ``devices`` shape, known devices only, sorted by name."""
    found = [{"name": name, "mac": mac} for mac, name in known.items() if mac in seen]
    return sorted(found, key=lambda d: (d["name"], d["mac"]))


class Scanner(Protocol):
    @property
    def name(self) -> str: ...

    async def scan(self) -> dict[str, int | None]:
        """MAC (upper case) -> RSSI of the devices seen in one scan window."""
        ...


def explain(exc: BaseException, adapter: str | None) -> str:
    """What a bleak/D-Bus failure means for the user, in one line."""
    text = str(exc.args[0]) if exc.args else str(exc)
    name = adapter or "the Bluetooth adapter"
    if "requires BlueZ" in text:
        return ("passive scanning needs BlueZ 5.56+ started with --experimental (and Linux "
                "5.10+); use --scan-mode active, or enable it in bluetooth.service")
    if "ServiceUnknown" in text or "org.bluez was not provided" in text:
        return "BlueZ (bluetoothd) is not running: sudo systemctl start bluetooth"
    if "powered" in text.lower() or "NotReady" in text:
        return f"{name} is powered off: bluetoothctl power on (or rfkill unblock bluetooth)"
    if "not found" in text or "UnknownObject" in text or "No Bluetooth adapters" in text:
        return f"{name} not found (unplugged, or BlueZ restarting)"
    return f"BLE scan failed: {text}"


class BleakScan:
    """One BLE scan window with bleak (BlueZ on Linux), active or passive.

    Continuous scanning is a window as long as the reading interval; a shorter window is
    duty-cycled (the Pi's radio is shared with Wi-Fi). Active scanning asks each device for
    its scan response; passive only listens (nothing is transmitted), through a BlueZ
    advertisement monitor. The detection callback only records the strongest RSSI per
    address; nothing else happens in it.
    """

    name = "bleak"

    def __init__(self, duration: float, adapter: str | None = None,
                 mode: str = "active") -> None:
        if mode not in SCAN_MODES:
            raise ConfigError(f"scan mode must be one of {', '.join(SCAN_MODES)}")
        self.duration = duration
        self.adapter = adapter
        self.mode = mode

    async def scan(self) -> dict[str, int | None]:
        try:
            from bleak import BleakScanner
            from bleak.exc import BleakError
        except ImportError:
            raise ScannerError("bleak is not installed (pip install 'homewatch[ble]')") from None
        seen: dict[str, int | None] = {}

        def detected(device: Any, adv: Any) -> None:
            address = str(device.address).upper()
            rssi = adv.rssi
            old = seen.get(address)
            seen[address] = rssi if old is None or (rssi is not None and rssi > old) else old

        kwargs: dict[str, Any] = {"detection_callback": detected}
        if self.adapter:
            kwargs["adapter"] = self.adapter
        if self.mode == "passive":
            from bleak.args.bluez import OrPattern
            from bleak.assigned_numbers import AdvertisementDataType
            kwargs["scanning_mode"] = "passive"
            kwargs["bluez"] = {"or_patterns": [OrPattern(0, AdvertisementDataType.FLAGS, f)
                                               for f in PASSIVE_FLAGS]}
        try:
            async with BleakScanner(**kwargs):
                await asyncio.sleep(self.duration)
        except (BleakError, OSError, EOFError) as exc:
            raise ScannerError(explain(exc, self.adapter)) from None
        except Exception as exc:  # dbus-fast raises its own types for a missing BlueZ
            if type(exc).__module__.startswith("dbus_fast"):
                raise ScannerError(explain(exc, self.adapter)) from None
            raise
        return seen

    async def restart_discovery(self) -> None:
        """After a stall (:mod:`publisher.stall`): a discovery session started and
        stopped. Passive scanning has no discovery to restart (it would transmit)."""
        if self.mode == "passive":
            raise ScannerError("passive scanning has no discovery to restart")
        await self._recovery(adapter.restart_discovery)

    async def power_cycle(self) -> None:
        """After a stall that restarting discovery did not end: Powered off, then on."""
        await self._recovery(adapter.power_cycle)

    async def power_on(self) -> str | None:
        """At start: power the adapter on if it is off (left off by a power cycle cut
        short); the adapter's path when it was off, else None."""
        try:
            return await adapter.power_on(self.adapter)
        except Exception as exc:
            if type(exc).__module__.startswith("dbus_fast"):
                raise ScannerError(explain(exc, self.adapter)) from None
            raise

    async def _recovery(self, step: Callable[[str | None], Awaitable[None]]) -> None:
        try:
            await step(self.adapter)
        except Exception as exc:
            if type(exc).__module__.startswith("dbus_fast"):
                raise ScannerError(explain(exc, self.adapter)) from None
            raise


def simulated_signal(mac: str, place: str = "") -> int:
    """A known device's steady simulated signal (dBm, -85 to -45), the same on every run
    for the same device and Pi (``place``): a demo's rooms do not jump about."""
    digest = hashlib.sha256(f"{place}|{mac.upper()}".encode()).digest()
    return -85 + digest[0] % 41


class SimulatedScan:
    """Sees every known device on its first scan (a demo starts with everyone home) and
    each of them most of the time after that, plus a stranger or two (never published).
    Each known device is heard at its own steady strength (:func:`simulated_signal` for
    this Pi, ``place``) give or take 2 dBm."""

    name = "simulated"

    def __init__(self, known: Mapping[str, str], rng: random.Random | None = None,
                 place: str = "") -> None:
        self._known = list(known)
        self._rng = rng or random.Random()  # noqa: S311 - not security relevant
        self._first = True
        self._signal = {mac: simulated_signal(mac, place) for mac in self._known}

    async def scan(self) -> dict[str, int | None]:
        odds = 1.0 if self._first else 0.8
        self._first = False
        seen: dict[str, int | None] = {
            mac: self._signal[mac] + self._rng.randint(-2, 2)
            for mac in self._known if self._rng.random() < odds
        }
        for _ in range(self._rng.randint(0, 2)):
            mac = ":".join(f"{self._rng.randint(0, 255):02X}" for _ in range(6))
            seen[mac] = self._rng.randint(-100, -60)
        return seen


def make_scanner(kind: str, known: Mapping[str, str], *, duration: float,
                 adapter: str | None = None, mode: str = "active",
                 place: str = "") -> Scanner | None:
    """The scanner for ``kind`` (one of KINDS; "auto" is bleak); None for "none".
    ``place`` (the Pi's device name) sets the simulated scanner's steady signals."""
    if kind == "none":
        return None
    if kind == "simulated":
        return SimulatedScan(known, place=place)
    return BleakScan(duration, adapter, mode)
